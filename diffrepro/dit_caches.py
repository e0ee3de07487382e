"""diffusers' cache hooks on our DiT (issue 20): the DiT is run as diffusers'
DiTTransformer2DModel (diffrepro.models.dit_diffusers, equal outputs up to float rounding) so
that diffusers.hooks can attach to its transformer blocks. Each hook is attached for one
sampling call and removed after it (also after an error): every call starts from a fresh cache.

- Pyramid Attention Broadcast: self-attention reused for `skip - 1` of every `skip` steps while
  the timestep is inside the range (diffrepro.t2i.caches, the SD baseline's context manager);
- TaylorSeer: after warm-up steps, a full step every `cache_interval` steps and Taylor forecasts
  of the attention and feed-forward outputs in between (the SD baseline's context manager too);
- MagCache: a step's transformer blocks are skipped (their output is the input plus the last
  computed residual) while the accumulated error of the per-step residual magnitude ratios
  stays under a threshold, at most `max_skip_steps` in a row, never in the first
  `retention_ratio` of the steps. The ratios are the model's own, for its sampler: diffusers'
  calibration mode run once per model and sampler on a fixed batch (magcache_ratios), as the
  MagCache authors calibrate once per model on one sample; the paper treats them as given, so
  a call that calibrates reports the seconds as given (MethodOutput.given_s).

DiT guides with one [x; x] batch per step, so the hooks see one call per step, in one cache
context ("cond_uncond"); DiTTransformer2DModel is no CacheMixin, so the mixin's context manager
is applied to it directly (diffrepro.t2i.caches.cache_context), as for the U-Net. FasterCache
is written for video latents and fails on the DiT's 4-D output as on the U-Net's
(tests/test_dit_caches.py). FirstBlockCache attaches, but decides for the whole batch at once
(the first block's mean residual change over the batch), so an image's sample would depend on
the images beside it in its batch; the harness keeps samples independent of the batch.
MagCache's decisions depend on the step alone (the calibrated ratios are fixed), so they do not.
"""

from __future__ import annotations

import contextlib
import time
import weakref

import torch

from .diffusion.guidance import GuidedDenoiser

_converted: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# MagCache's ratios by DiT (eager, the torch.compile wrapper's own module) and sampling set-up
_mag_ratios: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# MagCache's calibration batch: fixed noise and labels, none of them an evaluated sample's
MAGCACHE_CALIBRATION = {"seed": 2**31 - 1, "images": 4}

# What the GPU check times of each DiT cache baseline (diffrepro.gpu_check): its off first (the
# configured baseline, no hook), then the knob values of the embedded dit_baselines table.
GPU_CHECK_SETTINGS = {"pab_dit": [{"skip": 1}, {"skip": 2}, {"skip": 3}],
                      "taylorseer_dit": [{"cache_interval": 1}, {"cache_interval": 2}, {"cache_interval": 3}],
                      "magcache_dit": [{"threshold": 0.0}, {"threshold": 0.02}, {"threshold": 0.06}]}


def diffusers_denoiser(denoiser: GuidedDenoiser) -> GuidedDenoiser:
    """The same guidance around the DiT converted to DiTTransformer2DModel (converted once per
    model: a timed run does not pay for the conversion after its warm-up)."""
    from .engines.flops import register_alias
    from .models.dit_diffusers import to_diffusers

    model = denoiser.model
    if model not in _converted:
        _converted[model] = to_diffusers(model)
        register_alias(model, _converted[model])  # its FLOPs count as the DiT's
    return GuidedDenoiser(_converted[model], denoiser.cfg_scale, denoiser.guided_channels, autocast=denoiser.autocast)


