"""T-Stitch on diffusers' own SD / SDXL / LCM-SDXL pipelines (tiny, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrepro.t2i.stitch import StitchedUNet, stitched, uses_small_unet
from t2i_tiny import lcm_scheduler, sd_pipeline, sd_unet, sdxl_pipeline, sdxl_unet

PROMPTS = ["a digit seven", "a red circle"]


def run(pipe, steps: int, guidance: float = 7.5, **kwargs) -> np.ndarray:
    latents = torch.randn((len(PROMPTS), 4, 8, 8), generator=torch.Generator().manual_seed(0))
    # LCM's multistep sampling draws fresh noise at every step: seed it too.
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
               generator=torch.Generator().manual_seed(1), output_type="np", **kwargs)
    return out.images


def run_stitched(pipe, small, ratio, steps, **kwargs):
    with stitched(pipe, small, ratio) as (wrapper, call_kwargs):
        images = run(pipe, steps, **kwargs, **call_kwargs)
    return images, dict(wrapper.calls)


class CallCountingUNet(torch.nn.Module):
    """An independent reference: picks the U-Net by counting calls (one per step in these
    pipelines) instead of the step callback."""

    def __init__(self, small, large, ratio, num_timesteps):
        super().__init__()
        self.small, self.large, self.ratio, self.n, self.count = small, large, ratio, num_timesteps, 0

    @property
    def config(self):
        return self.large.config

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["large"], name)

    def forward(self, *args, **kwargs):
        unet = self.small if self.count + 1 <= self.ratio * self.n else self.large
        self.count += 1
        return unet(*args, **kwargs)


@pytest.fixture(scope="module")
def sd():
    small, large = sd_unet(1, layers=1), sd_unet(2, layers=2)
    return sd_pipeline(large), small, large


def test_rule_matches_the_released_step_index_rule():
    # PNDM, 50 steps: 51 timesteps; r = 0.4 gives the small U-Net steps 0..19 ((i + 1) / 51 <= 0.4).
    assert sum(uses_small_unet(i, 51, 0.4) for i in range(51)) == 20
    assert not any(uses_small_unet(i, 51, 0.0) for i in range(51))
    assert all(uses_small_unet(i, 51, 1.0) for i in range(51))


def test_sd_ratio_0_is_the_large_pipeline_and_1_the_small(sd):
    pipe, small, large = sd
    plain_large = run(pipe, 10)
    images, calls = run_stitched(pipe, small, 0.0, 10)
    np.testing.assert_array_equal(images, plain_large)
    assert calls == {"large": 11}  # PNDM: 10 steps, 11 timesteps
    images, calls = run_stitched(pipe, small, 1.0, 10)
    small_pipe = sd_pipeline(small)  # same text encoder, VAE and scheduler (seeded builders)
    np.testing.assert_array_equal(images, run(small_pipe, 10))
    assert calls == {"small": 11}
    assert not np.allclose(plain_large, images)


def test_sd_partial_ratio_matches_an_independent_switch(sd):
    pipe, small, large = sd
    images, calls = run_stitched(pipe, small, 0.4, 10)
    assert calls == {"small": 4, "large": 7}  # (i + 1) / 11 <= 0.4 for i = 0..3
    reference = CallCountingUNet(small, large, 0.4, 11)
    object.__setattr__(pipe, "unet", reference)
    try:
        expected = run(pipe, 10)
    finally:
        object.__setattr__(pipe, "unet", large)
    np.testing.assert_array_equal(images, expected)
    assert pipe.unet is large


def test_the_pipeline_gets_its_unet_back_after_an_error(sd):
    pipe, small, large = sd
    with pytest.raises(RuntimeError, match="boom"):
        with stitched(pipe, small, 0.5):
            assert isinstance(pipe.unet, StitchedUNet)
            raise RuntimeError("boom")
    assert pipe.unet is large
    with pytest.raises(ValueError, match="ratio must be in"):
        with stitched(pipe, small, 1.5):
            pass


def test_sdxl_feeds_the_added_conditioning_to_both_unets():
    small, large = sdxl_unet(1, layers=1), sdxl_unet(2, layers=2)
    pipe = sdxl_pipeline(large)
    seen = []
    hook = small.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(sorted(kwargs["added_cond_kwargs"])), with_kwargs=True)
    images, calls = run_stitched(pipe, small, 0.5, 6)
    hook.remove()
    assert calls == {"small": 3, "large": 3}  # Euler: 6 timesteps
    assert seen == [["text_embeds", "time_ids"]] * 3
    np.testing.assert_array_equal(run_stitched(pipe, small, 0.0, 6)[0], run(pipe, 6))
    assert np.isfinite(images).all()


@pytest.mark.parametrize("steps, ratio, small_steps", [(2, 0.5, 1), (4, 0.5, 2), (8, 0.25, 2)])
def test_lcm_sdxl_guidance_embedding_only_reaches_the_lcm_unet(steps, ratio, small_steps):
    # LCM-SDXL (large) was distilled with a guidance embedding; the LCM-LoRA SSD-1B (small) was not.
    small, large = sdxl_unet(1, layers=1), sdxl_unet(2, layers=2, time_cond_proj_dim=8)
    pipe = sdxl_pipeline(large, lcm_scheduler())
    conds = {"small": [], "large": []}
    hooks = [unet.register_forward_pre_hook(
        lambda module, args, kwargs, role=role: conds[role].append(kwargs.get("timestep_cond")), with_kwargs=True)
        for role, unet in (("small", small), ("large", large))]
    images, calls = run_stitched(pipe, small, ratio, steps, guidance=0.0)
    for h in hooks:
        h.remove()
    assert calls == {"small": small_steps, "large": steps - small_steps}
    assert all(c is None for c in conds["small"])
    assert all(c is not None and c.shape[-1] == 8 for c in conds["large"])
    np.testing.assert_array_equal(run_stitched(pipe, small, 0.0, steps, guidance=0.0)[0],
                                  run(pipe, steps, guidance=0.0))


def test_the_sd15_lcm_pipeline_uses_its_released_rule():
    """TStitchLCM (LatentConsistencyModelPipeline) compares i / len(timesteps) with r, r = 0 and
    1 meaning one U-Net alone: at 4 steps and r = 0.5 the small U-Net takes steps 0, 1 and 2."""
    from diffusers import LatentConsistencyModelPipeline

    from diffrepro.t2i.components import build_text_encoder, build_unet, char_tokenizer
    from diffrepro.t2i.stitch import uses_small_unet_lcm
    from t2i_tiny import tiny_vae

    assert [uses_small_unet_lcm(i, 4, 0.5) for i in range(4)] == [True, True, True, False]
    assert not any(uses_small_unet_lcm(i, 4, 0.0) for i in range(4))
    assert all(uses_small_unet_lcm(i, 4, 1.0) for i in range(4))
    small = sd_unet(1, layers=1)
    torch.manual_seed(2)
    large = build_unet({**small.config, "layers_per_block": 2, "time_cond_proj_dim": 8}).eval()
    tokenizer = char_tokenizer(24)
    pipe = LatentConsistencyModelPipeline(vae=tiny_vae(), text_encoder=build_text_encoder(tokenizer, 0),
                                          tokenizer=tokenizer, unet=large, scheduler=lcm_scheduler(),
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images, calls = run_stitched(pipe, small, 0.5, 4, guidance=8.0)
    assert calls == {"small": 3, "large": 1}
    assert run_stitched(pipe, small, 0.25, 4, guidance=8.0)[1] == {"small": 2, "large": 2}
    np.testing.assert_array_equal(run_stitched(pipe, small, 0.0, 4, guidance=8.0)[0], run(pipe, 4, guidance=8.0))
    assert np.isfinite(images).all()
