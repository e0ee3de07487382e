"""Training-free accelerations of a diffusers U-Net, each from its own library, attached for one
pipeline call and removed after it (also after an error), so the U-Net is plain again:

- DeepCache (pip package `DeepCache`, its `DeepCacheSDHelper`): the deep branch of the U-Net is
  computed every `cache_interval` steps, the shallow branch `cache_branch_id` every step.
- ToMe for SD (pip package `tomesd`, `apply_patch` / `remove_patch`): token merging in the
  U-Net's transformer blocks.
- diffusers' cache hooks (`diffusers.hooks.apply_*`): Pyramid Attention Broadcast and
  TaylorSeer attach to a UNet2DConditionModel; FasterCache, FirstBlockCache and MagCache do not
  (see UNSUPPORTED_HOOKS), and UNet2DConditionModel has no `enable_cache` (no CacheMixin).

Each hook keeps state across the steps of one call; attaching per call starts every call from
a fresh state, as a pipeline's own `cache_context` would.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

# What diffusers (0.42) does when these hooks meet a UNet2DConditionModel (tests/test_sd_baselines.py).
UNSUPPORTED_HOOKS = {
    "FasterCache": "its denoiser hook reshapes the guidance difference as 5-D video latents (B, C, F, H, W) "
                   "and fails on the U-Net's 4-D output",
    "FirstBlockCache": "finds no top-level transformer-block ModuleList (the U-Net has down/mid/up blocks) "
                       "and fails before attaching",
    "MagCache": "finds no top-level transformer blocks, attaches nothing and only logs it",
}


# -------------------------------------------------------------------------------------------
# DeepCache
# -------------------------------------------------------------------------------------------

BRANCHES_PER_STAGE = 3  # DeepCacheSDHelper: branch id = 3 * down stage + layer (2 pairs + downsampler)


@contextlib.contextmanager
def deepcache(unet, scheduler, cache_interval: int, cache_branch_id: int):
    """DeepCacheSDHelper on `unet` (the pipeline's, or the large U-Net of T-Stitch alone).

    The helper reads only `.unet` and `.scheduler` of what it is given, so it gets exactly these:
    its step counter then starts at the first call of this U-Net, and a U-Net that first runs
    mid-trajectory (after T-Stitch's small U-Net) starts with a full pass. The helper numbers
    steps by the timestep's first position in scheduler.timesteps, so PNDM's repeated timestep
    (skip_prk_steps) counts as one step (DeepCache/extension/deepcache.py, `wrap_unet_forward`)."""
    from DeepCache import DeepCacheSDHelper

    stages = len(unet.down_blocks)
    if cache_branch_id // BRANCHES_PER_STAGE >= stages:
        raise ValueError(f"DeepCache cache_branch_id {cache_branch_id} is past this U-Net's {stages} down "
                         f"stages (branch ids 0..{BRANCHES_PER_STAGE * stages - 1})")
    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=unet, scheduler=scheduler))
    helper.set_params(cache_interval=cache_interval, cache_branch_id=cache_branch_id)
    plain = [m for m in unet.modules() if "forward" not in vars(m)]
    helper.enable()
    try:
        yield helper
    finally:
        helper.disable()
        # disable() puts back bound methods as instance attributes: drop them, the class's own
        # forward is the same function
        for module in plain:
            vars(module).pop("forward", None)


# -------------------------------------------------------------------------------------------
# ToMe for SD
# -------------------------------------------------------------------------------------------

TOME_SEED = 0  # ToMe's random destination tokens: one fixed stream per pipeline call


@contextlib.contextmanager
def token_merging(unet, ratio: float, max_downsample: int = 1, use_rand: bool = True):
    """tomesd.apply_patch on the U-Net. tomesd's diffusers block rewrites BasicTransformerBlock's
    forward for SD-1.x's plain layer-norm blocks; other block types are refused here.

    tomesd forks the global torch RNG for its random destination tokens; we give it a generator
    seeded with TOME_SEED at each call instead: one draw per block call, shared by the batch, so
    an image's sample does not depend on its batch or on earlier calls."""
    import tomesd
    from diffusers.models.attention import BasicTransformerBlock

    odd = sorted({b.norm_type for b in unet.modules() if isinstance(b, BasicTransformerBlock)} - {"layer_norm"})
    if odd:
        raise ValueError(f"ToMe for SD patches SD-1.x's layer-norm transformer blocks only; this U-Net has {odd}")
    tomesd.apply_patch(unet, ratio=ratio, max_downsample=max_downsample, use_rand=use_rand)
    unet._tome_info["args"]["generator"] = torch.Generator(device=unet.device).manual_seed(TOME_SEED)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)


# -------------------------------------------------------------------------------------------
# diffusers' cache hooks
# -------------------------------------------------------------------------------------------

class TimestepTracker:
    """The timestep of the U-Net's current call (PAB's `current_timestep_callback`; SD's pipeline
    has no `current_timestep` of its own): a forward pre-hook on the U-Net."""

    def __init__(self, unet):
        self.timestep = None
        self.handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.timestep = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)

    def __call__(self) -> float:
        return self.timestep

    def remove(self):
        self.handle.remove()


