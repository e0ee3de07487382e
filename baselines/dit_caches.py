"""diffusers' cache hooks on the DiT (diffrepro.dit_caches): Pyramid Attention Broadcast and
TaylorSeer on T-Stitch's axes. Each method's default knob value is "off", the configured
baseline its speed-ups are measured against: the same diffusers DiT with no hook (our DiT up to
float rounding; T-Stitch's r = 0 runs our DiT itself)."""

from __future__ import annotations

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


def _sample(models, sampler, noise, labels, generators, kind: str, knobs: dict) -> MethodOutput:
    from diffrepro.diffusion.sampling import sample_loop
    from diffrepro.dit_caches import cached

    with cached(models["model"], kind, knobs) as guided:
        samples, steps = sample_loop(sampler, lambda i, t: ("model", guided), noise, labels, generators)
    return MethodOutput(samples, steps)


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
