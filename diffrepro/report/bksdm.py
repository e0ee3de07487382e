"""BK-SDM report: the teacher and its block-removed students, size beside quality and speed.

Ours: the embedded suite's class-prompt U-Nets (or a paper config's), sizes counted from their
configs the way the paper counts them (thop's convention, diffrepro.models.bksdm.unet_size),
FID / IS / accuracy from the scorer, per-step latency from the timing job. Paper: the zero-shot
MS-COCO table. Absolute values are not comparable (other data, metric network and sizes);
compare the relative size and quality steps from the teacher to each student.
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
from diffrepro.report import bands  # noqa: E402
from diffrepro.report.paper import PAPER_DIR  # noqa: E402
from diffrepro.report.figures import save_png_svg, wrapped_title  # noqa: E402
from diffrepro.report.format import fmt as _fmt, label as _label  # noqa: E402

VARIANT_ORDER = ("teacher", "base", "small", "tiny")
BKSDM_YAML = PAPER_DIR / "bksdm.yaml"  # the published table and the size bands beside it
CLAIM_COLUMNS = ["claim", "paper_value", "ours_value", "band", "verdict", "rule"]


def _our_row(record: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    metrics, timing = record["metrics"], record["timing"]
    return {
        "variant": model["variant"], "model": model["model"],
        "ours_params_m": model["params_m"], "ours_gmacs": model["gmacs"],
        "ours_fid": float(metrics["fid"]), "ours_fid_se": float(metrics["fid_bootstrap_se"]),
        "ours_inception_score": float(metrics.get("inception_score", math.nan)),
        "ours_class_accuracy": float(metrics.get("class_accuracy", math.nan)),
        "ours_clip_score": float(metrics.get("clip_score", math.nan)),
        "ours_step_ms": 1000 * float(timing["per_step_forward_s"]["model"]),
        "ours_time_s": float(timing["median_s"]),
    }


def build_table(records: Iterable[Mapping[str, Any]], models: Mapping[str, Mapping[str, Any]],
                paper_df: pd.DataFrame) -> pd.DataFrame:
    """One row per model; `models` maps a method to {model, variant, params_m, gmacs}."""
    rows = [_our_row(r, models[r["method"]]) for r in records]
    ours = pd.DataFrame(rows)
    if ours.empty or "teacher" not in set(ours["variant"]):
        raise ValueError("the BK-SDM table needs the teacher's record (variant 'teacher')")
    if ours["variant"].duplicated().any():
        raise ValueError(f"more than one model per variant: {sorted(ours['variant'])}")
    ours["_order"] = [VARIANT_ORDER.index(v) for v in ours["variant"]]
    ours = ours.sort_values("_order", ignore_index=True).drop(columns="_order")
    teacher = ours.iloc[0]
    ours["ours_params_ratio"] = ours["ours_params_m"] / teacher["ours_params_m"]
    ours["ours_step_speedup"] = teacher["ours_step_ms"] / ours["ours_step_ms"]
    ours["ours_fid_vs_teacher"] = ours["ours_fid"] - teacher["ours_fid"]
    paper = paper_df.rename(columns={c: f"paper_{c}" for c in paper_df.columns if c != "variant"})
    paper["paper_params_ratio"] = paper["paper_params_m"] / float(
        paper.loc[paper["variant"] == "teacher", "paper_params_m"].iloc[0])
    paper["paper_fid_vs_teacher"] = paper["paper_fid"] - float(
        paper.loc[paper["variant"] == "teacher", "paper_fid"].iloc[0])
    return ours.merge(paper, on="variant", how="left")


def table_markdown(df: pd.DataFrame, *, labels: Mapping[str, str], setting_note: str, paper_note: str) -> str:
    fid = _label(labels, "fid")
    frame = pd.DataFrame({
        "model": [f"{v} ({m})" for v, m in zip(df["variant"], df["model"])],
        "ours: U-Net params (M)": [_fmt(v, ".4g") for v in df["ours_params_m"]],
        "ours: MACs (M)": [_fmt(1000 * v, ".4g") for v in df["ours_gmacs"]],
        "ours: params vs teacher": [_fmt(v, ".0%") for v in df["ours_params_ratio"]],
        f"ours: {fid} ± SE": [f"{_fmt(f, '.2f')} ± {_fmt(s, '.2f')}" for f, s in zip(df["ours_fid"], df["ours_fid_se"])],
        "ours: ΔFID vs teacher": [_fmt(v, "+.2f") for v in df["ours_fid_vs_teacher"]],
        f"ours: {_label(labels, 'inception_score')}": [_fmt(v, ".2f") for v in df["ours_inception_score"]],
        f"ours: {_label(labels, 'class_accuracy')}": [_fmt(v, ".3f") for v in df["ours_class_accuracy"]],
        "ours: CLIP score": [_fmt(v, ".4f") for v in df["ours_clip_score"]],
        "ours: U-Net step (ms)": [_fmt(v, ".3g") for v in df["ours_step_ms"]],
        "ours: step speed-up vs teacher": [_fmt(v, ".2f") + "×" for v in df["ours_step_speedup"]],
        "ours: time per image (s)": [_fmt(v, ".3g") for v in df["ours_time_s"]],
        "paper: params (M)": [_fmt(v, ".1f") for v in df["paper_params_m"]],
        "paper: GMACs": [_fmt(v, ".1f") for v in df["paper_gmacs"]],
        "paper: params vs teacher": [_fmt(v, ".0%") for v in df["paper_params_ratio"]],
        "paper: FID": [_fmt(v, ".2f") for v in df["paper_fid"]],
        "paper: ΔFID vs teacher": [_fmt(v, "+.2f") for v in df["paper_fid_vs_teacher"]],
        "paper: IS": [_fmt(v, ".2f") for v in df["paper_is"]],
        "paper: CLIP": [_fmt(v, ".4f") for v in df["paper_clip"]],
    })
    return "\n".join([
        "# BK-SDM: block-removed, distilled U-Nets against their teacher", "",
        f"- **ours**: {setting_note}. Sizes counted from the U-Net configs as the paper counts them "
        "(thop: convolutions, linear layers and LayerNorm; attention matmuls not counted), for our "
        "input size; step = one guided U-Net pass (batch of 2: conditional and unconditional).",
        f"- **paper**: {paper_note}.",
        "- Absolute values are not comparable between the groups (other data, metric network and "
        "model sizes); compare the steps from the teacher to each student.", "",
        frame.to_markdown(index=False, disable_numparse=True), ""])


def size_claim(reproduced: Iterable[Mapping[str, Any]], paper_df: pd.DataFrame,
               paper_yaml: str | os.PathLike = BKSDM_YAML) -> dict[str, str]:
    """SD-v1.4 and its students' sizes computed from the configs against the published ones,
    each number judged against its band in `paper_yaml`; a smaller U-Net is the better side."""
    published = {row["variant"]: row for _, row in paper_df.iterrows()}
    pairs = [(r, published["teacher" if r["name"] == "sd-v1.4" else r["name"]]) for r in reproduced]
    size_bands = {m: bands.band_for(paper_yaml, m) for m in ("params_m", "gmacs")}
    found = [bands.verdict(r[m], p[m], band, higher_is_better=False)
             for r, p in pairs for m, band in size_bands.items()]
    return {"claim": "U-Net sizes of SD-v1.4 / Base / Small / Tiny at 512 px",
            "paper_value": "; ".join(f"{p['params_m']:.1f} M, {p['gmacs']:.1f} G" for _, p in pairs),
            "ours_value": "; ".join(f"{r['params_m']:.1f} M, {r['gmacs']:.1f} G" for r, _ in pairs),
            "band": "; ".join(f"{m}: {b.text()}" for m, b in size_bands.items()),
            "verdict": bands.combined(found),
            "rule": ("computed from the configs with no weights; every number against its band, "
                     "the claim is worse if any is worse, else better if any is better (smaller)")}


def _ordering_claim(df: pd.DataFrame) -> dict[str, str]:
    fids = list(df["ours_fid"])
    ok = all(a <= b for a, b in zip(fids, fids[1:]))
    return {"claim": "quality falls as blocks are removed: FID teacher < Base < Small < Tiny",
            "paper_value": " < ".join(_fmt(v, ".2f") for v in df["paper_fid"]),
            "ours_value": " / ".join(_fmt(v, ".2f") for v in fids),
            "verdict": "holds" if ok else "does not hold",
            "rule": "holds iff our FIDs are non-decreasing in the order teacher, Base, Small, Tiny"}


def _speed_claim(df: pd.DataFrame) -> dict[str, str]:
    steps = list(df["ours_step_ms"])
    ok = all(s < steps[0] for s in steps[1:])
    return {"claim": "every student's U-Net step is faster than the teacher's",
            "paper_value": "MACs " + " / ".join(_fmt(v, ".1f") for v in df["paper_gmacs"]) + " G",
            "ours_value": " / ".join(_fmt(v, ".3g") for v in steps) + " ms per step",
            "verdict": "holds" if ok else "does not hold",
            "rule": "holds iff every student's median step time is below the teacher's (same run device)"}


def claims_markdown(df: pd.DataFrame, size_rows: list[dict], paper_df: pd.DataFrame, setting_note: str,
                    paper_yaml: str | os.PathLike = BKSDM_YAML) -> str:
    rows = [size_claim(size_rows, paper_df, paper_yaml), _ordering_claim(df), _speed_claim(df)]
    frame = pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS).fillna({"band": "— (own rule)"})
    return "\n".join(["# BK-SDM: claims checked", "", f"Setting (ours): {setting_note}.", "",
                      "- Sizes are judged against the bands beside the paper's numbers (reports/paper/"
                      "bksdm.yaml): *within band*, *better* (smaller) or *worse*; the other claims are "
                      "about our own numbers and keep their rules.", "",
                      frame.to_markdown(index=False, disable_numparse=True), ""])


def write_outputs(df: pd.DataFrame, csv_path, md_path, claims_path, *, labels, setting_note: str,
                  paper_note: str, size_rows: list[dict], paper_df: pd.DataFrame) -> None:
    write_text(csv_path, df.to_csv(index=False, float_format="%.10g"))
    write_text(md_path, table_markdown(df, labels=labels, setting_note=setting_note, paper_note=paper_note))
    write_text(claims_path, claims_markdown(df, size_rows, paper_df, setting_note))


def pareto_plot(df: pd.DataFrame, png_path: str | os.PathLike, svg_path: str | os.PathLike, *,
                labels: Mapping[str, str], title: str) -> None:
    """FID against U-Net step time (ours) and against GMACs (paper), one point per model."""
    fig, (ours_ax, paper_ax) = plt.subplots(1, 2, figsize=(10, 4))
    ours_ax.plot(df["ours_step_ms"], df["ours_fid"], "o", color="C0")
    paper_ax.plot(df["paper_gmacs"], df["paper_fid"], "s", color="C1")
    for _, row in df.iterrows():
        ours_ax.annotate(row["variant"], (row["ours_step_ms"], row["ours_fid"]), textcoords="offset points", xytext=(4, 4))
        paper_ax.annotate(row["variant"], (row["paper_gmacs"], row["paper_fid"]), textcoords="offset points", xytext=(4, 4))
    ours_ax.set(xlabel="ours: U-Net step (ms, median)", ylabel=f"ours: {_label(labels, 'fid')}", title="ours")
    paper_ax.set(xlabel="paper: U-Net GMACs at 512 px", ylabel="paper: FID (MS-COCO 30K)", title="paper")
    wrapped_title(fig, title, fontsize=8)
    save_png_svg(fig, png_path, svg_path)
