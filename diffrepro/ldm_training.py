"""Seeded, resumable training of the embedded suite's class-conditional LDM U-Nets on the digits
(pixels as the latents: LDM's IdentityFirstStage), as LatentDiffusion trains cin-ldm-vq-f8
(CompVis latent-diffusion ldm/models/diffusion/ddpm.py): eps-prediction, l_simple (the plain
MSE; original_elbo_weight 0), t uniform over the 1000 steps of LDM's linear schedule, the
ClassEmbedder trained with the U-Net (cond_stage_trainable) and no label dropout, so the
model has no null class (why T-Stitch guides against a random context). AdamW as LDM's
configure_optimizers, with the suite's warm-up and EMA (diffrepro.training)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import save_checkpoint
from .diffusion.ldm_ddim import ldm_linear_betas
from .finite import LossGuard
from .models.ldm_unet import build_ldm_unet
from .models.ldm_unet_config import LDMUNetConfig
from .training import TrainConfig, load_resume, optimizer_step, resume_path, run_fingerprint, save_resume


def train_ldm_unet(model_config: LDMUNetConfig, train: TrainConfig, schedule: dict, images: torch.Tensor,
                   labels: torch.Tensor, output, log=print, stop_after: int | None = None) -> dict:
    """Train, write the EMA weights to `output`, return a summary (as diffrepro.training.train_dit)."""
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)  # weight init draws from the global generator
    model, ema = build_ldm_unet(model_config), build_ldm_unet(model_config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=0.0)
    abar = torch.from_numpy(np.cumprod(1.0 - ldm_linear_betas(schedule["linear_start"], schedule["linear_end"])))
    resume = resume_path(output)
    fingerprint = run_fingerprint(model_config, train, images, labels, schedule=schedule)
    start, history = load_resume(resume, model, ema, optimizer, generator, fingerprint=fingerprint, log=log)
    guard = LossGuard(str(output), resume, start or None)

    model.train()
    began = time.perf_counter()
    for it in range(start, train.iterations):
        index = torch.randint(len(images), (train.batch_size,), generator=generator)
        x0, y = images[index], labels[index]
        t = torch.randint(len(abar), (train.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = abar[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(x_t, t, y), noise)
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

    summary = {"model_config": model_config.to_dict(), "train_config": asdict(train), "schedule": schedule,
               "parameters": sum(p.numel() for p in ema.parameters()),
               "final_loss": history[-1]["loss"] if history else None, "history": history,
               "seconds_this_run": time.perf_counter() - began}
    metadata = {"model_config": json.dumps(model_config.to_dict()), "train_config": json.dumps(asdict(train)),
                "iteration": str(train.iterations)}
    summary["sha256"] = save_checkpoint(output, ema.state_dict(), metadata)
    resume.unlink(missing_ok=True)
    return summary
