"""DeepCache (Ma et al., CVPR 2024) in the text-to-image pipeline, through its pip package's
DeepCacheSDHelper (horseee/DeepCache, DeepCache/extension/deepcache.py): the U-Net's deep
features are recomputed every `cache_interval` steps and reused in between, the shallow branch
`cache_branch_id` runs every step."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, PlainPipelineReference, check_int, register_method


@dataclass(frozen=True)
class DeepCacheSetting(PlainPipelineReference):
    cache_interval: int = 1   # 1: every step full (off)
    cache_branch_id: int = 0  # 3 * down stage + layer; 0 = the shallowest branch (the paper's SD setting)
    steps: int | None = None  # None: t2i.steps

    def __post_init__(self):
        check_deepcache(self, "deepcache_sd")

    def id(self) -> str:
        name = f"i{self.cache_interval}-b{self.cache_branch_id}"
        return f"{self.steps}-{name}" if self.steps else name


def check_deepcache(setting, method: str) -> None:
    check_int(method, "cache_interval", setting.cache_interval, 1)
    if not (isinstance(setting.cache_branch_id, int) and 0 <= setting.cache_branch_id <= 11):
        raise ValueError(f"{method} cache_branch_id must be an integer in [0, 11] (3 per down stage, SD has 4), "
                         f"got {setting.cache_branch_id!r}")
    check_int(method, "steps", setting.steps, 1, optional=True)


@register_method("deepcache_sd", setting=DeepCacheSetting, roles=("model",), family="pipeline")
def deepcache_sd(pipeline, unets, call, setting: DeepCacheSetting) -> MethodOutput:
    """DeepCache's helper on the pipeline's U-Net: deep features reused between full steps."""
    from diffrepro.t2i.caches import deepcache
    from diffrepro.t2i.step_count import count_unet_calls

    with deepcache(pipeline.unet, pipeline.scheduler, setting.cache_interval, setting.cache_branch_id):
        samples, steps = count_unet_calls(call)
    return MethodOutput(samples, steps)
