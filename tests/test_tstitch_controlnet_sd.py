"""T-Stitch inside diffusers' ControlNet pipelines (SD and SDXL; tiny, random weights): the
ControlNet's residuals reach whichever U-Net runs, r = 0 / r = 1 are the plain ControlNet
pipelines with the large / small U-Net bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrepro.engines.pipeline import build_controlnet, controlnet_pipeline
from diffrepro.t2i.components import build_unet
from diffrepro.t2i.controlnet import check_residual_compatible, edge_iou, edge_map
from diffrepro.t2i.stitch import stitched
from t2i_tiny import sd_pipeline, sd_unet, sdxl_pipeline, sdxl_unet

PROMPTS = ["a digit seven", "a red circle"]
STEPS = 6


def light_sd_unet(seed: int):
    """The large tiny SD U-Net's skeleton (channels, 2 pairs per stage) without its attention:
    what SSD-1B is to SDXL-base."""
    torch.manual_seed(seed)
    return build_unet(dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                           layers_per_block=2, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                           mid_block_type="UNetMidBlock2D")).eval()


def light_sdxl_unet(seed: int):
    torch.manual_seed(seed)
    return build_unet(dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                           layers_per_block=2, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=(2, 4),
                           use_linear_projection=True, down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
                           addition_embed_type="text_time", addition_time_embed_dim=4,
                           projection_class_embeddings_input_dim=40)).eval()


def trained_like_controlnet(unet, seed: int, conditioning_channels: int = 3):
    """ControlNetModel.from_unet with its zero convolutions (residual outputs, conditioning
    embedding output) given random weights: a fresh ControlNet adds zeros and ignores the
    control image, which would hide a residual that never arrives."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    # the tiny VAE halves the size: one stride-2 stage in the conditioning embedding
    net = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels, conditioning_embedding_out_channels=(8, 16))
    for block in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(block.weight, std=0.3)
    return net.eval()


def control_image():
    return torch.rand((len(PROMPTS), 3, 16, 16), generator=torch.Generator().manual_seed(3))


def run(pipe, **kwargs) -> np.ndarray:
    latents = torch.randn((len(PROMPTS), 4, 8, 8), generator=torch.Generator().manual_seed(0))
    kwargs.setdefault("image", control_image())
    return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, latents=latents,
                controlnet_conditioning_scale=0.5, output_type="np", **kwargs).images


def run_stitched(pipe, small, ratio, **kwargs):
    with stitched(pipe, small, ratio) as (wrapper, call_kwargs):
        images = run(pipe, **kwargs, **call_kwargs)
    return images, dict(wrapper.calls)


@pytest.fixture(scope="module")
def sd():
    large, small = sd_unet(2, layers=2), light_sd_unet(1)
    net = trained_like_controlnet(large, 4)
    return controlnet_pipeline(sd_pipeline(large), net), small, large, net


def test_sd_ratio_0_and_1_are_the_plain_controlnet_pipelines(sd):
    pipe, small, large, net = sd
    assert type(pipe).__name__ == "StableDiffusionControlNetPipeline"
    images, calls = run_stitched(pipe, small, 0.0)
    assert np.array_equal(images, run(pipe)) and calls == {"large": STEPS + 1}  # PNDM: N + 1 timesteps
    images, calls = run_stitched(pipe, small, 1.0)
    plain_small = controlnet_pipeline(sd_pipeline(small), net)  # same seeded encoder, VAE, scheduler
    assert np.array_equal(images, run(plain_small)) and calls == {"small": STEPS + 1}
    assert pipe.unet is large


