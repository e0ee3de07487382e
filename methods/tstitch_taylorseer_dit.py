"""T-Stitch with TaylorSeer on the large DiT: the small DiT for the first r of the trajectory
(methods/tstitch.py's rule), then the large one, run as diffusers' DiTTransformer2DModel with
TaylorSeer's hook (diffrepro.dit_caches): the two speed-ups composed, as tstitch_deepcache_sd
composes T-Stitch with DeepCache on the SD U-Net. The hook counts the large model's own calls,
so its warm-up full steps are the first steps after the switch."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class TStitchTaylorSeerSetting:
    ratio: float              # fraction of the trajectory (by original timestep) given to the small DiT
    cache_interval: int = 1   # TaylorSeer on the large DiT; 1: off (T-Stitch with the converted large DiT)
    # (its baseline, methods.<name>.baseline: r = 0 with the cache off, the converted large DiT
    # alone, as the DiT cache baselines are measured against their own off)
    max_order: int = 1
    warmup_steps: int = 3

    def __post_init__(self):
        from baselines.taylorseer_sd import check_taylorseer

        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"tstitch_taylorseer_dit ratio must be in [0, 1], got {self.ratio}")
        check_taylorseer(self, "tstitch_taylorseer_dit")

    def id(self) -> str:
        return f"r{self.ratio:g}-i{self.cache_interval}-o{self.max_order}-w{self.warmup_steps}"


@register_method("tstitch_taylorseer_dit", setting=TStitchTaylorSeerSetting, roles=("small", "large"))
def tstitch_taylorseer_dit(models, sampler, noise, labels, generators,
                           setting: TStitchTaylorSeerSetting) -> MethodOutput:
    """T-Stitch, with TaylorSeer's hook on the large DiT from its first step on."""
    from diffrepro.diffusion.sampling import sample_loop
    from diffrepro.dit_caches import cached
    from methods.tstitch import uses_small_model

    kind = "off" if setting.cache_interval == 1 else "taylorseer"
    knobs = {"cache_interval": setting.cache_interval, "max_order": setting.max_order,
             "warmup_steps": setting.warmup_steps}
    small = models["small"]
    with cached(models["large"], kind, knobs) as large:
        def pick(i: int, t: int):
            return ("small", small) if uses_small_model(t, setting.ratio) else ("large", large)

        samples, steps = sample_loop(sampler, pick, noise, labels, generators)
    return MethodOutput(samples, steps)
