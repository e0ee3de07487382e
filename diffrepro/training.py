"""Seeded, resumable training of the embedded suite's DiT denoisers.

How timesteps are drawn, noise is paired and the MSE is weighted comes from a training
method (diffrepro.training_methods); the default is plain DDPM. `snapshots` saves the EMA
weights at fixed iterations, for metric-against-iterations curves. A NaN or inf loss stops
the run before its update (diffrepro.finite), and weights holding one are never saved.

Progress is saved every `checkpoint_every` iterations to a resume file (model, EMA,
optimizer and random-generator state), so a killed job continues where it stopped and
ends with the same weights as an uninterrupted run. The final EMA weights are written
as safetensors with a sha256 sidecar.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch

from .checkpoints import save_checkpoint
from .diffusion.losses import HybridLoss
from .finite import LossGuard, refuse_nonfinite_weights
from .io import atomic_path
from .job_phases import compute
from .models.dit import DiTConfig, build_dit
from .training_methods import TrainingMethod, build_training_method


@dataclass(frozen=True)
class TrainConfig:
    iterations: int
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 100


def train_denoiser_job(*, model_config: dict, train: dict, t2i: dict | None, checkpoint: str, summary: str,
                       log=print, ldm: dict | None = None) -> None:
    """Rule train_denoiser: a DiT, or with `t2i` (its scheduler and text encoder) a class-prompt
    U-Net for the text-to-image methods, or with `ldm` (its noise schedule) a class-conditional
    LDM U-Net, trained on the digits; writes the training summary."""
    from .data import load_digits_tensors
    from .io import write_json

    images, labels = load_digits_tensors()
    with compute():  # the whole run (its few checkpoint writes included) is the model's compute
        result = _train(model_config, train, t2i, ldm, images, labels, checkpoint, log)
    write_json(summary, result)


def _train(model_config, train, t2i, ldm, images, labels, checkpoint, log) -> dict:
    if ldm is not None:
        from .ldm_training import train_ldm_unet
        from .models.ldm_unet_config import LDMUNetConfig

        return train_ldm_unet(LDMUNetConfig(**model_config), TrainConfig(**train), ldm, images, labels,
                              checkpoint, log=log)
    if t2i is not None:
        from .t2i.training import train_t2i_unet

        return train_t2i_unet(model_config, TrainConfig(**train), t2i, images, labels, checkpoint, log=log)
    return train_dit(DiTConfig(**model_config), TrainConfig(**train), images, labels, checkpoint, log=log)


def warmup_lr(optimizer, lr: float, warmup: int, it: int) -> None:
    """Every trainer's learning rate: linear warm-up over the first `warmup` iterations (`it` 0-based)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * min(1.0, (it + 1) / max(warmup, 1))


def warmup_ema_decay(decay: float, it: int) -> float:
    """EMA warm-up: short runs would otherwise keep much of the (zero-output) init."""
    return min(decay, (1 + it) / (10 + it))


@torch.no_grad()
def update_ema(ema, model, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - decay)


def optimizer_step(optimizer, model, ema, loss, train: TrainConfig, it: int, max_grad_norm: float | None = None) -> None:
    """One update of every warm-up trainer (DiT, LDM, class-prompt U-Net, ControlNet): the
    warm-up learning rate, the gradient (clipped where asked), the step, the warmed-up EMA."""
    warmup_lr(optimizer, train.lr, train.warmup, it)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    update_ema(ema, model, warmup_ema_decay(train.ema_decay, it))


def resume_path(output: str | Path) -> Path:
    return Path(f"{output}.resume.pt")


def run_fingerprint(model_config, train: TrainConfig, images: torch.Tensor, labels: torch.Tensor,
                    **recipe) -> str:
    """What a training run depends on (model, train config, data, and the caller's `recipe`
    entries): a resume file left by a run with another fingerprint is not reused."""
    data = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return json.dumps({"model": model_config.to_dict(), "train": asdict(train), **recipe, "data": data},
                      sort_keys=True)


