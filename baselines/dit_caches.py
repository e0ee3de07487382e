"""diffusers' cache hooks on the DiT (diffrepro.dit_caches): Pyramid Attention Broadcast,
TaylorSeer and MagCache on T-Stitch's axes. Each method's default knob value is "off", the configured
baseline its speed-ups are measured against: the same diffusers DiT with no hook (our DiT up to
float rounding; T-Stitch's r = 0 runs our DiT itself)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffrepro.methods import MethodOutput, check_int, register_method


@dataclass(frozen=True)
class PABDiTSetting:
    skip: int = 1             # self-attention computed every `skip` steps; 1: every step (off)
    timestep_low: int = 100   # broadcast only while timestep_low < t < timestep_high (diffusers' default range)
    timestep_high: int = 800

    def __post_init__(self):
        from baselines.pab_sd import check_timestep_range

        check_int("pab_dit", "skip", self.skip, 1)
        check_timestep_range(self, "pab_dit")

    def id(self) -> str:
        return f"s{self.skip}" + ("" if (self.timestep_low, self.timestep_high) == (100, 800)
                                  else f"-t{self.timestep_low}-{self.timestep_high}")


@dataclass(frozen=True)
class TaylorSeerDiTSetting:
    cache_interval: int = 1   # a full step every `cache_interval` steps; 1: every step (off)
    max_order: int = 1
    warmup_steps: int = 3

    def __post_init__(self):
        from baselines.taylorseer_sd import check_taylorseer

        check_taylorseer(self, "taylorseer_dit")

    def id(self) -> str:
        return f"i{self.cache_interval}-o{self.max_order}-w{self.warmup_steps}"


@dataclass(frozen=True)
class MagCacheDiTSetting:
    threshold: float = 0.0        # accumulated ratio error allowed between full steps; 0: every step full (off)
    max_skip_steps: int = 3       # K, steps skipped in a row at most (diffusers' default)
    retention_ratio: float = 0.2  # the first fraction of the steps is never skipped (diffusers' default)

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"magcache_dit threshold must be a finite number >= 0, got {self.threshold!r}")
        check_int("magcache_dit", "max_skip_steps", self.max_skip_steps, 1)
        if isinstance(self.retention_ratio, bool) or not 0.0 <= self.retention_ratio <= 1.0:
            raise ValueError(f"magcache_dit retention_ratio must be in [0, 1], got {self.retention_ratio!r}")

    def id(self) -> str:
        return f"e{self.threshold:g}-k{self.max_skip_steps}-r{self.retention_ratio:g}"


def _sample(models, sampler, noise, labels, generators, kind: str, knobs: dict, given_s: float = 0.0) -> MethodOutput:
    from diffrepro.diffusion.sampling import sample_loop
    from diffrepro.dit_caches import cached

    with cached(models["model"], kind, knobs) as guided:
        samples, steps = sample_loop(sampler, lambda i, t: ("model", guided), noise, labels, generators)
    return MethodOutput(samples, steps, given_s=given_s)


@register_method("pab_dit", setting=PABDiTSetting, roles=("model",))
def pab_dit(models, sampler, noise, labels, generators, setting: PABDiTSetting) -> MethodOutput:
    """Pyramid Attention Broadcast (diffusers' hook) on the DiT through DiTTransformer2DModel."""
    off = setting.skip == 1
    return _sample(models, sampler, noise, labels, generators, "off" if off else "pab",
                   {"skip": setting.skip, "timestep_low": setting.timestep_low, "timestep_high": setting.timestep_high})


@register_method("taylorseer_dit", setting=TaylorSeerDiTSetting, roles=("model",))
def taylorseer_dit(models, sampler, noise, labels, generators, setting: TaylorSeerDiTSetting) -> MethodOutput:
    """TaylorSeer (diffusers' hook) on the DiT through DiTTransformer2DModel."""
    off = setting.cache_interval == 1
    return _sample(models, sampler, noise, labels, generators, "off" if off else "taylorseer",
                   {"cache_interval": setting.cache_interval, "max_order": setting.max_order,
                    "warmup_steps": setting.warmup_steps})


@register_method("magcache_dit", setting=MagCacheDiTSetting, roles=("model",))
def magcache_dit(models, sampler, noise, labels, generators, setting: MagCacheDiTSetting) -> MethodOutput:
    """MagCache (diffusers' hook) on the DiT through DiTTransformer2DModel, with the DiT's own
    calibrated magnitude ratios."""
    from diffrepro.diffusion.guidance import GuidedDenoiser
    from diffrepro.dit_caches import magcache_ratios

    if setting.threshold == 0 or not isinstance(models["model"], GuidedDenoiser):  # off, or timing's stand-in
        return _sample(models, sampler, noise, labels, generators, "off", {})
    ratios, calibration_s = magcache_ratios(models["model"], sampler, tuple(noise.shape[1:]))
    return _sample(models, sampler, noise, labels, generators, "magcache",
                   {"threshold": setting.threshold, "max_skip_steps": setting.max_skip_steps,
                    "retention_ratio": setting.retention_ratio, "mag_ratios": ratios}, given_s=calibration_s)
