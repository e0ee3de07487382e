"""T-Stitch across samplers and step counts (the paper's "steps x samplers" figure): FID against
the small-model fraction, one curve per (sampler, steps), ours beside the paper's.

Our FIDs are in the suite's own features (digits CNN, or Inception for a paper config); each
curve is also given relative to its own r = 0, the comparison that holds across feature spaces.
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
from diffrepro.report.tstitch import ratio_key  # noqa: E402

# Our sampler names -> the paper table's
PAPER_SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}
COLUMNS = ["sampler", "steps", "ratio", "ours_fid", "ours_fid_se", "ours_fid_diff_se",
           "ours_fid_relative", "ours_speedup", "paper_fid", "paper_fid_relative"]


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    params, sampling = record["params"], record["sampling"]
    return {
        "sampler": params.get("sampler") or sampling["sampler"],
        "steps": int(params.get("steps") or sampling["steps"]),
        "ratio": float(params["ratio"]),
        "ours_fid": float(record["metrics"]["fid"]),
        "ours_fid_se": float(record["metrics"]["fid_bootstrap_se"]),
        "ours_fid_diff_se": float(record["metrics"].get("fid_diff_se", math.nan)),
        "ours_speedup": float(record["timing"].get("speedup_vs_baseline", math.nan)),
    }


def _relative_to_r0(df: pd.DataFrame, column: str) -> pd.Series:
    """Each value over its own curve's value at r = 0 (NaN where the curve has none)."""
    r0 = df[df["ratio"].abs() < 1e-9].set_index(["sampler", "steps"])[column]
    base = [r0.get((s, n), math.nan) for s, n in zip(df["sampler"], df["steps"])]
    return df[column] / pd.Series(base, index=df.index)


def build_table(records: Iterable[Mapping[str, Any]], paper_df: pd.DataFrame) -> pd.DataFrame:
    ours = pd.DataFrame([_row(r) for r in records])
    if ours.empty:
        raise ValueError("no records to tabulate")
    if ours.duplicated(["sampler", "steps", "ratio"]).any():
        raise ValueError("more than one record for a (sampler, steps, ratio)")
    ours["ours_fid_relative"] = _relative_to_r0(ours, "ours_fid")
    paper = paper_df.rename(columns={"fid": "paper_fid"}).assign(
        steps=lambda d: d["steps"].astype(int), _key=lambda d: [ratio_key(r) for r in d["ratio"]])
    paper = paper.drop(columns="ratio")
    ours["_paper_sampler"] = ours["sampler"].map(PAPER_SAMPLER_NAMES)
    ours["_key"] = [ratio_key(r) for r in ours["ratio"]]
    table = ours.merge(paper.rename(columns={"sampler": "_paper_sampler"}),
                       on=["_paper_sampler", "steps", "_key"], how="left")
    table["paper_fid_relative"] = _relative_to_r0(table, "paper_fid")
    return table.sort_values(["sampler", "steps", "ratio"], ignore_index=True)[COLUMNS]




def table_markdown(df: pd.DataFrame, *, labels: Mapping[str, str], setting_note: str,
                   paper_note: str) -> str:
    fid = _label(labels, "fid")
    frame = pd.DataFrame({
        "sampler, steps": [f"{PAPER_SAMPLER_NAMES.get(s, s)}-{n}" for s, n in zip(df["sampler"], df["steps"])],
        "r": [f"{r:g}" for r in df["ratio"]],
        f"ours: {fid} ± SE": [f"{_fmt(f, '.2f')} ± {_fmt(e, '.2f')}" for f, e in zip(df["ours_fid"], df["ours_fid_se"])],
        "ours: FID / FID(r=0)": [_fmt(v, ".3f") for v in df["ours_fid_relative"]],
        "ours: paired SE vs r=0": [_fmt(v, ".2f") for v in df["ours_fid_diff_se"]],
        "ours: speed-up vs r=0": [_fmt(v, ".2f") + "×" for v in df["ours_speedup"]],
        "paper: FID-5K": [_fmt(v, ".1f") for v in df["paper_fid"]],
        "paper: FID / FID(r=0)": [_fmt(v, ".3f") for v in df["paper_fid_relative"]],
    })
    return "\n".join([
        "# T-Stitch across samplers and step counts",
        "",
        f"- **ours**: {setting_note}. {fid}; each setting is paired with r = 0 of the same "
        "sampler and steps (same noise and labels).",
        f"- **paper**: {paper_note}.",
        "- Compare FID relative to each curve's own r = 0; absolute FIDs compare only when both "
        "use Inception FID.",
        "",
        frame.to_markdown(index=False, disable_numparse=True),
        "",
    ])


