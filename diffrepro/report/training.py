"""Training-method reports: metric-against-iterations curves over seeds, the papers'
"iterations to reach the baseline's final FID" speed-up with a bootstrap interval, final
metrics, cost per iteration, and each method's p(t) and w(t).

Speed-up (the SpeeD and Immiscible papers' definition): the baseline's final iteration
count divided by the iteration at which the method's seed-mean FID curve first reaches
the baseline's final seed-mean FID (linear interpolation between checkpoints). The
interval resamples seeds with replacement, method and baseline independently; a resample
whose curve never reaches the target counts as speed-up 0 (not reached in the budget).
A curve already at the target at the first checkpoint gives only a lower bound (final /
first checkpoint iterations): the table marks it with ">=".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..finite import refuse_nonfinite_metrics
from ..integrity import read_verified_json
from ..io import write_text
from . import bands
from .paper import paper_source

CI_LEVEL = 0.95


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def load_scores(paths: Sequence[str]) -> pd.DataFrame:
    """One row per (method, seed, checkpoint iteration)."""
    frames = []
    for path in paths:
        result = read_verified_json(path)
        for row in result["rows"]:  # a NaN or inf metric is never tabulated
            refuse_nonfinite_metrics(row, f"score file {path} (seed {row.get('seed')}, iteration "
                                     f"{row.get('iteration')})", "no table is built from it.\n"
                                     "Delete it and rerun snakemake to score the checkpoints again.")
        frame = pd.DataFrame(result["rows"])
        frame.insert(0, "method", result["method"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def seed_curves(scores: pd.DataFrame, method: str, metric: str = "fid") -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values of shape (seeds, iterations)) for one method."""
    table = scores[scores["method"] == method].pivot(index="seed", columns="iteration", values=metric)
    if table.isna().any().any():
        raise ValueError(f"{method}: not every seed has a {metric} at every iteration")
    return table.columns.to_numpy(), table.to_numpy(dtype=np.float64)


def first_reach(iterations: np.ndarray, curve: np.ndarray, target: float) -> float:
    """First iteration at which `curve` (lower is better) is <= target, interpolating
    linearly between checkpoints; inf if it never is."""
    below = np.flatnonzero(curve <= target)
    if below.size == 0:
        return float("inf")
    i = below[0]
    if i == 0:
        return float(iterations[0])
    x0, x1, y0, y1 = iterations[i - 1], iterations[i], curve[i - 1], curve[i]
    return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))


def reached_at_first_checkpoint(curve: np.ndarray, target: float) -> bool:
    return bool(curve[0] <= target)


def speedup(iterations: np.ndarray, method_curve: np.ndarray, baseline_curve: np.ndarray) -> float:
    """Baseline's final iterations / iterations the method needs to reach its final value."""
    return float(iterations[-1]) / first_reach(iterations, method_curve, baseline_curve[-1])


def speedup_interval(iterations: np.ndarray, method_runs: np.ndarray, baseline_runs: np.ndarray,
                     *, reps: int, seed: int) -> dict:
    """Point estimate from the seed means, and a percentile bootstrap interval over seeds."""
    point = speedup(iterations, method_runs.mean(0), baseline_runs.mean(0))
    rng = np.random.default_rng(seed)
    draws = np.empty(reps)
    for r in range(reps):
        m = method_runs[rng.integers(len(method_runs), size=len(method_runs))].mean(0)
        b = baseline_runs[rng.integers(len(baseline_runs), size=len(baseline_runs))].mean(0)
        draws[r] = speedup(iterations, m, b)
    alpha = (1 - CI_LEVEL) / 2
    return {"speedup": point, "low": float(np.quantile(draws, alpha)),
            "high": float(np.quantile(draws, 1 - alpha)),
            "reached_fraction": float(np.mean(draws > 0)), "reps": reps}


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------

def _fmt_speedup(value: float, lower_bound: bool = False) -> str:
    return "not reached" if value == 0 else f"{'≥ ' if lower_bound else ''}{value:.2f}×"


