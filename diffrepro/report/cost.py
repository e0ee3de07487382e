"""Cost beside time, for every sampling table: per (method, setting) the network evaluations
per model, forward FLOPs per image and their speed-up against the setting's reference run,
beside the wall-clock speed-up, p50 / p90 and throughput at the timed batch.

Everything comes from the timing records (diffrepro.timing, diffrepro.engines.flops); timing
files written before FLOPs were counted show dashes. These are timing-side columns: a kind's
own columns are untouched (table_md gets a section appended, CSVs that carry them add columns
at their end).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import pandas as pd

from .format import fmt, images

# the cost columns a kind's CSV may carry beside its own (cost_columns gives their values)
CSV_COLUMNS = ["gflops_per_image", "flops_speedup", "time_p50_s", "time_p90_s", "images_per_s"]


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def cost_columns(timing: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """CSV_COLUMNS of one timing record (NaN where it has none), names prefixed by `prefix`."""
    flops = timing.get("flops") or {}
    values = {
        "gflops_per_image": _num(flops.get("per_image")) / 1e9,
        "flops_speedup": _num(timing.get("flops_speedup_vs_baseline")),
        "time_p50_s": _num(timing.get("p50_s", timing.get("median_s"))),
        "time_p90_s": _num(timing.get("p90_s")),
        "images_per_s": _num(timing.get("images_per_s")),
    }
    return {prefix + key: value for key, value in values.items()}


def cost_frame(records: Iterable[Mapping[str, Any]], methods: list[str] | None = None) -> pd.DataFrame:
    """One row per record: method, setting, NFE per model, the CSV_COLUMNS, the wall-clock
    speed-up and the timed batch; in the table's method order, then by time."""
    rows = []
    for record in records:
        timing = record["timing"]
        steps = record.get("model_steps") or timing.get("model_steps") or {}
        reference = record.get("reference") or {}
        rows.append({
            "method": record["method"], "setting": record["setting"],
            "nfe": int(sum(steps.values())),
            "nfe_by_model": " ".join(f"{role}={n}" for role, n in sorted(steps.items())),
            **cost_columns(timing),
            "speedup": _num(timing.get("speedup_vs_baseline")),
            "batch_size": int(timing["batch_size"]),
            "reference": f"{reference.get('method', '')}/{reference.get('setting', '')}".strip("/"),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {m: i for i, m in enumerate(methods or dict.fromkeys(frame["method"]))}
    frame["_order"] = frame["method"].map(lambda m: order.get(m, len(order)))
    return frame.sort_values(["_order", "time_p50_s", "setting"], ignore_index=True).drop(columns="_order")


def _what_is_counted(records: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    for record in records:
        flops = record["timing"].get("flops")
        if flops:
            return flops["counted"], flops["not_counted"]
    return "", ""


def cost_markdown(records: list[Mapping[str, Any]], methods: list[str] | None = None) -> str:
    """The "Cost beside time" section appended to a sampling table's Markdown."""
    frame = cost_frame(records, methods)
    if frame.empty:
        return ""
    counted, not_counted = _what_is_counted(records)
    batches = sorted(set(frame["batch_size"]))
    cells = pd.DataFrame({
        "method": frame["method"], "setting": frame["setting"],
        "NFE (per model)": [f"{n} ({by})" for n, by in zip(frame["nfe"], frame["nfe_by_model"])],
        "GFLOPs / image": [fmt(v, ".4g") for v in frame["gflops_per_image"]],
        "FLOPs speed-up": [fmt(v, ".2f") + ("" if pd.isna(v) else "×") for v in frame["flops_speedup"]],
        "wall-clock speed-up": [fmt(v, ".2f") + ("" if pd.isna(v) else "×") for v in frame["speedup"]],
        "time (s): p50 / p90": [f"{fmt(m, '.3g')} / {fmt(p, '.3g')}"
                                for m, p in zip(frame["time_p50_s"], frame["time_p90_s"])],
        "images / s": [fmt(v, ".3g") for v in frame["images_per_s"]],
        "timed batch": [images(b) for b in frame["batch_size"]],
        "reference": frame["reference"],
    })
    lines = [
        "## Cost beside time", "",
        f"- Per setting, at the timed batch ({', '.join(images(b) for b in batches)}): network evaluations "
        "per image and model (NFE), forward FLOPs per image, FLOPs speed-up = reference FLOPs / setting "
        "FLOPs beside the wall-clock speed-up (median of side-by-side rounds), time p50 / p90 over the "
        "timed rounds, and throughput = timed batch / p50.",
    ]
    if counted:
        lines.append(f"- Counted: {counted}, on one run of each setting on its timed batch, after the timed "
                     f"rounds (timing unaffected). Not counted: {not_counted}.")
        given = [f"{r['method']} {r['setting']}" for r in records if (r["timing"].get("flops") or {}).get(
            "includes_given_inputs")]
        if given:
            lines.append(f"- FLOPs of {', '.join(given)} include the evaluations on inputs the paper treats as "
                         f"given (the warm start's trajectory), which their time leaves out.")
    else:
        lines.append("- FLOPs: not in these timing files (written before FLOPs were counted); rerun the timing.")
    return "\n".join(lines + ["", cells.to_markdown(index=False, disable_numparse=True), ""])
