"""Distill SD XL report: an SDXL-shaped teacher and its small_sd_xl / tiny_sd_xl students
(diffengine DistillSDXL), size beside quality and speed.

Ours: the embedded suite's SDXL-shaped class-prompt U-Nets (or a paper config's), sizes counted
from their configs with BK-SDM's counter (thop's convention, diffrepro.models.bksdm.unet_size),
FID / CLIP score from the scorer, per-step latency from the timing job. Reference: SDXL-base's
U-Net and its two students at 1024 px counted from the configs (diffengine publishes no size,
FID or CLIP numbers for them)."""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import pandas as pd

from diffrepro.io import write_text
from diffrepro.report import bands
from diffrepro.report.paper import PAPER_DIR
from diffrepro.report.format import fmt as _fmt, label as _label

VARIANT_ORDER = ("teacher", "small_sd_xl", "tiny_sd_xl")
DISTILL_SDXL_YAML = PAPER_DIR / "distill_sdxl.yaml"  # the reference sizes and their band
CLAIM_COLUMNS = ["claim", "paper_value", "ours_value", "band", "verdict", "rule"]


def _our_row(record: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    metrics, timing = record["metrics"], record["timing"]
    return {
        "variant": model["variant"], "model": model["model"],
        "ours_params_m": model["params_m"], "ours_gmacs": model["gmacs"],
        "ours_fid": float(metrics["fid"]), "ours_fid_se": float(metrics["fid_bootstrap_se"]),
        "ours_class_accuracy": float(metrics.get("class_accuracy", math.nan)),
        "ours_clip_score": float(metrics.get("clip_score", math.nan)),
        "ours_step_ms": 1000 * float(timing["per_step_forward_s"]["model"]),
        "ours_time_s": float(timing["median_s"]),
    }


def build_table(records: Iterable[Mapping[str, Any]], models: Mapping[str, Mapping[str, Any]],
                paper_df: pd.DataFrame | None) -> pd.DataFrame:
    """One row per model; `models` maps a method to {model, variant, params_m, gmacs}."""
    ours = pd.DataFrame([_our_row(r, models[r["method"]]) for r in records])
    if ours.empty or "teacher" not in set(ours["variant"]):
        raise ValueError("the Distill SD XL table needs the teacher's record (variant 'teacher')")
    if ours["variant"].duplicated().any():
        raise ValueError(f"more than one model per variant: {sorted(ours['variant'])}")
    ours["_order"] = [VARIANT_ORDER.index(v) for v in ours["variant"]]
    ours = ours.sort_values("_order", ignore_index=True).drop(columns="_order")
    teacher = ours.iloc[0]
    ours["ours_params_ratio"] = ours["ours_params_m"] / teacher["ours_params_m"]
    ours["ours_step_speedup"] = teacher["ours_step_ms"] / ours["ours_step_ms"]
    ours["ours_fid_vs_teacher"] = ours["ours_fid"] - teacher["ours_fid"]
    if paper_df is None:
        return ours
    paper = paper_df.rename(columns={c: f"paper_{c}" for c in paper_df.columns if c != "variant"})
    paper["paper_params_ratio"] = paper["paper_params_m"] / float(
        paper.loc[paper["variant"] == "teacher", "paper_params_m"].iloc[0])
    return ours.merge(paper, on="variant", how="left")


def table_markdown(df: pd.DataFrame, *, labels: Mapping[str, str], setting_note: str, paper_note: str) -> str:
    fid = _label(labels, "fid")
    columns = {
        "model": [f"{v} ({m})" for v, m in zip(df["variant"], df["model"])],
        "ours: U-Net params (M)": [_fmt(v, ".4g") for v in df["ours_params_m"]],
        "ours: MACs (M)": [_fmt(1000 * v, ".4g") for v in df["ours_gmacs"]],
        "ours: params vs teacher": [_fmt(v, ".0%") for v in df["ours_params_ratio"]],
        f"ours: {fid} ± SE": [f"{_fmt(f, '.2f')} ± {_fmt(s, '.2f')}" for f, s in zip(df["ours_fid"], df["ours_fid_se"])],
        "ours: ΔFID vs teacher": [_fmt(v, "+.2f") for v in df["ours_fid_vs_teacher"]],
        f"ours: {_label(labels, 'class_accuracy')}": [_fmt(v, ".3f") for v in df["ours_class_accuracy"]],
        "ours: CLIP score": [_fmt(v, ".4f") for v in df["ours_clip_score"]],
        "ours: U-Net step (ms)": [_fmt(v, ".3g") for v in df["ours_step_ms"]],
        "ours: step speed-up vs teacher": [_fmt(v, ".2f") + "×" for v in df["ours_step_speedup"]],
        "ours: time per image (s)": [_fmt(v, ".3g") for v in df["ours_time_s"]],
    }
    if "paper_params_m" in df:
        columns["SDXL-base at 1024 px: params (M)"] = [_fmt(v, ".1f") for v in df["paper_params_m"]]
        columns["SDXL-base at 1024 px: params vs teacher"] = [_fmt(v, ".0%") for v in df["paper_params_ratio"]]
    return "\n".join([
        "# Distill SD XL: block-removed, distilled SDXL U-Nets against their teacher", "",
        f"- **ours**: {setting_note}. Sizes counted from the U-Net configs with BK-SDM's counter "
        "(thop: convolutions, linear layers and LayerNorm), for our input size; step = one guided "
        "U-Net pass (batch of 2: conditional and unconditional).",
        f"- **reference**: {paper_note or 'none'}.",
        "- diffengine publishes no FID or CLIP numbers for small_sd_xl / tiny_sd_xl: quality has no "
        "published column.", "",
        pd.DataFrame(columns).to_markdown(index=False, disable_numparse=True), ""])


def size_claim(reproduced: list[dict], paper_df: pd.DataFrame,
               paper_yaml: str | os.PathLike = DISTILL_SDXL_YAML) -> dict[str, str]:
    """SDXL-base and its students' sizes computed from the configs against the reference, each
    judged against the band in `paper_yaml`; a smaller U-Net is the better side."""
    published = {row["variant"]: row for _, row in paper_df.iterrows()}
    pairs = [(r, published["teacher" if r["name"] == "sdxl-base" else r["name"]]) for r in reproduced]
    band = bands.band_for(paper_yaml, "params_m")
    found = [bands.verdict(r["params_m"], p["params_m"], band, higher_is_better=False) for r, p in pairs]
    return {"claim": "U-Net parameters of SDXL-base / small_sd_xl / tiny_sd_xl",
            "paper_value": " / ".join(f"{p['params_m']:.1f} M" for _, p in pairs),
            "ours_value": " / ".join(f"{r['params_m']:.1f} M" for r, _ in pairs),
            "band": f"params_m: {band.text()}",
            "verdict": bands.combined(found),
            "rule": ("computed from the configs with no weights; every number against the band, "
                     "the claim is worse if any is worse, else better if any is better (smaller)")}


def _speed_claim(df: pd.DataFrame) -> dict[str, str]:
    steps = list(df["ours_step_ms"])
    ok = all(s < steps[0] for s in steps[1:])
    return {"claim": "every student's U-Net step is faster than the teacher's",
            "paper_value": "(not published)",
            "ours_value": " / ".join(_fmt(v, ".3g") for v in steps) + " ms per step",
            "verdict": "holds" if ok else "does not hold",
            "rule": "holds iff every student's median step time is below the teacher's (same run device)"}


def claims_markdown(df: pd.DataFrame, size_rows: list[dict], paper_df: pd.DataFrame | None, setting_note: str) -> str:
    rows = ([size_claim(size_rows, paper_df)] if paper_df is not None else []) + [_speed_claim(df)]
    frame = pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS).fillna({"band": "— (own rule)"})
    return "\n".join(["# Distill SD XL: claims checked", "", f"Setting (ours): {setting_note}.", "",
                      frame.to_markdown(index=False, disable_numparse=True), ""])


def write_outputs(df: pd.DataFrame, csv_path, md_path, claims_path, *, labels, setting_note: str,
                  paper_note: str, size_rows: list[dict], paper_df: pd.DataFrame | None) -> None:
    write_text(csv_path, df.to_csv(index=False, float_format="%.10g"))
    write_text(md_path, table_markdown(df, labels=labels, setting_note=setting_note, paper_note=paper_note))
    write_text(claims_path, claims_markdown(df, size_rows, paper_df, setting_note))


def pareto_plot(df: pd.DataFrame, png_path, svg_path, *, labels: Mapping[str, str], title: str) -> None:
    """FID against U-Net step time (ours), one point per model (no published quality to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrepro.report.figures import save_png_svg, wrapped_title

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(df["ours_step_ms"], df["ours_fid"], "o", color="C0")
    for _, row in df.iterrows():
        ax.annotate(row["variant"], (row["ours_step_ms"], row["ours_fid"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="ours: U-Net step (ms, median)", ylabel=f"ours: {_label(labels, 'fid')}")
    wrapped_title(fig, title, fontsize=8)
    save_png_svg(fig, png_path, svg_path)