def build_table(scores: pd.DataFrame, timing: dict, methods: Sequence[str], baseline: str,
                paper: pd.DataFrame, *, reps: int, seed: int) -> pd.DataFrame:
    iterations, base_runs = seed_curves(scores, baseline)
    # Timing ratios are to the timing job's baseline; re-based on this table's.
    base_ratio = timing["methods"][baseline]["iteration_vs_baseline"]
    paper_rows = {row["method"]: row for _, row in paper.iterrows()}
    rows = []
    for method in methods:
        its, runs = seed_curves(scores, method)
        if not np.array_equal(its, iterations):
            raise ValueError(f"{method} was scored at iterations {list(its)}, {baseline} at "
                             f"{list(iterations)}: curves must share checkpoints")
        final = scores[(scores["method"] == method) & (scores["iteration"] == its[-1])]
        ci = speedup_interval(iterations, runs, base_runs, reps=reps, seed=seed)
        cost = timing["methods"][method]
        p = paper_rows.get(method)
        rows.append({
            "method": method,
            "seeds": len(runs),
            "final_iteration": int(its[-1]),
            "fid_final_mean": float(final["fid"].mean()),
            "fid_final_std": float(final["fid"].std(ddof=1)) if len(final) > 1 else float("nan"),
            "is_final_mean": float(final["inception_score"].mean()),
            # not measured at paper scale (no classifier of the images' classes): NaN, printed "—"
            "accuracy_final_mean": float(final["class_accuracy"].mean()) if "class_accuracy" in final else float("nan"),
            "val_loss_final_mean": float(final["validation_loss"].mean()),
            "iterations_to_baseline_fid": first_reach(iterations, runs.mean(0), base_runs.mean(0)[-1]),
            "speedup": ci["speedup"],  # final / inf = 0 where never reached
            "speedup_ci_low": ci["low"],
            "speedup_ci_high": ci["high"],
            "speedup_reached_fraction": ci["reached_fraction"],
            "speedup_lower_bound": reached_at_first_checkpoint(runs.mean(0), base_runs.mean(0)[-1]),
            "iteration_ms": cost["iteration_ms"],
            "iteration_cost_vs_baseline": cost["iteration_vs_baseline"] / base_ratio,
            "paper_speedup": None if p is None or pd.isna(p["speedup"]) else float(p["speedup"]),
            "paper_baseline_fid": None if p is None or pd.isna(p["baseline_fid"]) else float(p["baseline_fid"]),
            "paper_method_fid": None if p is None or pd.isna(p["method_fid"]) else float(p["method_fid"]),
        })
    table = pd.DataFrame(rows)
    base = table["method"] == baseline
    table.loc[base, ["speedup", "speedup_ci_low", "speedup_ci_high"]] = 1.0  # by definition
    table.loc[base, "speedup_lower_bound"] = False
    return table


def to_markdown(table: pd.DataFrame, *, title: str, setting_note: str, paper_note: str,
                baseline: str) -> str:
    shown = pd.DataFrame({
        "method": table["method"],
        "ours: FID at end (mean ± sd over seeds)": [
            f"{m:.2f} ± {s:.2f}" if np.isfinite(s) else f"{m:.2f} (1 seed)"
            for m, s in zip(table["fid_final_mean"], table["fid_final_std"])],
        "ours: IS": table["is_final_mean"].map("{:.2f}".format),
        "ours: class accuracy": table["accuracy_final_mean"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}"),
        "ours: validation loss": table["val_loss_final_mean"].map("{:.4f}".format),
        f"ours: iterations to {baseline}'s final FID": [
            "never" if not np.isfinite(v) else f"{v:.0f}" for v in table["iterations_to_baseline_fid"]],
        "ours: speed-up [95% CI]": [
            f"{_fmt_speedup(s, lb)} [{_fmt_speedup(lo)}, {_fmt_speedup(hi)}]"
            for s, lo, hi, lb in zip(table["speedup"], table["speedup_ci_low"],
                                     table["speedup_ci_high"], table["speedup_lower_bound"])],
        f"ours: time per iteration (ms; × {baseline})": [
            f"{ms:.1f} ({r:.2f}×)" for ms, r in zip(table["iteration_ms"], table["iteration_cost_vs_baseline"])],
        "paper: speed-up": ["—" if v is None or pd.isna(v) else f"{v:g}×" for v in table["paper_speedup"]],
        "paper: FID baseline → method": [
            "—" if b is None or pd.isna(b) else f"{b:g} → {m:g}"
            for b, m in zip(table["paper_baseline_fid"], table["paper_method_fid"])],
    })
    return (f"# {title}\n\n- **ours**: {setting_note}\n- **paper**: {paper_note}\n"
            f"- Speed-up = {baseline}'s final iterations / iterations at which the method's "
            f"seed-mean FID first reaches {baseline}'s final seed-mean FID (linear interpolation "
            f"between checkpoints); 95% CI: percentile bootstrap over seeds, 'not reached' = the "
            f"resampled curve never got there within the budget; '≥': already there at the first "
            f"checkpoint (a lower bound). {baseline} is 1× by definition.\n\n"
            + shown.to_markdown(index=False) + "\n")


