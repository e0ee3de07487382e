"""T-Stitch with ControlNet (NVlabs/T-Stitch sdxl_canny.py / sdxl_depth.py / sdxl_pose.py, which
publish images, not numbers): the Pareto table of the ratio sweep with the control fidelity
beside it, the mean edge IoU of each image's control map and the generated image."""

from __future__ import annotations

from . import register_table_kind
from .pareto import figure  # the same Pareto plot as the pareto kind's

EDGE_IOU = "edge IoU with the control map (mean)"


def _edge_iou(record) -> float:
    return float(record.get("control", {}).get("edge_iou", {}).get("mean", float("nan")))


def build(job) -> None:
    from ...io import write_text
    from .. import pareto
    from ..format import fmt

    records = job.records
    table = pareto.build_table(records, job.methods)
    iou = {(r["method"], r["setting"]): _edge_iou(r) for r in records}
    table["edge_iou"] = [iou[(m, s)] for m, s in zip(table["method"], table["setting"])]
    title = f"{job.name}: T-Stitch inside diffusers' ControlNet pipeline, per ratio"
    write_text(job.outputs["csv"], table.to_csv(index=False, float_format="%.10g"))
    frame = pareto._markdown_frame(table, job.labels())
    frame.insert(frame.columns.get_loc("NFE (per model)"), EDGE_IOU, [fmt(v, ".3f") for v in table["edge_iou"]])
    write_text(job.outputs["md"], "\n".join([
        f"# {title}", "", f"- **ours**: {job.setting_note}.",
        "- One row per setting (r: the small U-Net's share of the steps; s: controlnet_conditioning_scale, "
        "0 = control off). The ControlNet runs at every step and its residuals go to the U-Net of the step. "
        f"{EDGE_IOU}: per image, IoU of the Sobel edges of its control digit and of the generated digit. "
        "Speed-up against the row's reference (r = 0, s = 1); NFE counts ControlNet calls too. "
        "T-Stitch publishes images for ControlNet, no numbers: nothing to compare with.", "",
        frame.to_markdown(index=False, disable_numparse=True), ""]))
    write_text(job.outputs["claims"], pareto.claims_markdown(table, title=title, setting_note=job.setting_note))


register_table_kind(
    "tstitch_controlnet",
    summary="T-Stitch in a ControlNet pipeline: FID, CLIP score, time and control fidelity (edge IoU) per ratio",
    build=build,
    figures={"pareto": figure},
    one_method=True,
)
