"""Figures of the training-method reports: FID and validation loss against training,
p(t) and w(t) of every method, and the cost of preparing a batch against batch size."""

from __future__ import annotations

from itertools import cycle
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .training import seed_curves  # noqa: E402
from .figures import save_png_svg, wrapped_title  # noqa: E402


# Several methods share a part (uniform, P2 and Min-SNR have the same p(t)): distinct dashes
# keep overlapping curves visible.
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def _title(fig, text: str) -> None:
    wrapped_title(fig, text)



def curves_plot(scores: pd.DataFrame, methods: Sequence[str], baseline: str, png, svg, *,
                title: str, fid_label: str) -> None:
    """Left: FID against iterations, seed mean with the min-max band over seeds, and the
    baseline's final FID as the target line. Right: validation loss per timestep bin at the
    last checkpoint (seed mean)."""
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        for method, style in zip(methods, cycle(LINE_STYLES)):
            its, runs = seed_curves(scores, method)
            line, = left.plot(its, runs.mean(0), marker="o", ms=3, ls=style,
                              label=f"{method} ({len(runs)} seeds)")
            left.fill_between(its, runs.min(0), runs.max(0), color=line.get_color(), alpha=0.15)
            final = scores[(scores["method"] == method) & (scores["iteration"] == its[-1])]
            bins = np.asarray(final["validation_loss_by_bin"].tolist()).mean(0)
            width = 1000 // len(bins)
            right.plot(np.arange(len(bins)) * width + width / 2, bins, marker="o", ms=3, ls=style,
                       color=line.get_color(), label=method)
        _, base_runs = seed_curves(scores, baseline)
        left.axhline(base_runs.mean(0)[-1], ls="--", color="grey", lw=1,
                     label=f"{baseline}'s final FID (the target)")
        left.set(xlabel="training iterations", ylabel=fid_label, yscale="log",
                 title="FID during training (line: mean; band: min-max over seeds)")
        left.legend(fontsize=8)
        right.set(xlabel="timestep t (bin centre)", ylabel="validation epsilon-MSE (unweighted)",
                  yscale="log", title="validation loss by timestep, last checkpoint")
        right.legend(fontsize=8)
        _title(fig, title)
        save_png_svg(fig, png, svg)


def schedules_plot(schedules: Mapping[str, tuple[np.ndarray, np.ndarray]], png, svg, *,
                   title: str) -> None:
    """p(t) (the distribution of a batch element's t at the training batch size, SpeeD's
    reflected draws included) and w(t)."""
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        for (method, (p, w)), style in zip(schedules.items(), cycle(LINE_STYLES)):
            t = np.arange(len(p))
            left.plot(t, p, lw=1.4, ls=style, label=method)
            right.plot(t, w, lw=1.4, ls=style, label=method)
        left.set(xlabel="timestep t", ylabel="p(t)", title="timestep distribution (per batch element)")
        right.set(xlabel="timestep t", ylabel="w(t) on the epsilon-MSE", yscale="log",
                  title="loss weight")
        for ax in (left, right):
            ax.legend(fontsize=8)
        _title(fig, title)
        save_png_svg(fig, png, svg)


def cost_plot(timing: dict, methods: Sequence[str], png, svg, *, title: str) -> None:
    """Time to prepare a batch (timesteps, noise pairing, weights) against batch size, and
    one whole training iteration per method at the training batch size."""
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        for method, style in zip(methods, cycle(LINE_STYLES)):
            prep = timing["methods"][method]["batch_prep_ms"]
            sizes = sorted(prep, key=int)
            left.plot([int(b) for b in sizes], [prep[b] for b in sizes], marker="o", ms=3, ls=style,
                      label=method)
        left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms (median)",
                 title="batch preparation: timesteps + noise pairing + weights")
        left.legend(fontsize=8)
        ms = [timing["methods"][m]["iteration_ms"] for m in methods]
        right.barh(list(methods), ms, color="tab:blue")
        right.set(xlabel="ms per training iteration (median)",
                  title=f"one training iteration, batch {timing['methods'][methods[0]]['batch_size']}, "
                        + (f"{timing['threads']} CPU thread(s)" if timing.get("device", "cpu") == "cpu"
                           else timing["device"]))  # paper scale: the GPU
        _title(fig, title)
        save_png_svg(fig, png, svg)