@contextlib.contextmanager
def cache_context(module, name: str):
    """CacheMixin's cache context on a model that is no CacheMixin. diffusers caches the list of
    a registry's child registries on first use and never refreshes it, so on a model whose hooks
    changed since (another baseline attached earlier in the same job) the new hooks would get no
    context: the cached lists are dropped first."""
    from diffusers.hooks import HookRegistry
    from diffusers.models.cache_utils import CacheMixin

    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            registry._child_registries_cache = None
    with CacheMixin.cache_context(module, name):
        yield


def remove_hook_everywhere(unet, name: str) -> None:
    from diffusers.hooks import HookRegistry

    for module in unet.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry) and name in registry.hooks:
            registry.remove_hook(name, recurse=False)


@contextlib.contextmanager
def pyramid_attention_broadcast(unet, spatial_skip: int, cross_skip: int, timestep_range: tuple[int, int]):
    """diffusers' apply_pyramid_attention_broadcast: self- and cross-attention outputs reused for
    `*_skip - 1` of every `*_skip` calls while timestep_range[0] < t < timestep_range[1]
    (1 = computed every step)."""
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
    from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

    tracker = TimestepTracker(unet)
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=spatial_skip, spatial_attention_timestep_skip_range=tuple(timestep_range),
        cross_attention_block_skip_range=cross_skip, cross_attention_timestep_skip_range=tuple(timestep_range),
        current_timestep_callback=tracker)
    try:
        apply_pyramid_attention_broadcast(unet, config)
        yield config
    finally:
        remove_hook_everywhere(unet, _PYRAMID_ATTENTION_BROADCAST_HOOK)
        tracker.remove()


# TaylorSeer's default patterns name top-level transformer blocks (`^transformer_blocks.*attn`)
# and match nothing in a U-Net; these are the U-Net's attention and feed-forward modules, the
# features TaylorSeer forecasts in DiT (Shenyi-Z/TaylorSeer: attn and mlp outputs per block).
UNET_TAYLORSEER_MODULES = [r".*transformer_blocks\.\d+\.(attn1|attn2|ff)"]


@contextlib.contextmanager
def taylorseer(unet, cache_interval: int, max_order: int, warmup_steps: int):
    """diffusers' apply_taylorseer_cache on the U-Net's attention and feed-forward modules: after
    `warmup_steps` full steps, a full step every `cache_interval` steps and Taylor forecasts of
    order `max_order` from the last full steps in between (1 = every step full). The factors are
    kept in the U-Net's dtype (the library's default, bfloat16, targets bf16 GPU models)."""
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

    config = TaylorSeerCacheConfig(cache_interval=cache_interval, disable_cache_before_step=warmup_steps,
                                   max_order=max_order, taylor_factors_dtype=unet.dtype,
                                   cache_identifiers=UNET_TAYLORSEER_MODULES)
    try:
        apply_taylorseer_cache(unet, config)
        # its state is kept per cache context, which CacheMixin models' pipelines set around each
        # call; SD's pipeline sets none and the U-Net has no CacheMixin: the mixin's own context
        # manager, one context for the batched conditional + unconditional call ("cond_uncond",
        # as diffusers' CogVideoX pipeline names it)
        with cache_context(unet, "cond_uncond"):
            yield config
    finally:
        remove_hook_everywhere(unet, _TAYLORSEER_CACHE_HOOK)
