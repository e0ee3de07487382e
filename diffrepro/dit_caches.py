"""diffusers' cache hooks on our DiT (issue 20): the DiT is run as diffusers'
DiTTransformer2DModel (diffrepro.models.dit_diffusers, equal outputs up to float rounding) so
that diffusers.hooks can attach to its transformer blocks. Each hook is attached for one
sampling call and removed after it (also after an error): every call starts from a fresh cache.

- Pyramid Attention Broadcast: self-attention reused for `skip - 1` of every `skip` steps while
  the timestep is inside the range (diffrepro.t2i.caches, the SD baseline's context manager);
- TaylorSeer: after warm-up steps, a full step every `cache_interval` steps and Taylor forecasts
  of the attention and feed-forward outputs in between (the SD baseline's context manager too).

DiT guides with one [x; x] batch per step, so the hooks see one call per step, in one cache
context ("cond_uncond"); DiTTransformer2DModel is no CacheMixin, so the mixin's context manager
is applied to it directly (diffrepro.t2i.caches.cache_context), as for the U-Net. MagCache needs its
per-model magnitude ratios from a calibration run and FasterCache is written for video
latents: neither is here. FirstBlockCache attaches too, but decides for the whole batch at
once (the first block's mean residual change over the batch), so an image's sample would depend
on the images beside it in its batch; the harness keeps samples independent of the batch.
"""

from __future__ import annotations

import contextlib
import weakref

from .diffusion.guidance import GuidedDenoiser

_converted: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# What the GPU check times of each DiT cache baseline (diffrepro.gpu_check): its off first (the
# configured baseline, no hook), then the knob values of the embedded dit_baselines table.
GPU_CHECK_SETTINGS = {"pab_dit": [{"skip": 1}, {"skip": 2}, {"skip": 3}],
                      "taylorseer_dit": [{"cache_interval": 1}, {"cache_interval": 2}, {"cache_interval": 3}]}


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
    elif kind == "off":
        attached = contextlib.nullcontext()
    else:
        raise ValueError(f"unknown DiT cache {kind!r}")
    with attached:
        yield guided
