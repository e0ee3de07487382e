"""The text-to-image acceleration baselines (baselines/sd_scheduler.py, deepcache_sd.py, tome_sd.py,
pab_sd.py, taylorseer_sd.py, methods/tstitch_deepcache_sd.py) on a tiny SD pipeline: what each
library skips, counted on the U-Net's own modules, and the diffusers cache hooks that refuse a
UNet2DConditionModel. Off = plain pipeline exactly is in tests/test_method_contract.py."""

from __future__ import annotations

import contextlib

import pytest
import torch

from diffrepro.t2i import caches
from diffrepro.t2i.schedulers import SCHEDULERS, scheduler_from_pipeline, using_scheduler
from t2i_tiny import sd_pipeline, sd_unet

PROMPTS = ["a digit seven", "a red circle"]
STEPS = 6  # PNDM with skip_prk_steps: 7 timesteps, the second one repeated


def run(pipe, **kwargs):
    latents = torch.randn((len(PROMPTS), 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, latents=latents,
                    output_type="latent", return_dict=False, **kwargs)[0]


@contextlib.contextmanager
def counting(module):
    """Counts forward calls of `module` (a hook on it sees only the calls actually made)."""
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def sd():
    large = sd_unet(2, layers=2)
    return sd_pipeline(large), sd_unet(1, layers=1), large


# ------------------------------------------------------------------------------------------
# schedulers (no pipeline run: fast)
# ------------------------------------------------------------------------------------------

def test_schedulers_keep_the_pipelines_betas_and_the_pipeline_gets_its_own_back():
    pipe = sd_pipeline(sd_unet(2, layers=1))
    own = pipe.scheduler
    for name, (class_name, _) in SCHEDULERS.items():
        with using_scheduler(pipe, name) as swapped:
            assert type(pipe.scheduler).__name__ == class_name and pipe.scheduler is swapped
            assert torch.equal(swapped.alphas_cumprod, own.alphas_cumprod), name
            assert swapped.config.steps_offset == own.config.steps_offset == 1
        assert pipe.scheduler is own
    assert scheduler_from_pipeline("ddim", own).config.clip_sample is False  # SD's DDIM, not the class default
    assert scheduler_from_pipeline("dpmsolver++", own).config.algorithm_type == "dpmsolver++"
    with pytest.raises(RuntimeError), using_scheduler(pipe, "unipc"):
        raise RuntimeError("a failed call")
    assert pipe.scheduler is own


# ------------------------------------------------------------------------------------------
# what each library skips
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_deepcache_runs_the_deep_branch_every_interval_by_timestep_position(sd):
    pipe, _, large = sd
    # (counted inside the mid block: the helper swaps the block's forward, its own hooks still fire)
    # timesteps [831, 665, 665, 499, 333, 167, 1]: the helper numbers steps by a timestep's first
    # position, 0 1 1 3 4 5 6, and runs the deep branch where it is even: 3 of 7 calls
    with counting(large.mid_block.resnets[0]) as mid, caches.deepcache(large, pipe.scheduler, 2, 0):
        run(pipe)
    assert mid[0] == 3
    with counting(large.mid_block.resnets[0]) as mid:
        run(pipe)
    assert mid[0] == STEPS + 1  # the helper is gone
    assert not any("forward" in vars(m) for m in large.modules())
    with pytest.raises(ValueError, match="past this U-Net's 2 down stages"), caches.deepcache(large, pipe.scheduler, 2, 6):
        pass


@pytest.mark.slow
def test_deepcache_on_tstitchs_large_unet_starts_with_a_full_pass(sd):
    from diffrepro.methods import get_method

    pipe, small, large = sd
    spec = get_method("tstitch_deepcache_sd")
    call = lambda **kwargs: run(pipe, **kwargs)  # noqa: E731
    # r = 0.3: the small U-Net takes steps 0, 1; the large one starts at step 2 (position 1) and
    # is fully evaluated at positions 1, 3, 5 (every second from its own first step)
    with counting(large.mid_block.resnets[0]) as mid:
        out = spec.run(pipe, {"small": small, "large": large}, call, spec.make_setting({"ratio": 0.3, "cache_interval": 2}))
    assert dict(out.model_steps) == {"small": 2, "large": 5} and mid[0] == 3
    plain = get_method("tstitch_sd")
    stitched = plain.run(pipe, {"small": small, "large": large}, call, plain.make_setting({"ratio": 0.3}))
    assert not torch.allclose(out.samples, stitched.samples, atol=1e-4)


@pytest.mark.slow
def test_pab_and_taylorseer_skip_the_modules_they_say(sd):
    pipe, _, large = sd
    attention = large.down_blocks[0].attentions[0].transformer_blocks[0]
    # PAB, spatial 2 over every timestep: self-attention computed on calls 0, 2, 4, 6
    with counting(attention.attn1.to_q) as q, \
            caches.pyramid_attention_broadcast(large, spatial_skip=2, cross_skip=1, timestep_range=(-1, 1001)):
        run(pipe)
    assert q[0] == 4
    # TaylorSeer, 2 full steps, then a full step every 2 (steps 3, 5): forecasts at 2, 4, 6
    with counting(attention.ff.net[2]) as ff, caches.taylorseer(large, cache_interval=2, max_order=1, warmup_steps=2):
        run(pipe)
    assert ff[0] == 4
    with counting(attention.attn1.to_q) as q, counting(attention.ff.net[2]) as ff:
        run(pipe)
    assert q[0] == ff[0] == STEPS + 1  # both hooks gone


@pytest.mark.slow
def test_tome_merges_with_its_own_seeded_stream(sd):
    pipe, _, large = sd
    plain = run(pipe)
    outs = []
    for seed in (1, 2):  # the global RNG, which tomesd would fork, does not matter
        torch.manual_seed(seed)
        with caches.token_merging(large, ratio=0.5):
            outs.append(run(pipe))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], plain, atol=1e-4)
    assert type(large.down_blocks[0].attentions[0].transformer_blocks[0]).__name__ == "BasicTransformerBlock"