def test_the_residuals_reach_the_small_unet(sd):
    pipe, small, large, net = sd
    seen = []
    hook = small.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((len(kwargs["down_block_additional_residuals"]),
                                             float(kwargs["mid_block_additional_residual"].abs().sum()))),
        with_kwargs=True)
    try:
        images, calls = run_stitched(pipe, small, 0.5)
    finally:
        hook.remove()
    assert calls == {"small": 3, "large": 4}  # (i + 1) / 7 <= 0.5 for i = 0, 1, 2
    assert len(seen) == 3 and all(n == len(net.controlnet_down_blocks) and mid > 0 for n, mid in seen)
    # the control image changes what the small U-Net makes (r = 1: no large step at all)
    other = torch.rand((len(PROMPTS), 3, 16, 16), generator=torch.Generator().manual_seed(9))
    assert not np.array_equal(run_stitched(pipe, small, 1.0)[0], run_stitched(pipe, small, 1.0, image=other)[0])


def test_a_small_unet_with_another_skeleton_is_refused_before_any_step(sd):
    pipe, _, large, _ = sd
    with pytest.raises(ValueError, match=r"cannot take the ControlNet's residuals \(layers_per_block"):
        with stitched(pipe, sd_unet(1, layers=1), 0.5):
            pass
    assert pipe.unet is large


def test_sdxl_ratio_0_and_1_are_the_plain_controlnet_pipelines():
    large, small = sdxl_unet(2, layers=2), light_sdxl_unet(1)
    net = trained_like_controlnet(large, 5)
    pipe = controlnet_pipeline(sdxl_pipeline(large), net)
    assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    images, calls = run_stitched(pipe, small, 0.0)
    assert np.array_equal(images, run(pipe)) and calls == {"large": STEPS}
    images, calls = run_stitched(pipe, small, 1.0)
    assert np.array_equal(images, run(controlnet_pipeline(sdxl_pipeline(small), net))) and calls == {"small": STEPS}
    mixed, calls = run_stitched(pipe, small, 0.5)
    assert calls == {"small": 3, "large": 3} and np.isfinite(mixed).all()


def test_residual_skeleton_check_names_what_differs():
    config = dict(block_out_channels=[16, 32, 32], layers_per_block=2,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])
    check_residual_compatible(config, {**config, "down_block_types": ["DownBlock2D"] * 3})  # attention: fine
    with pytest.raises(ValueError, match=r"block_out_channels: ControlNet \[16, 32, 32\], U-Net \[16, 32\]"):
        check_residual_compatible(config, {**config, "block_out_channels": [16, 32],
                                           "down_block_types": ["DownBlock2D"] * 2})
    with pytest.raises(ValueError, match="mid_block"):
        check_residual_compatible(config, {**config, "mid_block_type": None})


def test_edge_map_and_iou():
    step = np.zeros((1, 8, 8))
    step[:, :, 4:] = 1.0
    edges = edge_map(step)
    assert edges[0, :, 3:5].all() and not edges[0, :, :3].any() and not edges[0, :, 5:].any()
    assert edge_map(np.full((1, 8, 8), 0.7)).sum() == 0
    other = np.zeros_like(edges)
    other[0, 0, 0] = True
    assert edge_iou(edges, edges).tolist() == [1.0]
    assert edge_iou(edges, other).tolist() == [0.0]
    assert edge_iou(np.zeros_like(edges), np.zeros_like(edges)).tolist() == [1.0]


def test_the_method_in_the_embedded_pipeline_scores_edge_agreement():
    """Through the engine's batch runner: 1-channel pixel U-Nets, no VAE, the digits' edge maps
    as 64 x 64 control images, edge IoU per image, calls per role including the ControlNet."""
    from pathlib import Path

    import yaml

    from diffrepro.engines.pipeline import embedded_pipeline, run_batch
    from diffrepro.methods import get_method, load_plugins

    load_plugins()
    t2i = yaml.safe_load((Path(__file__).parents[1] / "config/default.yaml").read_text())["t2i"]
    base = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32], layers_per_block=2,
                norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    torch.manual_seed(0)
    large = build_unet(base).eval()
    torch.manual_seed(1)
    small = build_unet({**base, "down_block_types": ["DownBlock2D", "DownBlock2D"]}).eval()
    net = build_controlnet({"unet": base, "conditioning_channels": 1,
                            "conditioning_embedding_out_channels": [8, 8, 8, 16]}).eval()
    pipe = controlnet_pipeline(embedded_pipeline(large, t2i), net)
    spec = get_method("tstitch_controlnet_sd")
    unets = {"small": small, "large": large, "controlnet": net}
    out, labels, _ = run_batch(spec, spec.make_setting({"ratio": 0.4, "steps": 4}), pipe, unets, t2i, 0, [0, 1, 2],
                               (1, 8, 8), "cpu")
    assert dict(out.model_steps) == {"small": 2, "large": 3, "controlnet": 5}  # PNDM: 5 timesteps
    iou = out.per_image["edge_iou"]
    assert iou.shape == (3,) and ((iou >= 0) & (iou <= 1)).all()
    assert pipe.unet is large