def claims_markdown(df: pd.DataFrame, setting_note: str) -> str:
    """The paper's claim for this figure: T-Stitch keeps FID up to r = 0.4 with every sampler
    and step count. Rule (fixed before the runs): FID(0.4) <= FID(0) + 2 paired SE."""
    lines = ["## T-Stitch across samplers: claims", "", f"- **ours**: {setting_note}.", "",
             "| sampler, steps | ours: FID(0.4) − FID(0) ± paired SE | verdict (no loss at r = 0.4) |",
             "|---|---|---|"]
    for (sampler, steps), curve in df.groupby(["sampler", "steps"], sort=True):
        at = {round(r, 9): row for r, row in zip(curve["ratio"], curve.itertuples())}
        if 0.0 not in at or 0.4 not in at:
            lines.append(f"| {PAPER_SAMPLER_NAMES.get(sampler, sampler)}-{steps} | — | not measured |")
            continue
        diff, se = at[0.4].ours_fid - at[0.0].ours_fid, at[0.4].ours_fid_diff_se
        ok = diff <= 2 * se if not pd.isna(se) else None
        verdict = "holds" if ok else ("does not hold" if ok is not None else "undecided (no SE)")
        lines.append(f"| {PAPER_SAMPLER_NAMES.get(sampler, sampler)}-{steps} | {diff:+.2f} ± "
                     f"{_fmt(se, '.2f')} | **{verdict}** |")
    lines += ["", "Rule: holds iff FID(0.4) − FID(0) ≤ 2 × its paired bootstrap SE.", ""]
    return "\n".join(lines)


def write_outputs(df, csv_path, md_path, claims_path, *, labels, setting_note, paper_note) -> None:
    write_text(csv_path, df.to_csv(index=False, float_format="%.10g"))
    write_text(md_path, table_markdown(df, labels=labels, setting_note=setting_note, paper_note=paper_note))
    write_text(claims_path, claims_markdown(df, setting_note))


def pareto_plot(df: pd.DataFrame, png_path: str | os.PathLike, svg_path: str | os.PathLike, *,
                labels: Mapping[str, str], title: str) -> None:
    """Left: ours, FID / FID(r=0) against r per curve. Right: the paper's, the same way."""
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
        try:
            for i, ((sampler, steps), curve) in enumerate(df.groupby(["sampler", "steps"], sort=True)):
                name = f"{PAPER_SAMPLER_NAMES.get(sampler, sampler)}-{steps}"
                left.plot(curve["ratio"], curve["ours_fid_relative"], "o-", color=f"C{i}", ms=4, label=name)
                paper = curve.dropna(subset=["paper_fid_relative"])
                if not paper.empty:
                    right.plot(paper["ratio"], paper["paper_fid_relative"], "s--", color=f"C{i}",
                               ms=4, label=name)
            for ax, who in ((left, f"ours ({_label(labels, 'fid')})"), (right, "paper (FID-5K)")):
                ax.axhline(1.0, color="grey", ls=":", lw=1)
                ax.set_xlabel("r (small-model fraction of the steps)")
                ax.set_title(who, fontsize=10)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            left.set_ylabel("FID / FID at r = 0 of the same sampler and steps")
            wrapped_title(fig, title)
            save_png_svg(fig, png_path, svg_path)
        finally:
            plt.close(fig)
