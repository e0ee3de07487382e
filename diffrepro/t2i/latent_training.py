"""Training a Stable Diffusion U-Net in latent space on class-labelled images, as the Immiscible
Diffusion seed's SD scripts do (yhli123/Immiscible-Diffusion, Linear_Assignment-stable_diffusion/
and KNN-stable_diffusion/conditional_{scratch,ft}_train_sd.py, on diffusers' train_text_to_image.py):

- the pipeline's VAE encodes each batch, `latent_dist.sample()` x `vae.config.scaling_factor`
  (0.18215 for SD-1.x); its text encoder (frozen) encodes the class-name prompts;
- from scratch the U-Net is re-initialised with the pipeline U-Net's own config (the seed loads
  `UNet2DConditionModel(cross_attention_dim=768)`'s fresh weights, SD-v1.4's architecture);
  fine-tuning starts from the pipeline's U-Net;
- noise: plain Gaussian, or a noise-pairing component (Immiscible: linear assignment over the
  whole batch, KNN) on those latents; timesteps drawn uniformly after it; epsilon MSE;
- AdamW (weight decay 1e-2 in the seed), constant learning rate, gradient norm clipped at 1,
  EMA with diffusers' EMAModel warm-up (decay 0 at the first update, then
  min(decay, (1 + s) / (10 + s))), fp16 autocast with a gradient scaler on a GPU (the seed's
  --mixed_precision fp16; the VAE and text encoder run in fp16 there).

The seed's global batch (8 GPUs x 256) is one batch here, assigned as a whole as the seed
gathers it, then run through the U-Net in micro-batches whose gradients add up to the whole
batch's (`micro_batch_size`), in one process or split over the GPUs of a node
(diffrepro.t2i.data_parallel: the same update for a given micro_batch_size, whatever the number
of GPUs, up to float summation order). Batches are consecutive slices of seeded epoch shuffles,
flips and VAE samples come from the run's generator: a killed run resumes to the same stream,
and the gradient scaler's state (fp16) is saved with it, so it skips the same steps.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from ..checkpoints import save_checkpoint
from ..finite import LossGuard, refuse_nonfinite_weights
from ..training import load_resume, resume_path, save_resume, update_ema, warmup_lr
from .class_images import ClassImages, batch_indices, iterate_batches, to_model_input
from .components import encode_prompts
from .data_parallel import World

# What a regime's `train` block may add on the latent path, with the seed's values as defaults.
RECIPE_DEFAULTS = {"warmup": 0, "ema_decay": 0.9999, "weight_decay": 1e-2, "max_grad_norm": 1.0,
                   "prompt_dropout": 0.0, "micro_batch_size": None, "gradient_checkpointing": False,
                   "checkpoint_every": 500, "log_every": 50}


def ema_decay_at(optimization_step: int, decay: float) -> float:
    """diffusers.training_utils.EMAModel.get_decay (no warm-up power, update_after_step 0):
    `optimization_step` counts updates from 1; the first copies the weights."""
    step = max(0, optimization_step - 1)
    return 0.0 if step <= 0 else min(decay, (1 + step) / (10 + step))


def training_schedule(scheduler):
    """The forward process of the pipeline's scheduler config (the seed: DDPMScheduler
    from the pipeline's scheduler folder)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


@torch.no_grad()
def class_contexts(pipeline, prompts, device, dtype, chunk: int = 64) -> torch.Tensor:
    """Text-encoder hidden states of every class prompt, then of "" (the last row), padded to
    the tokenizer's max length as the seed's tokenize_captions."""
    rows = [encode_prompts(pipeline.tokenizer, pipeline.text_encoder, list(prompts[i:i + chunk]))
            for i in range(0, len(prompts), chunk)]
    rows.append(encode_prompts(pipeline.tokenizer, pipeline.text_encoder, [""]))
    return torch.cat(rows).to(device, dtype)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator, micro: int,
                   world: World = World()) -> torch.Tensor:
    """vae.encode(x).latent_dist.sample() x scaling_factor (float32), micro-batch by micro-batch;
    the posterior's noise from `generator`. With several processes each encodes its share of the
    micro-batches and draws (and drops) the others' posterior noise, so every rank's generator
    stays where one process's would be; the latents are then gathered."""
    from diffusers.utils.torch_utils import randn_tensor

    parameter = next(vae.parameters())
    mine = world.share(len(pixels))
    out = []
    for i in range(0, len(pixels), micro):
        if mine.start <= i < mine.stop:
            x = pixels[i:i + micro].to(parameter.device, parameter.dtype)
            out.append(vae.encode(x).latent_dist.sample(generator=generator).float())
        else:  # another rank's micro-batch: the same draw DiagonalGaussianDistribution.sample makes
            randn_tensor((min(micro, len(pixels) - i), *latent_shape(vae, pixels.shape[-1])), generator=generator,
                         device=parameter.device, dtype=parameter.dtype)
    return world.gather(torch.cat(out)) * vae.config.scaling_factor


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    """(channels, side, side) of the VAE's latents of `resolution`-px images."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return vae.config.latent_channels, resolution // factor, resolution // factor


def build_trainable_unet(pipeline, scratch: bool, seed: int):
    """The U-Net trained: a fresh one of the pipeline U-Net's config (scratch, seeded), or a
    float32 copy of the pipeline's."""
    from diffusers import UNet2DConditionModel

    if scratch:
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config(pipeline.unet.config)
    unet = UNet2DConditionModel.from_config(pipeline.unet.config)
    unet.load_state_dict({k: v.float() for k, v in pipeline.unet.state_dict().items()}, strict=True)
    return unet


