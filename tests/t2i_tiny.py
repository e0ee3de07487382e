"""Tiny SD / SDXL / LCM-SDXL pipelines built from configs (random weights, no download): the
real diffusers pipelines, small enough for CPU tests."""

from __future__ import annotations

import torch

from diffrepro.t2i.components import build_text_encoder, build_unet, char_tokenizer


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16).eval()


def sd_unet(seed: int, layers: int):
    torch.manual_seed(seed)
    return build_unet(dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                           layers_per_block=layers, norm_num_groups=8, cross_attention_dim=32,
                           attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))).eval()


def sd_pipeline(unet):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = char_tokenizer(24)
    # SD-1.x's own scheduler config: PNDM, skip_prk_steps (N + 1 timesteps), scaled-linear betas.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=build_text_encoder(tokenizer, 0),
                                   tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_unet(seed: int, layers: int, time_cond_proj_dim: int | None = None):
    torch.manual_seed(seed)
    # SDXL's added conditioning: pooled text (16) + 6 size/crop ids x 4 = 40.
    return build_unet(dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                           layers_per_block=layers, norm_num_groups=8, cross_attention_dim=32,
                           attention_head_dim=(2, 4), use_linear_projection=True,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                           addition_embed_type="text_time", addition_time_embed_dim=4,
                           projection_class_embeddings_input_dim=40,
                           time_cond_proj_dim=time_cond_proj_dim)).eval()


def sdxl_pipeline(unet, scheduler=None):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = char_tokenizer(24)
    scheduler = scheduler or EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                    beta_schedule="scaled_linear", steps_offset=1,
                                                    timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=build_text_encoder(tokenizer, 0, hidden_size=16),
        text_encoder_2=build_text_encoder(tokenizer, 1, hidden_size=16, with_projection=True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        steps_offset=1, timestep_spacing="leading")
