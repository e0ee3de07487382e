"""A distilled student's U-Net config from its teacher's, for every block-removal recipe:
BK-SDM's base / small / tiny (diffrepro.models.bksdm_config) and Distill SD XL's small_sd_xl /
tiny_sd_xl (diffrepro.models.distill_sdxl_config). Plain Python (no torch)."""

from __future__ import annotations

from . import bksdm_config, distill_sdxl_config


def student_config(teacher_config: dict, variant: str) -> dict:
    if distill_sdxl_config.is_distill_sdxl_variant(variant):
        return distill_sdxl_config.student_config(teacher_config, variant)
    return bksdm_config.student_config(teacher_config, variant)