@dataclass
class LatentStep:
    """One optimisation step on a batch of images: what the training run and its timing share."""
    unet: torch.nn.Module
    ema: torch.nn.Module
    vae: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: object
    contexts: torch.Tensor  # class prompts' hidden states; the last row is ""
    recipe: dict
    pairing: object | None  # training_methods.NoisePairing; None: independent Gaussian noise
    autocast: bool
    world: World = World()
    guard: LossGuard = field(default_factory=lambda: LossGuard("the U-Net"))
    last_noise_input: dict = field(default_factory=dict)  # what the pairing saw (tests)

    def latents_and_noise(self, images, labels, generator):
        """The batch's latents, prompt rows and (paired) noise, as the seed draws them."""
        flips = torch.rand(len(images), generator=generator) < 0.5 if self.recipe["random_flip"] else \
            torch.zeros(len(images), dtype=torch.bool)
        micro = self.recipe["micro_batch_size"] or len(images) // self.world.size
        latents = encode_latents(self.vae, to_model_input(images, flips), generator, micro, self.world)
        y = labels.clone()
        if self.recipe["prompt_dropout"] > 0:
            y[torch.rand(len(y), generator=generator) < self.recipe["prompt_dropout"]] = len(self.contexts) - 1
        if self.pairing is None:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        else:  # Immiscible: the noise permuted (or picked) for the latents; t is drawn after it
            self.last_noise_input = {"latents": latents}
            noise = self.pairing.pair(latents, generator)
        return latents, y, noise

    def __call__(self, it: int, images, labels, generator) -> float:
        latents, y, noise = self.latents_and_noise(images, labels, generator)
        t = torch.randint(self.schedule.config.num_train_timesteps, (len(latents),), generator=generator)
        t = t.to(latents.device)
        noisy = self.schedule.add_noise(latents, noise, t)
        micro = self.recipe["micro_batch_size"] or len(latents) // self.world.size
        mine = self.world.share(len(latents))  # everything, in one process
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(mine.start, mine.stop, micro):
            part = slice(i, min(i + micro, mine.stop))
            with torch.autocast(latents.device.type, dtype=torch.float16, enabled=self.autocast):
                pred = self.unet(noisy[part], t[part], encoder_hidden_states=self.contexts[y[part].to(latents.device)]).sample
            # the whole (global) batch's mean MSE, as micro-batch sums
            loss = torch.nn.functional.mse_loss(pred.float(), noise[part].float()) * (len(pred) / len(latents))
            if self.world.size == 1:
                self.guard.check(loss, it + 1)
            self.scaler.scale(loss).backward()
            total += loss.item()
        if self.world.size > 1:  # every rank stops together at a NaN or inf anywhere
            total = self.world.sum(total, latents.device)
            self.guard.check(torch.tensor(total), it + 1)
            self.world.sum_gradients(self.unet.parameters())
        warmup_lr(self.optimizer, self.recipe["lr"], self.recipe["warmup"], it)
        self.scaler.unscale_(self.optimizer)
        if self.recipe["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.recipe["max_grad_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        update_ema(self.ema, self.unet, ema_decay_at(it + 1, self.recipe["ema_decay"]))
        return total


def make_step(pipeline, *, scratch: bool, recipe: dict, components, seed: int, prompts, device,
              precision: str, world: World = World()) -> LatentStep:
    """The models, optimiser and pairing of a run (VAE and text encoder frozen, in fp16 with
    precision fp16)."""
    from .training import noise_pairing

    device = torch.device(device)
    half = precision == "fp16"
    frozen = torch.float16 if half else torch.float32
    unet = build_trainable_unet(pipeline, scratch, seed).to(device)
    if recipe["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    from diffusers import UNet2DConditionModel

    ema = UNet2DConditionModel.from_config(pipeline.unet.config).to(device)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    vae = pipeline.vae.to(device).eval().requires_grad_(False)
    pipeline.text_encoder.to(device).eval().requires_grad_(False)
    if half:  # the seed casts the frozen models to the mixed-precision dtype
        vae.to(frozen), pipeline.text_encoder.to(frozen)
    contexts = class_contexts(pipeline, prompts, device, torch.float16 if half else torch.float32)
    schedule = training_schedule(pipeline.scheduler)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe["lr"], betas=(0.9, 0.999),
                                  weight_decay=recipe["weight_decay"], eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=half and device.type == "cuda")
    return LatentStep(unet, ema, vae, optimizer, scaler, schedule, contexts, recipe,
                      noise_pairing(components, schedule), autocast=half and device.type == "cuda", world=world)


def train_latent_unet(pipeline, data: ClassImages, *, scratch: bool, train: dict, components, seed: int,
                      output: str, snapshots: dict | None = None, device="cpu", precision: str = "fp32",
                      workers: int = 0, resolution: int, random_flip: bool = True, init_sha256: str | None = None,
                      log=print, stop_after: int | None = None, world: World = World()) -> dict:
    """One (regime, method, seed) run; `train`: iterations, batch_size, lr and RECIPE_DEFAULTS'
    keys; `snapshots`: {iteration: path} of EMA weights to keep. Resumable. Returns a summary.
    `world`: this process's rank among data-parallel processes (diffrepro.t2i.data_parallel);
    rank 0 writes every file."""
    recipe = {**RECIPE_DEFAULTS, **train, "random_flip": random_flip}
    iterations, batch_size = recipe["iterations"], recipe["batch_size"]
    micro = recipe["micro_batch_size"] or batch_size // world.size
    if batch_size % (world.size * micro):
        raise ValueError(f"unet_training: batch_size {batch_size} must split into {world.size} process(es) x "
                         f"whole micro-batches of {micro}; set micro_batch_size to a divisor of "
                         f"{batch_size // world.size if batch_size % world.size == 0 else 'batch_size / processes'}")
    log = log if world.main else (lambda *_: None)
    snapshots = dict(snapshots or {})
    generator = torch.Generator().manual_seed(seed)
    step = make_step(pipeline, scratch=scratch, recipe=recipe, components=components, seed=seed,
                     prompts=data.prompts, device=device, precision=precision, world=world)
    resume = resume_path(output)
    fingerprint = json.dumps({"train": recipe, "pairing": list(components or []), "seed": seed,
                              "scratch": scratch, "init": init_sha256, "resolution": resolution,
                              "images": len(data), "precision": precision, "snapshots": sorted(snapshots)},
                             sort_keys=True)
    for turn in (True, False):  # rank 0 first: it deletes a resume file of another run
        if world.main == turn:
            start, history = load_resume(resume, step.unet, step.ema, step.optimizer, generator,
                                         fingerprint=fingerprint, scaler=step.scaler, log=log)
        world.barrier()
    step.guard = LossGuard(str(output), resume, start or None)
    log(f"{'from scratch' if scratch else 'fine-tuning'}: {len(data)} images of {len(data.classes)} classes, "
        f"batch {batch_size} (micro {recipe['micro_batch_size'] or batch_size}), iterations {start}..{iterations}, "
        f"pairing {components or 'none'}, {precision} on {device}")
    began = time.perf_counter()
    order = batch_indices(len(data), batch_size, seed, start, iterations)
    for it, (images, labels) in zip(range(start, iterations),
                                    iterate_batches(data, order, resolution=resolution, workers=workers)):
        loss = step(it, images, labels, generator)
        done = it + 1
        if done % recipe["log_every"] == 0 or done == iterations:
            history.append({"iteration": done, "loss": loss})
            log(f"iter {done}/{iterations} loss {loss:.4f} ({time.perf_counter() - began:.0f} s)")
        if done in snapshots and world.main:
            refuse_nonfinite_weights(snapshots[done], done, ema=step.ema.state_dict())
            save_checkpoint(snapshots[done], step.ema.state_dict(), {"iteration": str(done)})
        if (done % recipe["checkpoint_every"] == 0 or done == iterations or done in snapshots) and world.main:
            save_resume(resume, done, step.unet, step.ema, step.optimizer, generator, history, fingerprint,
                        scaler=step.scaler)
            step.guard.saved_at = done
        if stop_after is not None and done >= stop_after:
            return {"stopped_at": done}
    model_config = json.loads(json.dumps(dict(pipeline.unet.config), default=str))
    metadata = {"model_config": json.dumps(model_config, sort_keys=True),
                "train_config": json.dumps(recipe, sort_keys=True)}
    summary = {"model_config": model_config, "train_config": recipe, "arch": "sd_unet",
               "scratch": scratch, "pairing": list(components or []), "init_sha256": init_sha256,
               "images": len(data), "classes": len(data.classes), "resolution": resolution,
               "parameters": sum(p.numel() for p in step.ema.parameters()), "history": history,
               "final_loss": history[-1]["loss"] if history else None,
               "seconds_this_run": time.perf_counter() - began,
               "sha256": save_checkpoint(output, step.ema.state_dict(), metadata)}
    resume.unlink(missing_ok=True)
    return summary
