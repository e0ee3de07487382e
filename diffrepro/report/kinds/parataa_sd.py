"""ParaTAA and Picard inside a diffusers SD pipeline (methods/parataa_sd.py): the parataa
table, plots and claims over sequential_sd / picard_sd / parataa_sd runs, with CLIP score."""

from __future__ import annotations

from . import register_table_kind
from .parataa import build, convergence, pareto

register_table_kind(
    "parataa_sd",
    summary="ParaTAA and Picard inside the SD pipeline against its sequential DDIM: iterations, NFE, error, FID/CLIP, time",
    build=build,
    figures={"pareto": pareto, "convergence": convergence},
    paper="parataa",
    targets={"reproduce_parataa_sd_table": lambda table: True},
    captions={"convergence": ("Convergence of the parallel samplers in the SD pipeline (``{table}``): median "
                              "largest-step residual against parallel iteration, one panel per step count.")},
    groups={"convergence": "Convergence"},
)
