"""diffusers' cache hooks on our DiT (issue 20): the DiT is run as diffusers'
DiTTransformer2DModel (diffrepro.models.dit_diffusers, equal outputs up to float rounding) so
that diffusers.hooks can attach to its transformer blocks. Each hook is attached for one
sampling call and removed after it (also after an error): every call starts from a fresh cache.

- Pyramid Attention Broadcast: self-attention reused for `skip - 1` of every `skip` steps while
  the timestep is inside the range (diffrepro.t2i.caches, the SD baseline's context manager);
- TaylorSeer: after warm-up steps, a full step every `cache_interval` steps and Taylor forecasts
  of the attention and feed-forward outputs in between;

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

import torch

from .diffusion.guidance import GuidedDenoiser

_converted: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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


class _Timestep:
    """The timestep of the transformer's current call (PAB's current_timestep_callback)."""

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.value = float(torch.as_tensor(t).flatten()[0])

    def __call__(self):
        return self.value


@contextlib.contextmanager
def cached(denoiser: GuidedDenoiser, kind: str, knobs: dict):
    """A guided denoiser over DiTTransformer2DModel with the `kind` cache attached ("off": none)."""
    from .t2i.caches import cache_context, remove_hook_everywhere

    if not isinstance(denoiser, GuidedDenoiser):  # timing's constant stand-in: the loop alone, no model
        yield denoiser
        return
    guided = diffusers_denoiser(denoiser)
    transformer = guided.model.transformer
    names, tracker = [], None
    try:
        if kind == "pab":
            from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
            from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

            tracker = _Timestep(transformer)
            apply_pyramid_attention_broadcast(transformer, PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=knobs["skip"],
                spatial_attention_timestep_skip_range=(knobs["timestep_low"], knobs["timestep_high"]),
                current_timestep_callback=tracker))
            names = [_PYRAMID_ATTENTION_BROADCAST_HOOK]
        elif kind == "taylorseer":
            from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
            from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

            from .t2i.caches import UNET_TAYLORSEER_MODULES

            # diffusers' default patterns (`^transformer_blocks.*attn`, fullmatch) miss DiT's
            # `attn1` and hook nothing: the attention and feed-forward modules of every block,
            # the features TaylorSeer forecasts in DiT (Shenyi-Z/TaylorSeer: attn and mlp)
            apply_taylorseer_cache(transformer, TaylorSeerCacheConfig(
                cache_interval=knobs["cache_interval"], disable_cache_before_step=knobs["warmup_steps"],
                max_order=knobs["max_order"], taylor_factors_dtype=transformer.dtype,
                cache_identifiers=UNET_TAYLORSEER_MODULES))
            names = [_TAYLORSEER_CACHE_HOOK]
        elif kind != "off":
            raise ValueError(f"unknown DiT cache {kind!r}")
        with cache_context(transformer, "cond_uncond"):
            yield guided
    finally:
        for name in names:
            remove_hook_everywhere(transformer, name)
        if tracker is not None:
            tracker.handle.remove()
