"""T-Stitch with DeepCache on the large U-Net: the small U-Net for the first steps
(diffrepro.t2i.stitch), then the large one with its deep features cached
(diffrepro.t2i.caches.deepcache), the two speed-ups composed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class TStitchDeepCacheSetting:
    ratio: float              # fraction of the steps given to the small U-Net (as tstitch_sd)
    cache_interval: int = 1   # DeepCache on the large U-Net; 1: off (plain T-Stitch)
    cache_branch_id: int = 0
    steps: int | None = None  # None: t2i.steps

    def __post_init__(self):
        from baselines.deepcache_sd import check_deepcache

        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"tstitch_deepcache_sd ratio must be in [0, 1], got {self.ratio}")
        check_deepcache(self, "tstitch_deepcache_sd")

    def reference(self) -> tuple[str, dict]:
        # the large pipeline alone with the same steps: T-Stitch-SD's r = 0
        return "tstitch_sd", {"ratio": 0.0, **({"steps": self.steps} if self.steps else {})}

    def id(self) -> str:
        name = f"r{self.ratio:g}-i{self.cache_interval}-b{self.cache_branch_id}"
        return f"{self.steps}-{name}" if self.steps else name


@register_method("tstitch_deepcache_sd", setting=TStitchDeepCacheSetting, roles=("small", "large"),
                 family="pipeline")
def tstitch_deepcache_sd(pipeline, unets, call, setting: TStitchDeepCacheSetting) -> MethodOutput:
    """T-Stitch, with DeepCache's helper on the large U-Net from its first step on."""
    from diffrepro.t2i.caches import deepcache
    from diffrepro.t2i.stitch import stitched

    with deepcache(unets["large"], pipeline.scheduler, setting.cache_interval, setting.cache_branch_id), \
            stitched(pipeline, unets["small"], setting.ratio) as (wrapper, call_kwargs):
        samples = call(**call_kwargs)
    return MethodOutput(samples, Counter(wrapper.calls))