@contextlib.contextmanager
def cached(denoiser: GuidedDenoiser, kind: str, knobs: dict):
    """A guided denoiser over DiTTransformer2DModel with the `kind` cache attached ("off": none),
    through the SD baselines' own context managers (diffrepro.t2i.caches): they take any module
    with diffusers attention blocks. DiT has no cross-attention, so PAB's cross range is moot;
    TaylorSeer's U-Net patterns name DiT's `attn1` and `ff` too (diffusers' defaults miss `attn1`)."""
    from .t2i import caches

    if not isinstance(denoiser, GuidedDenoiser):  # timing's constant stand-in: the loop alone, no model
        yield denoiser
        return
    guided = diffusers_denoiser(denoiser)
    transformer = guided.model.transformer
    if kind == "pab":
        attached = caches.pyramid_attention_broadcast(transformer, knobs["skip"], 1,
                                                      (knobs["timestep_low"], knobs["timestep_high"]))
    elif kind == "taylorseer":
        attached = caches.taylorseer(transformer, knobs["cache_interval"], knobs["max_order"], knobs["warmup_steps"])
    elif kind == "magcache":
        attached = magcache(transformer, knobs)
    elif kind == "off":
        attached = contextlib.nullcontext()
    else:
        raise ValueError(f"unknown DiT cache {kind!r}")
    with attached:
        yield guided


def _sampler_key(sampler) -> tuple:
    """What MagCache's ratios depend on besides the model: the sampler and its timesteps."""
    return (type(sampler).__name__, tuple(int(t) for t in sampler.timesteps), getattr(sampler, "eta", None))


def magcache_ratios(denoiser: GuidedDenoiser, sampler, sample_shape: tuple[int, ...]) -> tuple[list[float], float]:
    """MagCache's per-step magnitude ratios of this DiT under this sampler and guidance, and the
    seconds this call spent calibrating (0 when known already). diffusers' calibration mode
    (MagCacheConfig(calibrate=True)) skips nothing and records mean(|r_t| / |r_t-1|) over the
    tokens of the residual r_t = last block's output - first block's input, per step. Its hook
    prints the list and clears it at the last step; it is told one step more, so that the list
    stays in its state to be read."""
    from diffusers.hooks import MagCacheConfig
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

    from .diffusion.sampling import sample_loop
    from .t2i.caches import cache_context

    dit = getattr(denoiser.model, "_orig_mod", denoiser.model)
    device = next(dit.parameters()).device
    key = (_sampler_key(sampler), denoiser.cfg_scale, tuple(sample_shape), str(device), denoiser.autocast)
    known = _mag_ratios.setdefault(dit, {})
    if key in known:
        return known[key], 0.0
    began = time.perf_counter()
    guided = diffusers_denoiser(denoiser)
    transformer = guided.model.transformer
    seed, images = MAGCACHE_CALIBRATION["seed"], MAGCACHE_CALIBRATION["images"]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((images, *sample_shape), generator=g).to(device)
    labels = torch.randint(dit.num_classes, (images,), generator=g).to(device)
    generators = [torch.Generator(device).manual_seed(seed - 1 - i) for i in range(images)]
    steps = len(sampler.timesteps)
    with _attached_magcache(transformer, MagCacheConfig(calibrate=True, num_inference_steps=steps + 1)):
        with cache_context(transformer, "cond_uncond"), torch.no_grad():
            sample_loop(sampler, lambda i, t: ("model", guided), noise, labels, generators)
            tail = transformer.transformer_blocks[-1]._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK)
            ratios = [float(r) for r in tail.state_manager.get_state().calibration_ratios]
    if len(ratios) != steps:
        raise RuntimeError(f"MagCache calibration recorded {len(ratios)} ratios for {steps} steps")
    known[key] = ratios
    return ratios, time.perf_counter() - began


@contextlib.contextmanager
def _attached_magcache(transformer, config):
    from diffusers.hooks import apply_mag_cache
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

    from .t2i.caches import remove_hook_everywhere

    try:
        apply_mag_cache(transformer, config)
        yield
    finally:
        remove_hook_everywhere(transformer, _MAG_CACHE_LEADER_BLOCK_HOOK)
        remove_hook_everywhere(transformer, _MAG_CACHE_BLOCK_HOOK)


@contextlib.contextmanager
def magcache(transformer, knobs: dict):
    """diffusers' apply_mag_cache with the calibrated ratios (knobs["mag_ratios"], one per step)."""
    from diffusers.hooks import MagCacheConfig

    from .t2i.caches import cache_context

    config = MagCacheConfig(threshold=knobs["threshold"], max_skip_steps=knobs["max_skip_steps"],
                            retention_ratio=knobs["retention_ratio"], num_inference_steps=len(knobs["mag_ratios"]),
                            mag_ratios=list(knobs["mag_ratios"]))
    with _attached_magcache(transformer, config), cache_context(transformer, "cond_uncond"):
        yield config
