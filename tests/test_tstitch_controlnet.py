"""T-Stitch inside diffusers' ControlNet pipelines (issue 19 B, NVlabs/T-Stitch sdxl_canny.py /
tstitch_sd_utils.py's TStitchSDXLControlNet): the ControlNet runs once per step on the large
pipeline's inputs and its residuals go to whichever U-Net runs. diffrepro.t2i.stitch's wrapper
forwards them unchanged (down_block_additional_residuals, mid_block_additional_residual), so the
ControlNet pipelines need no fork; these tests hold it to that on tiny SD and SDXL pipelines."""

import numpy as np
import pytest
import torch

from diffrepro.t2i.stitch import stitched
from t2i_tiny import sd_pipeline, sd_unet, sdxl_pipeline, sdxl_unet

SIZE = 16  # the tiny VAE halves it: 8 x 8 latents


def controlnet_of(unet, seed: int):
    """A ControlNet from the U-Net's encoder (diffusers' from_unet), its zero convolutions made
    non-zero so that its residuals change the output (a trained ControlNet's would)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            module.weight.normal_(0, 0.2)
    return net.eval()


def control_pipeline(kind: str, large):
    import diffusers

    base = sd_pipeline(large) if kind == "sd" else sdxl_pipeline(large)
    cls = diffusers.StableDiffusionControlNetPipeline if kind == "sd" else diffusers.StableDiffusionXLControlNetPipeline
    pipe = cls(**base.components, controlnet=controlnet_of(large, 3))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs):
    control = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return pipe("a pokemon", image=control, height=SIZE, width=SIZE, num_inference_steps=4, output_type="np",
                controlnet_conditioning_scale=0.5, generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_ratio_0_and_1_are_the_plain_controlnet_pipelines_bit_for_bit(kind):
    make = sd_unet if kind == "sd" else sdxl_unet
    large, small = make(0, 1), make(1, 1)  # the same blocks (the ControlNet's residuals fit both), other weights
    pipe = control_pipeline(kind, large)
    plain_large = run(pipe)
    with stitched(pipe, small, 0.0) as (wrapper, kwargs):
        r0 = run(pipe, **kwargs)
    assert set(wrapper.calls) == {"large"}  # PNDM (SD) takes N + 1 steps, Euler (SDXL) N
    np.testing.assert_array_equal(r0, plain_large)
    with stitched(pipe, small, 1.0) as (wrapper, kwargs):
        r1 = run(pipe, **kwargs)
    assert set(wrapper.calls) == {"small"}
    pipe_small = control_pipeline(kind, large)
    object.__setattr__(pipe_small, "unet", small)  # the same ControlNet (from the large U-Net), the small U-Net
    np.testing.assert_array_equal(r1, run(pipe_small))
    assert not np.array_equal(r1, plain_large)


def test_the_controlnet_residuals_reach_the_small_unet():
    large, small = sd_unet(0, 1), sd_unet(1, 1)
    pipe = control_pipeline("sd", large)
    seen = []
    hook = small.register_forward_pre_hook(lambda m, args, kw: seen.append(kw), with_kwargs=True)
    try:
        with stitched(pipe, small, 0.5) as (wrapper, kwargs):
            run(pipe, **kwargs)
    finally:
        hook.remove()
    # PNDM's 5 steps for 4: the small U-Net while (i + 1) / 5 <= 0.5, i = 0, 1
    assert wrapper.calls == {"small": 2, "large": 3} and len(seen) == 2
    for kw in seen:
        residuals = kw["down_block_additional_residuals"]
        assert len(residuals) == 4 and all(float(r.abs().max()) > 0 for r in residuals)
        assert float(kw["mid_block_additional_residual"].abs().max()) > 0
