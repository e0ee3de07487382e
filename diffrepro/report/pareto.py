"""The generic Pareto table: any sampling methods, one row per (method, setting), on common axes.

Needs nothing method-specific: quality from the score files, time from the timing files, NFE
per model from what the method reported, speed-up against each setting's configured reference
run (timed side by side with it). Several methods in one table share the axes, so a user's
method lands beside T-Stitch or a fewer-steps baseline with the frontier marked.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

import pandas as pd

from ..io import write_text
from .cost import cost_columns
from .format import fmt, images, label

COLUMNS = ["method", "setting", "params", "fid", "fid_se", "fid_diff_se", "inception_score",
           "class_accuracy", "clip_score", "nfe", "nfe_by_model", "time_s", "time_p90_s", "batch_size",
           "speedup", "reference", "on_frontier",
           # cost beside time (report.cost)
           "gflops_per_image", "flops_speedup", "images_per_s"]


def pareto_frontier(times: Iterable[float], fids: Iterable[float]) -> list[bool]:
    """True where no other point is at least as fast and as good, and strictly better in one."""
    points = list(zip(times, fids))
    return [not any(t2 <= t and f2 <= f and (t2 < t or f2 < f) for t2, f2 in points)
            for t, f in points]


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    metrics, timing, steps = record["metrics"], record["timing"], record["model_steps"]
    reference = record.get("reference") or {}
    return {
        "method": record["method"],
        "setting": record["setting"],
        "params": json.dumps(record["params"], sort_keys=True),
        "fid": float(metrics["fid"]),
        "fid_se": float(metrics.get("fid_bootstrap_se", math.nan)),
        "fid_diff_se": float(metrics.get("fid_diff_se", math.nan)),
        "inception_score": float(metrics.get("inception_score", math.nan)),
        "class_accuracy": float(metrics.get("class_accuracy", math.nan)),
        "clip_score": float(metrics.get("clip_score", math.nan)),
        # network evaluations per image, in total and per model role (what the method reported)
        "nfe": int(sum(steps.values())),
        "nfe_by_model": " ".join(f"{role}={n}" for role, n in sorted(steps.items())),
        "time_s": float(timing["median_s"]),
        "time_p90_s": float(timing.get("p90_s", math.nan)),
        "batch_size": int(timing["batch_size"]),
        "speedup": float(timing.get("speedup_vs_baseline", math.nan)),
        "reference": f"{reference.get('method', '')}/{reference.get('setting', '')}",
        **{k: v for k, v in cost_columns(timing).items() if k in ("gflops_per_image", "flops_speedup", "images_per_s")},
    }


def build_table(records: Iterable[Mapping[str, Any]], methods: list[str]) -> pd.DataFrame:
    """Rows in the table's method order, then by time; `on_frontier` over all rows."""
    table = pd.DataFrame([_row(r) for r in records])
    if table.empty:
        raise ValueError("no records to tabulate")
    if table.duplicated(["method", "setting"]).any():
        raise ValueError("more than one record for a (method, setting)")
    batches = sorted(set(table["batch_size"]))
    if len(batches) != 1:  # times at different batches are not on one axis
        raise ValueError(f"timing batch sizes differ between the table's settings ({batches}); "
                         f"give every method of the table the same timing.batch_size")
    finite = table["fid"].map(math.isfinite) & table["time_s"].map(math.isfinite)
    table["on_frontier"] = False
    table.loc[finite, "on_frontier"] = pareto_frontier(table.loc[finite, "time_s"], table.loc[finite, "fid"])
    order = {m: i for i, m in enumerate(methods)}
    table["_order"] = table["method"].map(order)
    return table.sort_values(["_order", "time_s", "setting"], ignore_index=True)[COLUMNS]


