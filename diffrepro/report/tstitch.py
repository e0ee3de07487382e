"""T-Stitch report: the stitch-ratio table, its Pareto plot and the paper's claims checked.

Our numbers come from the embedded digits suite (metrics from a digits CNN, not Inception), so
absolute FIDs are not comparable with the paper's; the shape of FID and time against the stitch
ratio is. Every column therefore says whose number it is: `ours_*` or `paper_*`, never both.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import pandas as pd  # noqa: E402

from diffrepro.io import write_text  # noqa: E402
from diffrepro.report import bands  # noqa: E402
from diffrepro.report.cost import CSV_COLUMNS as CSV_COST_COLUMNS, cost_columns  # noqa: E402
from diffrepro.report.paper import TSTITCH_YAML  # noqa: E402
from diffrepro.report.figures import save_png_svg, wrapped_title  # noqa: E402
from diffrepro.report.format import fmt as _fmt, images as _images, label as _label  # noqa: E402,F401
from diffrepro.report.format import labels_from_records  # noqa: E402,F401  (tests and callers import it here)

# The DiT paper times a batch of 8 images (the SD figures: one image); our time column is only
# comparable at the paper's batch, which a table gets from build_table(timing_batch=...).
TIMING_BATCH = 8
# Claim rules, declared before any run so a verdict cannot be tuned to the numbers. Claims that
# compare our number with the paper's use the bands in reports/paper/tstitch.yaml instead.
NO_LOSS_SIGMAS = 2.0
DEFAULT_PAPER_TABLE = "dit_s_xl_ddim100"  # README Figure 1, the table PAPER_NOTE describes

OUR_COLUMNS = [
    "ratio",
    "ours_fid",
    "ours_fid_se",
    "ours_fid_diff_se",
    "ours_inception_score",
    "ours_class_accuracy",
    "ours_clip_score",
    "ours_small_steps",
    "ours_large_steps",
    "ours_time_8_s",
    "ours_speedup",
    "ours_overhead_vs_ideal",
]
PAPER_COLUMNS = ["paper_fid", "paper_time_s", "paper_speedup"]
# cost beside time (report.cost): GFLOPs per image, FLOPs speed-up vs r=0, p50 / p90, images/s
COST_COLUMNS = [f"ours_{c}" for c in CSV_COST_COLUMNS]
TABLE_COLUMNS = OUR_COLUMNS + PAPER_COLUMNS + COST_COLUMNS

PAPER_NOTE = (
    "DiT-S/2 -> DiT-XL/2 on ImageNet 256x256, DDIM 100, CFG 1.5; FID-5K from the ADM evaluator "
    "(Inception features); time for 8 images on one RTX 3090 (T-Stitch README Figure 1)"
)


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


def _our_row(record: Mapping[str, Any]) -> dict[str, Any]:
    metrics, timing, steps = record["metrics"], record["timing"], record["model_steps"]
    return {
        "ratio": float(record["params"]["ratio"]),
        "ours_fid": float(metrics["fid"]),
        "ours_fid_se": float(metrics["fid_bootstrap_se"]),
        # Paired bootstrap SE of FID(r) - FID(0): every ratio shares noise and labels.
        "ours_fid_diff_se": float(metrics.get("fid_diff_se", math.nan)),
        "ours_inception_score": float(metrics.get("inception_score", math.nan)),
        "ours_class_accuracy": float(metrics.get("class_accuracy", math.nan)),
        "ours_clip_score": float(metrics.get("clip_score", math.nan)),  # text-to-image suites
        "ours_small_steps": int(steps["small"]),
        "ours_large_steps": int(steps["large"]),
        "ours_time_8_s": float(timing["median_s"]),
        "ours_overhead_vs_ideal": float(timing.get("overhead_fraction", math.nan)),
        # time(r=0) / time(r), both measured side by side in the timing job of r
        "_paired_speedup": float(timing.get("speedup_vs_baseline", math.nan)),
        "_batch": int(timing["batch_size"]),
        **cost_columns(timing, prefix="ours_"),
    }


def ratio_key(ratio: float) -> int:
    """A ratio in thousandths, to join our rows with the paper's: 0.25 meets the paper's 0.25
    (LCM's quarter steps) and never its 0.2. Never NaN: pandas joins NaN keys with each other."""
    return round(ratio * 1000)


def _value_at(df: pd.DataFrame, ratio: float, column: str) -> float | None:
    hit = df.loc[(df["ratio"] - ratio).abs() < 1e-9, column]
    return None if hit.empty or pd.isna(hit.iloc[0]) else float(hit.iloc[0])


def timing_batch(df: pd.DataFrame) -> int:
    """The batch our times are for (kept in the table's attrs by build_table)."""
    return int(df.attrs.get("timing_batch", TIMING_BATCH))




def _check_ours(ours: pd.DataFrame, expected_batch: int) -> None:
    if ours["ratio"].duplicated().any():
        dups = sorted(ours.loc[ours["ratio"].duplicated(), "ratio"])
        raise ValueError(f"more than one record for stitch ratio(s) {dups}")
    if _value_at(ours, 0.0, "ours_time_8_s") is None:
        raise ValueError(
            "no record at stitch ratio r=0 (large model only): speed-ups are relative to it"
        )
    batches = set(ours["_batch"])
    if batches != {expected_batch}:
        raise ValueError(
            f"timing batch size(s) {sorted(batches)}; the table compares time for "
            f"{_images(expected_batch)}, the paper's batch (set timing.batch_size)"
        )


def _paper_columns(paper_df: pd.DataFrame) -> pd.DataFrame:
    paper = paper_df[[c for c in ("ratio", "fid", "time_s") if c in paper_df]].astype(float)
    paper = paper.rename(columns={"fid": "paper_fid", "time_s": "paper_time_s"})
    if "paper_fid" not in paper:  # the SD-family figures give time only
        paper["paper_fid"] = math.nan
    if "paper_time_s" not in paper:  # some published curves give FID only (other model pairs)
        paper["paper_time_s"] = math.nan
    base = _value_at(paper, 0.0, "paper_time_s")
    paper["paper_speedup"] = math.nan if base is None else base / paper["paper_time_s"]
    paper["_key"] = [ratio_key(r) for r in paper["ratio"]]
    return paper.drop(columns="ratio")


def build_table(records: Iterable[Mapping[str, Any]], paper_df: pd.DataFrame,
                timing_batch: int = TIMING_BATCH) -> pd.DataFrame:
    """One row per stitch ratio: our columns (`ours_*`) then the paper's DiT-S -> DiT-XL (`paper_*`)."""
    ours = pd.DataFrame([_our_row(r) for r in records])
    if ours.empty:
        raise ValueError("no records to tabulate")
    ours = ours.sort_values("ratio", ignore_index=True)
    _check_ours(ours, timing_batch)
    if ours["_paired_speedup"].notna().all():
        ours["ours_speedup"] = ours["_paired_speedup"]
    else:  # older timing files: ratio of medians measured in separate jobs
        ours["ours_speedup"] = _value_at(ours, 0.0, "ours_time_8_s") / ours["ours_time_8_s"]
    ours["_key"] = [ratio_key(r) for r in ours["ratio"]]

    table = ours.merge(_paper_columns(paper_df), on="_key", how="left")[TABLE_COLUMNS]
    table.attrs["timing_batch"] = timing_batch
    return table


# ---------------------------------------------------------------------------------------------
# CSV + Markdown
# ---------------------------------------------------------------------------------------------








def _markdown_frame(df: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """Human-readable copy of the table; every header starts with whose number it is."""
    fid_label = _label(labels, "fid")
    return pd.DataFrame(
        {
            "r (small-model fraction)": [_fmt(r, "g") for r in df["ratio"]],
            f"ours: {fid_label} ± SE": [
                f"{_fmt(f, '.2f')} ± {_fmt(s, '.2f')}" for f, s in zip(df["ours_fid"], df["ours_fid_se"])
            ],
            "ours: ΔFID vs r=0 ± paired SE": [
                f"{_fmt(f - f0, '+.2f')} ± {_fmt(s, '.2f')}"
                for f, s, f0 in zip(df["ours_fid"], df["ours_fid_diff_se"],
                                    [_value_at(df, 0.0, "ours_fid")] * len(df))
            ],
            f"ours: {_label(labels, 'inception_score')}": [_fmt(v, ".2f") for v in df["ours_inception_score"]],
            f"ours: {_label(labels, 'class_accuracy')}": [_fmt(v, ".3f") for v in df["ours_class_accuracy"]],
            **({"ours: CLIP score": [_fmt(v, ".4f") for v in df["ours_clip_score"]]}
               if df["ours_clip_score"].notna().any() else {}),
            "ours: steps small / large": [
                f"{s} / {l}" for s, l in zip(df["ours_small_steps"], df["ours_large_steps"])
            ],
            f"ours: time, {_images(timing_batch(df))} (s)": [_fmt(v, ".3g") for v in df["ours_time_8_s"]],
            "ours: speed-up vs r=0": [_fmt(v, ".2f") + "×" for v in df["ours_speedup"]],
            "ours: overhead vs ideal": [_fmt(v, "+.1%") for v in df["ours_overhead_vs_ideal"]],
            "paper: FID-5K (Inception)": [_fmt(v, ".2f") for v in df["paper_fid"]],
            f"paper: time, {_images(timing_batch(df))} (s)": [_fmt(v, ".1f") for v in df["paper_time_s"]],
            "paper: speed-up vs r=0": [
                "—" if pd.isna(v) else f"{v:.2f}×" for v in df["paper_speedup"]
            ],
        }
    )


def table_markdown(df: pd.DataFrame, *, labels: Mapping[str, str], setting_note: str,
                   paper_note: str = PAPER_NOTE) -> str:
    lines = [
        "# T-Stitch: stitch ratio sweep (small model for the first r of the steps)",
        "",
        f"- **ours**: {setting_note}. Metrics: {_label(labels, 'fid')}; "
        f"{_label(labels, 'inception_score')}; {_label(labels, 'class_accuracy')}.",
        f"- **paper**: {paper_note}.",
        _comparability(labels),
        "- ours: speed-up = median over repeats of time(r = 0) / time(r), the two runs made side by "
        "side in one process (the machine's speed drifts between jobs); time = median of repeats; "
        "paper: speed-up = time at r = 0 / time at r. Overhead vs ideal = measured against ideal time "
        "(sum over models of steps x median time of one guided forward pass, same batch); "
        "SE = bootstrap standard error of our FID; paired SE = bootstrap SE of FID(r) - FID(0) "
        "resampling the same images for both (every ratio shares noise and labels).",
        "",
        _markdown_frame(df, labels).to_markdown(index=False, disable_numparse=True),
        "",
    ]
    return "\n".join(lines)


def write_table(
    df: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    *,
    labels: Mapping[str, str],
    setting_note: str,
    paper_note: str = PAPER_NOTE,
) -> None:
    """Write the table as CSV (machine) and Markdown (people), each atomically."""
    # 10 significant digits: full measurement precision without float noise like 0.0100000000000009.
    write_text(csv_path, df.to_csv(index=False, float_format="%.10g"))
    write_text(md_path, table_markdown(df, labels=labels, setting_note=setting_note, paper_note=paper_note))


def _comparability(labels: Mapping[str, str]) -> str:
    if "Inception" in _label(labels, "fid"):
        return ("- Both groups use Inception FID the ADM evaluator's way, so absolute FIDs are "
                "comparable; times are not (different hardware): compare speed-ups.")
    return ("- Absolute FIDs are not comparable between the two groups (different feature networks "
            "and data); compare the shapes: FID and time relative to r = 0.")


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------




def _annotate(ax: plt.Axes, xs: Iterable[float], ys: Iterable[float], ratios: Iterable[float],
              offset: tuple[int, int], color: str) -> None:
    # Labels to the right of the offset point when it points right, else to its left.
    ha = "left" if offset[0] >= 0 else "right"
    for x, y, r in zip(xs, ys, ratios):
        ax.annotate(f"r={r:g}", (x, y), xytext=offset, textcoords="offset points",
                    fontsize=7, color=color, ha=ha)


def _plot_ours(ax: plt.Axes, df: pd.DataFrame, labels: Mapping[str, str]) -> None:
    ax.errorbar(df["ours_time_8_s"], df["ours_fid"], yerr=df["ours_fid_se"], fmt="o-",
                color="C0", ms=4, capsize=3, label="ours (FID ± SE)")
    ends = [(0.0, "s", "C3", "r = 0: large only"), (1.0, "^", "C2", "r = 1: small only")]
    for ratio, marker, color, text in ends:
        end = df[(df["ratio"] - ratio).abs() < 1e-9]
        ax.plot(end["ours_time_8_s"], end["ours_fid"], marker, color=color, ms=10,
                zorder=3, label=text)
    _annotate(ax, df["ours_time_8_s"], df["ours_fid"], df["ratio"], (5, 5), "C0")
    ax.set_xlabel(f"ours: time for {_images(timing_batch(df))} (s, median)")
    ax.set_ylabel(f"ours: {_label(labels, 'fid')}")
    ax.set_title("ours: quality vs time", fontsize=10)
    ax.margins(x=0.1, y=0.08)  # room for the r labels at the panel's edges
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def _plot_shapes(ax: plt.Axes, df: pd.DataFrame) -> None:
    fid0 = _value_at(df, 0.0, "ours_fid")
    relative_time = 1.0 / df["ours_speedup"]  # the speed-up column: side-by-side measurement
    ax.plot(relative_time, df["ours_fid"] / fid0, "o-", color="C0", ms=4,
            label="ours (embedded digits suite)")
    # Ours labelled below-left, the paper's above-right, so the two sets of r labels do not collide.
    _annotate(ax, relative_time, df["ours_fid"] / fid0, df["ratio"], (-5, -11), "C0")

    paper = df.dropna(subset=["paper_fid", "paper_time_s"])
    paper_fid0 = _value_at(paper, 0.0, "paper_fid")
    if paper_fid0 is not None and not paper.empty:
        px = paper["paper_time_s"] / _value_at(paper, 0.0, "paper_time_s")
        py = paper["paper_fid"] / paper_fid0
        ax.plot(px, py, "s--", color="C1", ms=4, label="paper: DiT-S/2 → DiT-XL/2 (FID-5K)")
        _annotate(ax, px, py, paper["ratio"], (5, 5), "C1")

    ax.axhline(1.0, color="grey", ls=":", lw=1, label="FID at r = 0")
    ax.set_xlabel("time / time at r = 0  (lower = faster)")
    ax.set_ylabel("FID / FID at r = 0  (lower = better)")
    ax.set_title("shapes compared (each curve relative to its own r = 0)", fontsize=10)
    ax.margins(x=0.1, y=0.08)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def pareto_plot(
    df: pd.DataFrame,
    png_path: str | os.PathLike,
    svg_path: str | os.PathLike,
    *,
    labels: Mapping[str, str],
    title: str,
) -> None:
    """Left: our FID ± SE against our time. Right: ours and the paper's curve, each relative to r = 0."""
    with matplotlib.rc_context({"svg.hashsalt": "diffrepro"}):  # stable SVG ids between runs
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
        try:
            _plot_ours(left, df, labels)
            _plot_shapes(right, df)
            wrapped_title(fig, title)
            save_png_svg(fig, png_path, svg_path)
        finally:
            plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------

NO_LOSS_RULE = (
    f"ours: no FID loss at r iff FID(r) - FID(0) <= {NO_LOSS_SIGMAS:g}·SE_paired(r), "
    "SE_paired = paired bootstrap standard error of FID(r) - FID(0) (same images resampled "
    "for both; every ratio shares noise and labels); paper: FID(r) <= FID(0), since it "
    "publishes no SE"
)


def _no_loss(df: pd.DataFrame, ratio: float) -> tuple[bool, float] | None:
    """(our FID at `ratio` shows no loss, threshold), or None when not measured."""
    fid0 = _value_at(df, 0.0, "ours_fid")
    fid, se = _value_at(df, ratio, "ours_fid"), _value_at(df, ratio, "ours_fid_diff_se")
    if None in (fid0, fid, se):
        return None
    threshold = fid0 + NO_LOSS_SIGMAS * se
    return fid <= threshold, threshold


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("holds" if ok else "does not hold")


def _claim_forty_percent(df: pd.DataFrame) -> dict[str, str]:
    p0, p4 = _value_at(df, 0.0, "paper_fid"), _value_at(df, 0.4, "paper_fid")
    paper_value = (
        f"FID-5K {p4:.2f} at r=0.4 vs {p0:.2f} at r=0 "
        f"({'no loss' if p4 <= p0 else 'loss'})" if None not in (p0, p4) else "not in table"
    )
    result = _no_loss(df, 0.4)
    if result is None:
        ours_value = "r=0.4 not measured"
    else:
        f0, f4 = _value_at(df, 0.0, "ours_fid"), _value_at(df, 0.4, "ours_fid")
        d4 = _value_at(df, 0.4, "ours_fid_diff_se")
        ours_value = (
            f"FID {f4:.2f} at r=0.4 vs {f0:.2f} at r=0: difference {f4 - f0:+.2f} ± {d4:.2f} "
            f"(paired SE; no-loss threshold {result[1]:.2f})"
        )
    return {
        "claim": "about 40% of the steps can go to the small model with no FID loss",
        "paper_value": paper_value,
        "ours_value": ours_value,
        "verdict": _verdict(None if result is None else result[0]),
        "rule": "holds iff our FID(0.4) - FID(0) <= 2·SE_paired(0.4)",
    }


def _largest_no_loss_ours(df: pd.DataFrame) -> float | None:
    ok = [r for r in df["ratio"] if (res := _no_loss(df, r)) is not None and res[0]]
    return max(ok) if ok else None


def _largest_no_loss_paper(df: pd.DataFrame) -> float | None:
    paper = df.dropna(subset=["paper_fid"])
    fid0 = _value_at(paper, 0.0, "paper_fid")
    if fid0 is None:
        return None
    return float(paper.loc[paper["paper_fid"] <= fid0, "ratio"].max())


def _claim_largest_ratio(df: pd.DataFrame, band: bands.Band) -> dict[str, str]:
    ours, paper = _largest_no_loss_ours(df), _largest_no_loss_paper(df)
    return {
        "claim": "the largest stitch ratio with no FID loss",
        "paper_value": "not in table" if paper is None else f"r = {paper:g} (FID(r) <= FID(0))",
        "ours_value": "not measured" if ours is None else f"r = {ours:g} (within 2 SE of FID(0))",
        # a larger no-loss ratio gives more steps to the small model: higher is better
        "verdict": bands.verdict(ours, paper, band, higher_is_better=True),
        "band": band.text(),
        "rule": (
            f"largest r among the table's ratios with no FID loss ({NO_LOSS_RULE}); "
            "within band iff ours is within the paper's band, else better (larger) or worse"
        ),
    }


def _claim_speedup(df: pd.DataFrame, band: bands.Band) -> dict[str, str]:
    ours = _value_at(df, 0.4, "ours_speedup")
    paper = _value_at(df, 0.4, "paper_speedup")
    t0, t4 = _value_at(df, 0.0, "paper_time_s"), _value_at(df, 0.4, "paper_time_s")
    paper_value = "not in table" if paper is None else f"{paper:.2f}× ({t0:.1f} s / {t4:.1f} s)"
    ours_value = "not measured" if ours is None else (
        f"{ours:.2f}× (the table's speed-up column: time(0) / time(0.4) for {_images(timing_batch(df))})")
    return {
        "claim": "speed-up at r = 0.4",
        "paper_value": paper_value,
        "ours_value": ours_value,
        "verdict": bands.verdict(ours, paper, band, higher_is_better=True),
        "band": band.text(),
        "rule": (
            f"speed-up = time(0) / time(0.4) for {_images(timing_batch(df))}; within band iff ours is "
            f"within the paper's band, else better (faster) or worse"
        ),
    }


def _fid_ratio(df: pd.DataFrame, column: str) -> tuple[float, float, float] | None:
    fid0, fid1 = _value_at(df, 0.0, column), _value_at(df, 1.0, column)
    return None if None in (fid0, fid1) else (fid1 / fid0, fid1, fid0)


def _claim_small_much_worse(df: pd.DataFrame) -> dict[str, str]:
    ours, paper = _fid_ratio(df, "ours_fid"), _fid_ratio(df, "paper_fid")

    def describe(res: tuple[float, float, float] | None) -> str:
        if res is None:
            return "r=0 or r=1 not measured"
        return f"FID(1) / FID(0) = {res[1]:.2f} / {res[2]:.2f} = {res[0]:.2f}"

    return {
        "claim": "small-only FID is much worse than large-only (suite sanity)",
        "paper_value": describe(paper),
        "ours_value": describe(ours),
        "verdict": _verdict(None if ours is None else ours[0] >= 2.0),
        "rule": "holds iff our FID(1) >= 2 × FID(0)",
    }


def claims(df: pd.DataFrame, paper_yaml: str | os.PathLike = TSTITCH_YAML,
           paper_table: str | None = DEFAULT_PAPER_TABLE) -> list[dict[str, str]]:
    """The paper's claims judged on the table's numbers: pre-declared rules for claims about our
    own numbers; the bands of `paper_yaml` (and `paper_table`'s overrides) where ours meets the
    paper's. A claim without a band has "band": ""."""
    def band(metric: str) -> bands.Band:
        return bands.band_for(paper_yaml, metric, paper_table)

    found = [
        _claim_forty_percent(df),
        _claim_largest_ratio(df, band("no_loss_ratio")),
        _claim_speedup(df, band("speedup")),
        _claim_small_much_worse(df),
    ]
    return [{"band": "", **c} for c in found]


def claims_markdown(df: pd.DataFrame, setting_note: str, paper_note: str = PAPER_NOTE,
                    paper_yaml: str | os.PathLike = TSTITCH_YAML,
                    paper_table: str | None = DEFAULT_PAPER_TABLE) -> str:
    found = claims(df, paper_yaml, paper_table)
    rows = pd.DataFrame(
        {
            "claim": [c["claim"] for c in found],
            "paper": [c["paper_value"] for c in found],
            "ours": [c["ours_value"] for c in found],
            "band (reason)": [c["band"] or "— (own rule, below)" for c in found],
            "verdict (ours)": [f"**{c['verdict']}**" for c in found],
        }
    )
    lines = [
        "## T-Stitch claims: paper vs ours",
        "",
        f"- **ours**: {setting_note}.",
        f"- **paper**: {paper_note}.",
        "- Verdicts are computed from the numbers with the rules below, fixed before the runs. "
        "Absolute FIDs differ in feature network and data, so only relative numbers are judged.",
        "- Where ours meets a published number the verdict is *within band*, *better* or *worse*: "
        "the band, two-sided and stated with its reason beside the paper's numbers "
        "(reports/paper/*.yaml), is set before any run.",
        "",
        rows.to_markdown(index=False, disable_numparse=True),
        "",
        "Rules:",
        "",
        *[f"{i}. *{c['claim']}*: {c['rule']}." for i, c in enumerate(found, 1)],
        "",
    ]
    return "\n".join(lines)
