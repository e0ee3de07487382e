"""Our DiT as diffusers' DiTTransformer2DModel (diffrepro/models/dit_diffusers.py): equal outputs with
no cache attached, and which of diffusers' cache hooks then attach to it."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_dit
from diffrepro.models.dit_diffusers import to_diffusers

LABELS = torch.tensor([1, 3, 10, 7])  # 10: the null class of classifier-free guidance
TIMESTEPS = [999, 700, 400, 100, 0]


def trajectory(model, timestep=None):
    """A few denoiser calls along a made-up trajectory (the hooks count calls, not samplers)."""
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            if timestep is not None:
                timestep[0] = t
            out = model(x, torch.full((4,), t), LABELS)
            outs.append(out)
            x = x - 0.1 * out[:, :1]
    return torch.stack(outs)


@pytest.fixture(scope="module")
def dit():
    return tiny_dit(2, hidden=32, depth=2)


def test_converted_dit_gives_dits_outputs(dit):
    converted = to_diffusers(dit)
    assert type(converted.transformer).__name__ == "DiTTransformer2DModel"
    torch.testing.assert_close(trajectory(converted), trajectory(dit), atol=1e-6, rtol=1e-5)
    # diffusers' own timestep features (downscale_freq_shift 1) are not DiT's: the fix matters
    for block in converted.transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 1
    assert not torch.allclose(trajectory(converted), trajectory(dit), atol=1e-4)


def test_which_diffusers_hooks_attach_to_the_converted_dit(dit):
    from diffusers.hooks import (FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig,
                                 apply_first_block_cache, apply_pyramid_attention_broadcast, apply_taylorseer_cache)
    from diffusers.models.cache_utils import CacheMixin

    plain = trajectory(dit)
    assert not hasattr(to_diffusers(dit).transformer, "enable_cache")  # no CacheMixin here either
    timestep = [None]
    pab = to_diffusers(dit)
    apply_pyramid_attention_broadcast(pab.transformer, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: timestep[0]))
    assert not torch.allclose(trajectory(pab, timestep), plain, atol=1e-6)
    fbc = to_diffusers(dit)
    apply_first_block_cache(fbc.transformer, FirstBlockCacheConfig(threshold=10.0))  # reuse whenever it can
    with CacheMixin.cache_context(fbc.transformer, "cond"):
        assert not torch.allclose(trajectory(fbc), plain, atol=1e-6)
    # TaylorSeer's default patterns ("^transformer_blocks.*attn", re.fullmatch) do not match the
    # blocks' "attn1": attached by default, it changes nothing
    taylor = to_diffusers(dit)
    apply_taylorseer_cache(taylor.transformer, TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                                     taylor_factors_dtype=torch.float32))
    with CacheMixin.cache_context(taylor.transformer, "cond"):
        torch.testing.assert_close(trajectory(taylor), plain, atol=1e-6, rtol=1e-5)