def verdict(row: pd.Series, claim: float) -> str:
    if row["speedup_ci_low"] >= claim:
        return f"holds: the whole 95% interval is at or above {claim:g}×"
    if row["speedup_ci_high"] < claim:
        if row["speedup_lower_bound"]:
            return (f"inconclusive: the target was reached by the first checkpoint, so "
                    f"{row['speedup']:.2f}× is only a lower bound (add earlier snapshots)")
        return f"does not reproduce: the 95% interval ends below {claim:g}×"
    return f"inconclusive: the 95% interval contains {claim:g}×"


def claims_markdown(table: pd.DataFrame, baseline: str, *, small_scale_note: str, paper_yaml) -> str:
    """Per method, our speed-up against the paper's: the verdict is the band's (reports/paper/
    <paper>.yaml), judged on the seed-mean speed-up; the bootstrap interval is stated beside it."""
    lines = ["# Claims", ""]
    band = None
    for _, row in table.iterrows():
        if row["method"] == baseline:
            continue
        ours = (f"{_fmt_speedup(row['speedup'], row['speedup_lower_bound'])} [{_fmt_speedup(row['speedup_ci_low'])}, "
                f"{_fmt_speedup(row['speedup_ci_high'])}] over {row['seeds']} seeds")
        faster = ("faster than the baseline (interval above 1×)" if row["speedup_ci_low"] > 1 else
                  "slower than the baseline (interval below 1×)" if row["speedup_ci_high"] < 1 else
                  "not distinguishable from the baseline (interval contains 1×)")
        claim = row["paper_speedup"]
        if claim is not None and not pd.isna(claim):
            band = band or bands.band_for(paper_yaml, "speedup")
            judged = bands.verdict(float(row["speedup"]), float(claim), band, higher_is_better=True)
            lines.append(f"- **{row['method']}**: paper {claim:g}× faster training; ours {ours}: "
                         f"**{judged}** (band {band.text()}); 95% interval against {claim:g}×: "
                         f"{verdict(row, claim)}; {faster}.")
        else:
            lines.append(f"- **{row['method']}**: no published speed-up; ours {ours}: {faster}.")
    lines += ["", small_scale_note, ""]
    return "\n".join(lines)


def paper_note(paper_yaml: str, table_name: str) -> str:
    source = paper_source(paper_yaml, table_name)
    return f"{source['description']} ({source['source']})"



def write_outputs(table: pd.DataFrame, csv_path, md_path, claims_path, *, title: str,
                  setting_note: str, paper_note: str, baseline: str, paper_yaml,
                  small_scale_note: str | None = None) -> None:
    """CSV (machine), Markdown (people) and the claims, each written atomically."""
    write_text(csv_path, table.to_csv(index=False))
    write_text(md_path, to_markdown(table, title=title, setting_note=setting_note,
                                    paper_note=paper_note, baseline=baseline))
    write_text(claims_path, claims_markdown(table, baseline, small_scale_note=small_scale_note or SMALL_SCALE_NOTE,
                                            paper_yaml=paper_yaml))


SMALL_SCALE_NOTE = (
    "Limits of this test: a DiT of ~0.1M parameters on 8x8 digits, a few thousand iterations, "
    "FID in a digits-CNN feature space, a handful of seeds. The papers train DiT-XL/2 (675M) "
    "or Stable Diffusion for 10^5-10^6 iterations on ImageNet/CIFAR/CelebA. A speed-up that "
    "holds here need not hold there, and one that fails here may still hold at scale; what "
    "this run shows is whether the mechanism helps on a small, fully reproducible problem.")