def train_dit(model_config: DiTConfig, train: TrainConfig, images: torch.Tensor,
              labels: torch.Tensor, output: str | Path, log=print,
              stop_after: int | None = None, method: TrainingMethod | None = None,
              snapshots: Mapping[int, str | Path] | None = None) -> dict:
    """Train, write the EMA weights to `output`, return a summary.

    `method` defaults to plain DDPM; `snapshots` maps iterations to paths for the EMA
    weights at that iteration. `stop_after` ends the run early without writing the output
    (used by the resume tests).
    """
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)  # weight init draws from the global generator
    model = build_dit(model_config)
    ema = build_dit(model_config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=0.0)
    loss_fn = HybridLoss()
    method = method or build_training_method([], loss_fn.alphas_cumprod)
    mse_weights = torch.from_numpy(method.weighting.weights).float()
    snapshots = dict(snapshots or {})
    bad = [it for it in snapshots if not 1 <= it <= train.iterations]
    if bad:
        raise ValueError(f"snapshot iterations {bad} outside 1..{train.iterations}")
    resume = resume_path(output)
    fingerprint = run_fingerprint(model_config, train, images, labels, method=method.describe())
    start, history = load_resume(resume, model, ema, optimizer, generator, fingerprint=fingerprint, log=log)
    guard = LossGuard(str(output), resume, start or None)

    model.train()
    began = time.perf_counter()
    for it in range(start, train.iterations):
        index = torch.randint(len(images), (train.batch_size,), generator=generator)
        x0, y = images[index], labels[index]
        y = model.y_embedder.drop_labels(y, generator)
        t = method.timesteps.sample(train.batch_size, generator)
        noise = method.pairing.pair(x0, generator)
        x_t = loss_fn.q_sample(x0, t, noise)
        loss, parts = loss_fn(model(x_t, t, y), x0, x_t, t, noise, mse_weights[t])
        guard.check(loss, it + 1)
        optimizer_step(optimizer, model, ema, loss, train, it)

        done = it + 1
        if done % train.log_every == 0 or done == train.iterations:
            history.append({"iteration": done, "loss": loss.item(), **parts})
            log(f"iter {done}/{train.iterations} loss {loss.item():.4f} "
                f"mse {parts['mse']:.4f} vb {parts['vb']:.4f}")
        if done in snapshots:
            refuse_nonfinite_weights(snapshots[done], done, ema=ema.state_dict())
            save_checkpoint(snapshots[done], ema.state_dict(), _metadata(model_config, train, done))
        if done % train.checkpoint_every == 0 or done == train.iterations or done in snapshots:
            save_resume(resume, done, model, ema, optimizer, generator, history, fingerprint)
            guard.saved_at = done
        if stop_after is not None and done >= stop_after:
            return {"stopped_at": done}

    summary = {
        "model_config": model_config.to_dict(), "train_config": asdict(train),
        "parameters": sum(p.numel() for p in ema.parameters()),
        "final_loss": history[-1]["loss"] if history else None, "history": history,
        "seconds_this_run": time.perf_counter() - began, "method": method.describe(),
    }
    summary["sha256"] = save_checkpoint(output, ema.state_dict(),
                                        _metadata(model_config, train, train.iterations))
    resume.unlink(missing_ok=True)
    return summary


def _metadata(model_config: DiTConfig, train: TrainConfig, iteration: int) -> dict[str, str]:
    return {"model_config": json.dumps(model_config.to_dict()),
            "train_config": json.dumps(asdict(train)), "iteration": str(iteration)}


def load_resume(path: Path, model, ema, optimizer, generator, *, fingerprint: str | None = None,
                scaler=None, log=print) -> tuple[int, list]:
    """Restore a killed run's state; returns (iteration to start at, history). With a
    `fingerprint` (what the run depends on), a resume file of another run is deleted, not used.
    A `scaler` (fp16's GradScaler) gets its scale and growth tracker back, so a resumed run
    skips the same steps as an unbroken one."""
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=True)
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        log(f"ignoring {path}: it comes from a run with other settings or inputs")
        path.unlink()
        return 0, []
    model.load_state_dict(state["model"])
    if ema is not None:  # None: a run without an EMA copy (Distill SD XL's recipe)
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    start = int(state["iteration"])
    log(f"resuming {path} at iteration {start}")
    return start, json.loads(state["history"])


def save_resume(path: Path, iteration: int, model, ema, optimizer, generator, history,
                 fingerprint: str | None = None, scaler=None) -> None:
    """Refused if the weights hold a NaN or inf: the file keeps the last finite state."""
    emas = {} if ema is None else {"ema": ema.state_dict()}
    refuse_nonfinite_weights(path, iteration, model=model.state_dict(), **emas)
    state = {"iteration": iteration, "model": model.state_dict(), **emas,
             "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
             "history": json.dumps(history)}
    if scaler is not None and scaler.is_enabled():  # a disabled scaler's state is {}
        state["scaler"] = scaler.state_dict()
    if fingerprint is not None:
        state["fingerprint"] = fingerprint
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
