"""ParaTAA and Picard inside a diffusers SD pipeline (methods/parataa_sd.py): the parataa
table, plots and claims over sequential_sd / picard_sd / parataa_sd runs, with CLIP score."""

from __future__ import annotations

from . import register_table_kind
from .parataa import build, convergence, pareto


def check(config: dict, table: str, entry: dict) -> None:
    """A variation or warm start over a prompt list (paper configs) must name the prompt whose
    trajectory it reuses: the next class's exists only for the embedded class prompts."""
    from ...config import ConfigError, method_settings
    from ...methods import get_method

    if not config.get("t2i", {}).get("prompts"):
        return
    for method in entry["methods"]:
        if "source_prompt" not in get_method(method).setting_type.__dataclass_fields__:
            continue
        for values in method_settings(config, method).values():
            if (values.get("variation_steps") or values.get("warm_start")) and not values.get("source_prompt"):
                raise ConfigError(
                    f"config key methods.{method}.grid: setting {values} starts from another prompt's "
                    f"trajectory, but t2i.prompts is a prompt list (no next class); add source_prompt: "
                    f"[<prompt>] to that grid entry (parallel_sd_winit.py's prompt1, e.g. a cute dog)")

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
    check=check,
)