def _markdown_frame(df: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    batch = int(df["batch_size"].iloc[0])
    frame = {
        "method": df["method"],
        "setting": df["setting"],
        f"{label(labels, 'fid')} ± SE": [f"{fmt(f, '.2f')} ± {fmt(s, '.2f')}" for f, s in zip(df["fid"], df["fid_se"])],
        "paired SE of ΔFID vs reference": [fmt(v, ".2f") for v in df["fid_diff_se"]],
        label(labels, "inception_score"): [fmt(v, ".2f") for v in df["inception_score"]],
        label(labels, "class_accuracy"): [fmt(v, ".3f") for v in df["class_accuracy"]],
    }
    if df["clip_score"].notna().any():
        frame["CLIP score"] = [fmt(v, ".4f") for v in df["clip_score"]]
    frame.update({
        "NFE (per model)": [f"{n} ({by})" for n, by in zip(df["nfe"], df["nfe_by_model"])],
        f"time, {images(batch)} (s): median / p90": [f"{fmt(m, '.3g')} / {fmt(p, '.3g')}"
                                                     for m, p in zip(df["time_s"], df["time_p90_s"])],
        "speed-up vs reference": [fmt(v, ".2f") + ("" if pd.isna(v) else "×") for v in df["speedup"]],
        "reference": df["reference"],
        "Pareto": ["**frontier**" if v else "" for v in df["on_frontier"]],
    })
    return pd.DataFrame(frame)


def table_markdown(df: pd.DataFrame, *, title: str, labels: Mapping[str, str], setting_note: str) -> str:
    return "\n".join([
        f"# {title}", "",
        f"- **ours**: {setting_note}.",
        "- One row per method setting. Speed-up = time of the setting's configured reference run "
        "(methods.<name>.baseline, or the run its setting names) / time of the setting, median of runs "
        "made side by side; paired SE = bootstrap SE of FID(setting) - FID(reference) resampling the "
        "same images for both. NFE = network evaluations per image. Pareto frontier: no other row of "
        "the table is at least as fast and as good, and strictly better in one.",
        "",
        _markdown_frame(df, labels).to_markdown(index=False, disable_numparse=True), "",
    ])


def claims_markdown(df: pd.DataFrame, *, title: str, setting_note: str) -> str:
    """No published claims: what the table itself says, stated as facts of this run."""
    frontier = df[df["on_frontier"]]
    lines = [f"## {title}: what this run shows", "", f"- **ours**: {setting_note}.",
             "- No published numbers stand beside this table: it compares methods on this suite only.", "",
             "Settings on the Pareto frontier (time, FID), fastest first:", ""]
    lines += [f"- {r.method} {r.setting}: FID {fmt(r.fid, '.2f')}, {fmt(r.time_s, '.3g')} s"
              for r in frontier.sort_values("time_s").itertuples()]
    for method in dict.fromkeys(df["method"]):
        rows = df[df["method"] == method]
        lines.append("")
        lines.append(f"- {method}: {int(rows['on_frontier'].sum())} of {len(rows)} settings on the frontier.")
    return "\n".join(lines + [""])


def write_outputs(df: pd.DataFrame, csv_path, md_path, claims_path, *, title: str,
                  labels: Mapping[str, str], setting_note: str) -> None:
    write_text(csv_path, df.to_csv(index=False, float_format="%.10g"))
    write_text(md_path, table_markdown(df, title=title, labels=labels, setting_note=setting_note))
    write_text(claims_path, claims_markdown(df, title=title, setting_note=setting_note))


def pareto_plot(df: pd.DataFrame, png_path: str | os.PathLike, svg_path: str | os.PathLike, *,
                labels: Mapping[str, str], title: str) -> None:
    """FID against time, one colour per method, every point labelled by its setting, the frontier
    drawn through all methods' points."""
    import matplotlib

    from .figures import plt, save_png_svg, wrapped_title

    batch = int(df["batch_size"].iloc[0])
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):  # stable SVG ids between runs
        fig, ax = plt.subplots(figsize=(9, 5.5))
        try:
            for i, method in enumerate(dict.fromkeys(df["method"])):
                rows = df[df["method"] == method].sort_values("time_s")
                ax.errorbar(rows["time_s"], rows["fid"], yerr=rows["fid_se"], fmt="o-", color=f"C{i}",
                            ms=4, capsize=2, lw=1, label=method)
                for row in rows.itertuples():
                    ax.annotate(row.setting, (row.time_s, row.fid), xytext=(4, 4), textcoords="offset points",
                                fontsize=6, color=f"C{i}")
            front = df[df["on_frontier"]].sort_values("time_s")
            ax.step(front["time_s"], front["fid"], where="post", color="black", ls="--", lw=1.2,
                    zorder=3, label="Pareto frontier")
            ax.set_xlabel(f"time for {images(batch)} (s, median)")
            ax.set_ylabel(label(labels, "fid"))
            ax.margins(x=0.12, y=0.08)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            wrapped_title(fig, title)
            save_png_svg(fig, png_path, svg_path)
        finally:
            plt.close(fig)
