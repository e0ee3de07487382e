"""Three-model T-Stitch report: every S -> B -> XL allocation with its FID and time, and the
Pareto frontier (no other allocation is both at least as fast and at least as good).

The paper shows the three-model trade-offs as a figure whose numbers were not transcribed
(../shared/reference/PAPER_NUMBERS.md), so there is no paper column; the two-model points
(medium fraction 0) are in the same grid and mark what the third model adds.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from diffrepro.io import write_text  # noqa: E402
from diffrepro.report.figures import save_png_svg, wrapped_title  # noqa: E402
from diffrepro.report.format import fmt as _fmt, label as _label  # noqa: E402
from diffrepro.report.pareto import pareto_frontier  # noqa: E402  (the tests import it here too)
from diffrepro.report.tstitch import TIMING_BATCH  # noqa: E402

COLUMNS = ["small", "medium", "large", "ours_fid", "ours_fid_se", "ours_fid_diff_se",
           "ours_small_steps", "ours_medium_steps", "ours_large_steps", "ours_time_8_s",
           "ours_speedup", "on_frontier"]


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    params, metrics, timing, steps = (record["params"], record["metrics"], record["timing"],
                                      record["model_steps"])
    small, medium = float(params["small"]), float(params["medium"])
    return {
        "small": small, "medium": medium, "large": round(max(0.0, 1.0 - small - medium), 10),
        "ours_fid": float(metrics["fid"]), "ours_fid_se": float(metrics["fid_bootstrap_se"]),
        "ours_fid_diff_se": float(metrics.get("fid_diff_se", math.nan)),
        "ours_small_steps": int(steps.get("small", 0)), "ours_medium_steps": int(steps.get("medium", 0)),
        "ours_large_steps": int(steps.get("large", 0)),
        "ours_time_8_s": float(timing["median_s"]),
        "ours_speedup": float(timing.get("speedup_vs_baseline", math.nan)),
    }


def build_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame([_row(r) for r in records])
    if table.empty:
        raise ValueError("no records to tabulate")
    if table.duplicated(["small", "medium"]).any():
        raise ValueError("more than one record for an allocation")
    if not ((table["small"] == 0) & (table["medium"] == 0)).any():
        raise ValueError("no record of the large model alone (small = medium = 0): speed-ups "
                         "are relative to it; add it to the grid")
    # Time from the speed-up (measured side by side with the large-only run), in units of the
    # large-only time: less noisy than medians taken in separate jobs.
    relative_time = 1.0 / table["ours_speedup"]
    table["on_frontier"] = pareto_frontier(relative_time, table["ours_fid"])
    return table.sort_values(["small", "medium"], ignore_index=True)[COLUMNS]




def table_markdown(df: pd.DataFrame, *, labels: Mapping[str, str], setting_note: str) -> str:
    fid = _label(labels, "fid")
    frame = pd.DataFrame({
        "small / medium / large": [f"{s:g} / {m:g} / {l:g}" for s, m, l in
                                   zip(df["small"], df["medium"], df["large"])],
        f"ours: {fid} ± SE": [f"{_fmt(f, '.2f')} ± {_fmt(e, '.2f')}"
                              for f, e in zip(df["ours_fid"], df["ours_fid_se"])],
        "ours: paired SE vs large only": [_fmt(v, ".2f") for v in df["ours_fid_diff_se"]],
        "ours: steps S / M / L": [f"{a} / {b} / {c}" for a, b, c in zip(
            df["ours_small_steps"], df["ours_medium_steps"], df["ours_large_steps"])],
        f"ours: time, {TIMING_BATCH} images (s)": [_fmt(v, ".3g") for v in df["ours_time_8_s"]],
        "ours: speed-up vs large only": [_fmt(v, ".2f") + "×" for v in df["ours_speedup"]],
        "Pareto frontier": ["**yes**" if v else "" for v in df["on_frontier"]],
    })
    return "\n".join([
        "# T-Stitch with three models: every allocation small -> medium -> large",
        "",
        f"- **ours**: {setting_note}. {fid}.",
        "- **paper**: the three-model trade-offs (DiT-S -> DiT-B -> DiT-XL) are shown as a figure "
        "whose numbers were not transcribed; no paper column.",
        "- Pareto frontier: no other allocation is both at least as fast (speed-up measured side by "
        "side with the large model alone) and at least as good in FID. Rows with medium = 0 are "
        "two-model T-Stitch.",
        "",
        frame.to_markdown(index=False, disable_numparse=True),
        "",
    ])


def claims_markdown(df: pd.DataFrame, setting_note: str) -> str:
    frontier = df[df["on_frontier"]]
    three = frontier[(frontier["small"] > 0) & (frontier["medium"] > 0) & (frontier["large"] > 0)]
    with_medium = frontier[frontier["medium"] > 0]
    verdict = "holds" if len(three) else "does not hold"
    return "\n".join([
        "## Three-model T-Stitch: what the frontier is made of",
        "",
        f"- **ours**: {setting_note}.",
        f"- Allocations: {len(df)}; on the Pareto frontier: {len(frontier)}, of which "
        f"{len(with_medium)} use the medium model and {len(three)} use all three models.",
        f"- Claim (paper, Sec. 4): stitching three models gives trade-offs that two-model "
        f"stitching does not, i.e. allocations with all three models on the frontier: "
        f"**{verdict}** on our suite (rule: at least one frontier allocation with every "
        f"fraction > 0; fixed before the run).",
        "",
    ])


def write_outputs(df: pd.DataFrame, csv_path, md_path, claims_path, *, labels, setting_note) -> None:
    write_text(csv_path, df.to_csv(index=False, float_format="%.10g"))
    write_text(md_path, table_markdown(df, labels=labels, setting_note=setting_note))
    write_text(claims_path, claims_markdown(df, setting_note))


def pareto_plot(df: pd.DataFrame, png_path: str | os.PathLike, svg_path: str | os.PathLike, *,
                labels: Mapping[str, str], title: str) -> None:
    """FID against time relative to the large model alone; colour = medium fraction."""
    relative_time = 1.0 / df["ours_speedup"]
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        try:
            points = ax.scatter(relative_time, df["ours_fid"], c=df["medium"], cmap="viridis",
                                s=28, zorder=2, label="allocations (colour: medium fraction)")
            fig.colorbar(points, ax=ax, label="medium-model fraction")
            two = df["medium"] == 0
            ax.plot(relative_time[two], df["ours_fid"][two], "s--", color="C3", ms=5, mfc="none",
                    label="two-model (small -> large)")
            front = df[df["on_frontier"]].assign(t=relative_time[df["on_frontier"]]).sort_values("t")
            ax.plot(front["t"], front["ours_fid"], "-", color="black", lw=1.5, zorder=3,
                    label="Pareto frontier")
            for _, row in front.iterrows():
                ax.annotate(f"{row['small']:g}/{row['medium']:g}/{row['large']:g}",
                            (row["t"], row["ours_fid"]), xytext=(4, 4), textcoords="offset points",
                            fontsize=7)
            ax.set_xlabel("time / time of the large model alone (lower = faster)")
            ax.set_ylabel(f"ours: {_label(labels, 'fid')}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            wrapped_title(fig, title)
            save_png_svg(fig, png_path, svg_path)
        finally:
            plt.close(fig)