def test_controlnet_training_resumes_to_the_same_weights_and_starts_as_the_unet(tmp_path):
    """Rule train_controlnet's trainer: from_unet's copy with zero convolutions (the U-Net's
    prediction unchanged at first), only the ControlNet trained, a killed run resumes exactly."""
    from safetensors.torch import load_file

    from diffrepro.data import load_digits_tensors
    from diffrepro.t2i.controlnet_training import controlnet_config, train_controlnet
    from diffrepro.training import TrainConfig
    from pathlib import Path

    import yaml

    t2i = yaml.safe_load((Path(__file__).parents[1] / "config/default.yaml").read_text())["t2i"]
    unet_config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1,
                       norm_num_groups=4, cross_attention_dim=32, attention_head_dim=4,
                       down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                       up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    torch.manual_seed(0)
    unet = build_unet(unet_config).eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    config = controlnet_config({"conditioning_embedding_out_channels": [4, 4, 4, 8]}, unet_config)
    images, labels = load_digits_tensors()
    images, labels = images[:64], labels[:64]
    train = TrainConfig(iterations=4, batch_size=8, lr=1e-3, warmup=1, ema_decay=0.5, seed=3, checkpoint_every=2,
                        log_every=2)

    def run(name, **kwargs):
        return train_controlnet(config, unet, train, t2i, images, labels, str(tmp_path / name), "sha",
                                log=lambda *a: None, **kwargs)

    whole = run("whole.safetensors")
    assert run("cut.safetensors", stop_after=2) == {"stopped_at": 2}
    resumed = run("cut.safetensors")
    assert whole["sha256"] == resumed["sha256"]
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())  # the U-Net stays frozen
    weights = load_file(tmp_path / "whole.safetensors")
    assert any(k.startswith("controlnet_down_blocks") and v.abs().sum() > 0 for k, v in weights.items())
    net = build_controlnet(config)
    net.load_state_dict(weights)  # the checkpoint loads into the engine's ControlNet


@pytest.mark.parametrize("text, expected", [
    # sd_small: 2 stages, 1 pair each - not sd_large's skeleton
    ("methods:\n  tstitch_controlnet_sd:\n    models: {small: sd_small}\n",
     r"methods.tstitch_controlnet_sd.models.small: small U-Net 'sd_small' cannot take the ControlNet's residuals"),
    # a ControlNet of another U-Net than the large one
    ("methods:\n  tstitch_controlnet_sd:\n    models: {large: sd_small_ctrl, small: sd_small_ctrl}\n",
     r"models.controlnet: 'sd_large_edges' is a ControlNet of 'sd_large', not of the large U-Net 'sd_small_ctrl'"),
    # a U-Net in the controlnet role
    ("methods:\n  tstitch_controlnet_sd:\n    models: {controlnet: sd_small}\n",
     r"models.controlnet: method 'tstitch_controlnet_sd' needs a model with arch 'sd_controlnet'"),
    ("models:\n  sd_large_edges:\n    controlnet: {unet: large}\n",
     r"models.sd_large_edges.controlnet.unet: 'large' must be an SD-1.x-shaped sd_unet model"),
])
def test_the_config_refuses_a_controlnet_the_small_unet_cannot_take(tmp_path, text, expected):
    from test_config_errors import refused

    assert re_search(expected, refused(tmp_path, text))


def re_search(pattern, message):
    import re

    assert re.search(pattern, message), message
    return True
