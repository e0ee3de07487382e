"""Seeded, resumable training of the embedded suite's ControlNet (rule train_controlnet), as
diffusers' examples/controlnet/train_controlnet.py trains one: ControlNetModel.from_unet copies
the frozen U-Net's encoder (zero convolutions on its outputs and conditioning embedding), only the
ControlNet is optimised, on the epsilon-MSE of the frozen U-Net given the ControlNet's residuals.
Pairs are (digit, edge map of that digit) with its class prompt; the edge map is the 8x8 Sobel
map (diffrepro.t2i.controlnet.edge_map) upsampled to the pipeline's pixel size, as the pipeline
gives it at sampling."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import torch

from ..checkpoints import recorded_sha256, save_checkpoint
from ..finite import LossGuard
from ..training import TrainConfig, load_resume, optimizer_step, resume_path, save_resume
from .components import digit_prompt, encode_prompts, is_sdxl_shaped
from .controlnet import controlnet_config, edge_map

# diffusers' ControlNetPipeline gives the control image at pixel size: latents x vae_scale_factor
# (8 for the embedded pipeline, which has no VAE).
EMBEDDED_SCALE = 8
TRAIN_KEYS = ("iterations", "batch_size", "lr", "warmup", "ema_decay", "seed", "checkpoint_every", "log_every")


def train_controlnet(config: dict, unet, train: TrainConfig, t2i: dict, images: torch.Tensor, labels: torch.Tensor,
                     output: str, unet_sha256: str, log=print, stop_after: int | None = None) -> dict:
    from ..engines.pipeline import NUM_PROMPT_CLASSES, build_controlnet, embedded_text_encoder, state_dict_sha256
    from .training import PROMPT_DROPOUT, noise_schedule, training_inputs

    if is_sdxl_shaped(unet.config):
        raise ValueError("the embedded ControlNet is trained on SD-1.x-shaped U-Nets (sd_unet without added conditioning)")
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)
    unet = unet.eval().requires_grad_(False)
    model, ema = build_controlnet(config), build_controlnet(config)
    # from_unet's copy of the trained encoder (zero convolutions stay zero): train_controlnet.py
    from diffusers import ControlNetModel

    init = ControlNetModel.from_unet(unet, conditioning_channels=config["conditioning_channels"],
                                     conditioning_embedding_out_channels=tuple(config["conditioning_embedding_out_channels"]))
    model.load_state_dict(init.state_dict())
    ema.load_state_dict(init.state_dict())
    ema.requires_grad_(False)
    schedule = noise_schedule(t2i)
    tokenizer, encoder = embedded_text_encoder(t2i)
    contexts = encode_prompts(tokenizer, encoder, [digit_prompt(c) for c in range(NUM_PROMPT_CLASSES)] + [""])
    edges = torch.from_numpy(edge_map(((images[:, 0] + 1) / 2).numpy()).astype(np.float32))[:, None]
    control = edges.repeat_interleave(EMBEDDED_SCALE, 2).repeat_interleave(EMBEDDED_SCALE, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=0.0)
    resume = resume_path(output)
    fingerprint = json.dumps({"controlnet": config, "train": asdict(train), "t2i": training_inputs(t2i),
                              "unet": unet_sha256, "text_encoder": state_dict_sha256(encoder)}, sort_keys=True)
    start, history = load_resume(resume, model, ema, optimizer, generator, fingerprint=fingerprint, log=log)
    guard = LossGuard(str(output), resume, start or None)
    began = time.perf_counter()
    model.train()
    for it in range(start, train.iterations):
        index = torch.randint(len(images), (train.batch_size,), generator=generator)
        x0, y = images[index], labels[index].clone()
        # the prompt dropped as the U-Net was trained: the unconditional branch of CFG sees control too
        y[torch.rand(train.batch_size, generator=generator) < PROMPT_DROPOUT] = NUM_PROMPT_CLASSES
        t = torch.randint(schedule.config.num_train_timesteps, (train.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = schedule.add_noise(x0, noise, t)
        down, mid = model(x_t, t, encoder_hidden_states=contexts[y], controlnet_cond=control[index],
                          return_dict=False)
        prediction = unet(x_t, t, encoder_hidden_states=contexts[y], down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        guard.check(loss, it + 1)
        optimizer_step(optimizer, model, ema, loss, train, it)
        done = it + 1
        if done % train.log_every == 0 or done == train.iterations:
            history.append({"iteration": done, "loss": loss.item()})
            log(f"iter {done}/{train.iterations} loss {loss.item():.4f}")
        if done % train.checkpoint_every == 0 or done == train.iterations:
            save_resume(resume, done, model, ema, optimizer, generator, history, fingerprint)
            guard.saved_at = done
        if stop_after is not None and done >= stop_after:
            return {"stopped_at": done}
    metadata = {"model_config": json.dumps(config, sort_keys=True), "train_config": json.dumps(asdict(train))}
    summary = {"model_config": config, "train_config": asdict(train), "arch": "sd_controlnet",
               "parameters": sum(p.numel() for p in ema.parameters()),
               "final_loss": history[-1]["loss"] if history else None, "history": history,
               "seconds_this_run": time.perf_counter() - began, "unet_sha256": unet_sha256,
               "text_encoder_sha256": state_dict_sha256(encoder),
               "sha256": save_checkpoint(output, ema.state_dict(), metadata)}
    resume.unlink(missing_ok=True)
    return summary


def train_controlnet_job(*, unet_path: str, unet_config: dict, entry: dict, t2i: dict, output: str, log=print) -> dict:
    """Rule train_controlnet: a ControlNet of the trained U-Net at `unet_path`, on the digits."""
    from ..data import load_digits_tensors
    from ..engines.pipeline import load_unet

    unet = load_unet(unet_path, unet_config, "cpu")
    train = TrainConfig(**{k: entry[k] for k in TRAIN_KEYS if k in entry})
    images, labels = load_digits_tensors()
    return train_controlnet(controlnet_config(entry, unet_config), unet, train, t2i, images, labels, output,
                            recorded_sha256(unet_path), log=log)