@pytest.mark.slow
@pytest.mark.parametrize("name, on", [
    ("sd_scheduler", {"scheduler": "ddim", "steps": 4}), ("deepcache_sd", {"cache_interval": 2}),
    ("tome_sd", {"ratio": 0.5}), ("pab_sd", {"spatial_skip": 2, "cross_skip": 2, "timestep_low": -1}),
    ("taylorseer_sd", {"cache_interval": 2, "warmup_steps": 1})])
def test_on_changes_the_samples_and_leaves_the_pipeline_plain(sd, name, on):
    from diffrepro.methods import get_method

    pipe, _, large = sd
    spec, plain = get_method(name), run(pipe)
    out = spec.run(pipe, {"model": large}, lambda **kwargs: run(pipe, **kwargs), spec.make_setting(on))
    assert not torch.allclose(out.samples, plain, atol=1e-4)
    assert pipe.unet is large and type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert torch.equal(run(pipe), plain)


# ------------------------------------------------------------------------------------------
# diffusers' cache hooks that do not attach to a UNet2DConditionModel
# ------------------------------------------------------------------------------------------

def test_diffusers_cache_hooks_that_refuse_the_unet():
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, apply_faster_cache,
                                 apply_first_block_cache, apply_mag_cache)

    unet = sd_unet(3, layers=1)
    assert not hasattr(unet, "enable_cache")  # no CacheMixin: only the apply_* functions
    assert set(caches.UNSUPPORTED_HOOKS) == {"FasterCache", "FirstBlockCache", "MagCache"}
    with pytest.raises(IndexError):  # FirstBlockCache: no top-level transformer blocks
        apply_first_block_cache(unet, FirstBlockCacheConfig(threshold=0.1))
    before = {name for name, m in unet.named_modules() if getattr(m, "_diffusers_hook", None)}
    apply_mag_cache(unet, MagCacheConfig(threshold=0.1, num_inference_steps=4, mag_ratios=[1.0] * 4))
    hooked = {name for name, m in unet.named_modules() if getattr(m, "_diffusers_hook", None)
              and m._diffusers_hook.hooks}
    assert hooked <= before  # MagCache: nothing attached
    # FasterCache attaches, then fails on the U-Net's 4-D output (it expects 5-D video latents)
    apply_faster_cache(unet, FasterCacheConfig(spatial_attention_block_skip_range=2,
                                               spatial_attention_timestep_skip_range=(-1, 1001),
                                               current_timestep_callback=lambda: 500,
                                               attention_weight_callback=lambda _: 0.5,
                                               is_guidance_distilled=False))
    pipe = sd_pipeline(unet)
    with pytest.raises(RuntimeError, match="dimensions"):
        run(pipe)


@pytest.mark.parametrize("make, message", [
    (lambda: __import__("baselines.pab_sd", fromlist=["x"]).PABSetting(steps=0), r"pab_sd steps must be an integer in \[1, 1000\], got 0"),
    (lambda: __import__("baselines.tome_sd", fromlist=["x"]).ToMeSetting(steps=True), r"tome_sd steps .* got True"),
    (lambda: __import__("baselines.taylorseer_sd", fromlist=["x"]).TaylorSeerSetting(max_order=-1),
     r"taylorseer_sd max_order must be an integer in \[0, 1000\]"),
])
def test_settings_built_in_code_are_checked_too(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_baselines_share_the_plain_pipeline_reference():
    from baselines.deepcache_sd import DeepCacheSetting
    from baselines.pab_sd import PABSetting

    assert PABSetting(steps=10).reference() == DeepCacheSetting(steps=10).reference() == \
        ("sd_scheduler", {"scheduler": "pipeline", "steps": 10})
