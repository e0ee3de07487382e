"""The SD-1.x pipeline's own loop with the DDIM scheduler the parallel samplers solve
(DDIMScheduler from the pipeline's config, as ParaTAA's parallel_sd.py swaps it in): their
reference, one U-Net call per step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baselines.sequential import SequentialSetting
from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class SequentialSDSetting(SequentialSetting):
    def reference(self) -> tuple[str, dict]:
        return "sequential_sd", {"steps": self.steps}


@register_method("sequential_sd", setting=SequentialSDSetting, roles=("model",), family="pipeline")
def sequential_sd(pipeline, unets, call, setting: SequentialSDSetting) -> MethodOutput:
    """Sequential DDIM in the SD pipeline: one U-Net call per step."""
    from diffrepro.t2i.parallel import ddim_scheduler, using_scheduler
    from diffrepro.t2i.step_count import count_unet_calls

    with using_scheduler(pipeline, ddim_scheduler(pipeline.scheduler)):
        samples, steps = count_unet_calls(call)
    n = len(samples)
    per_image = {"parallel_iterations": np.full(n, setting.steps, dtype=np.int64),
                 "network_evaluations": np.full(n, setting.steps, dtype=np.int64),
                 "converged": np.ones(n, dtype=bool)}
    return MethodOutput(samples, steps, per_image)
