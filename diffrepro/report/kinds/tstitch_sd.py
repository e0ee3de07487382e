"""T-Stitch inside a diffusers text-to-image pipeline (SD, SDXL, LCM figures): the same table
as the DiT ratio sweep, timed per image as the paper's SD figures."""

from __future__ import annotations

from . import register_table_kind
from .checks import check_paper_timing_batch
from .tstitch import build, pareto

register_table_kind(
    "tstitch_sd",
    summary="T-Stitch in a text-to-image pipeline: FID, CLIP score and time per ratio beside the paper's times",
    build=build,
    figures={"pareto": pareto},
    paper="tstitch",
    one_method=True,
    targets={"reproduce_tstitch_sd_table": lambda table: True},
    check=check_paper_timing_batch,
)
