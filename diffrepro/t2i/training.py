"""Seeded, resumable training of the embedded suite's class-prompt U-Nets (diffusers
UNet2DConditionModel) on the digits: epsilon-prediction MSE, as SD is trained, with the prompt
dropped to "" for 10% of the images so classifier-free guidance has an unconditional model.
The text encoder is frozen (SD's is too); its 11 prompt embeddings are computed once.

With `distil` (BK-SDM or Distill SD XL), the U-Net is a block-removed student initialised from
the teacher's weights and trained on task + output-KD + feature-KD losses (diffrepro.models.bksdm,
diffrepro.models.distill_sdxl). An SDXL-shaped U-Net (added conditioning) is trained on the
pooled text and size ids its pipeline gives it (diffrepro.t2i.components).

With `components` (Immiscible Diffusion, Stable Diffusion version), a noise-pairing training
component (diffrepro.training_methods) replaces the independent noise of each batch, drawn at
the same point of the generator's stream; `init` fine-tunes from a trained U-Net's weights
instead of training from scratch; `snapshots` saves the EMA weights at fixed iterations
(metric-against-iterations curves)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch

from ..checkpoints import save_checkpoint
from ..finite import LossGuard, refuse_nonfinite_weights
from ..training import TrainConfig, load_resume, optimizer_step, resume_path, save_resume
from .components import build_unet, digit_prompt, embedded_time_ids, encode_prompts, encode_prompts_sdxl, is_sdxl_shaped
from ..engines.pipeline import NUM_PROMPT_CLASSES, embedded_text_encoder, make_scheduler, state_dict_sha256

PROMPT_DROPOUT = 0.1


def noise_schedule(t2i: dict):
    """The training betas: those of the pipeline's scheduler config (the DDPM forward process
    that every sampler of the pipeline inverts)."""
    from diffusers import DDPMScheduler

    sampler_config = make_scheduler(t2i["scheduler"]).config
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    return DDPMScheduler(**{k: sampler_config[k] for k in keys})


def train_t2i_unet(unet_config: dict, train: TrainConfig, t2i: dict, images: torch.Tensor,
                   labels: torch.Tensor, output: str, log=print, stop_after: int | None = None,
                   distil: dict | None = None, components: list | None = None,
                   init: dict | None = None, snapshots: dict | None = None) -> dict:
    """`distil`: {"teacher": U-Net, "variant": base|small|tiny|small_sd_xl|tiny_sd_xl,
    "weights": (task, out, feat), "max_grad_norm": clip or None, "snr_gamma": Min-SNR gamma or
    None (Distill SD XL)}; `unet_config` is then the student's (models.students.student_config
    of the teacher's). `components`: training components defining the noise pairing only (None or
    []: independent Gaussian noise, today's stream exactly). `init`: {"state_dict": weights,
    "sha256": their checkpoint's} to fine-tune from. `snapshots`: {iteration: path}."""
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)
    model, ema = build_unet(unet_config), build_unet(unet_config)
    schedule = noise_schedule(t2i)
    kd = _distillation_loss(model, distil, schedule) if distil is not None else None
    if init is not None:
        model.load_state_dict(init["state_dict"], strict=True)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    snapshots = dict(snapshots or {})
    bad = [it for it in snapshots if not 1 <= it <= train.iterations]
    if bad:
        raise ValueError(f"snapshot iterations {bad} outside 1..{train.iterations}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=0.0)
    pairing = noise_pairing(components, schedule)
    sdxl = is_sdxl_shaped(unet_config)
    tokenizer, encoder = embedded_text_encoder(t2i, with_projection=sdxl)
    prompts = [digit_prompt(c) for c in range(NUM_PROMPT_CLASSES)]
    added = None
    if sdxl:
        # rows 0..9: the digit prompts; row 10: zeros, the SDXL pipeline's unconditional prompt
        contexts, pooled = (torch.cat([e, torch.zeros_like(e[:1])]) for e in encode_prompts_sdxl(tokenizer, encoder, prompts))
        added = {"pooled": pooled, "time_ids": embedded_time_ids(unet_config)}
    else:
        # rows 0..9: the digit prompts; row 10: "" (the unconditional prompt)
        contexts = encode_prompts(tokenizer, encoder, prompts + [""])
    resume = resume_path(output)
    # What the run depends on: a resume file from a run with other inputs is not resumed.
    fingerprint = json.dumps({"unet": unet_config, "train": asdict(train), "t2i": training_inputs(t2i),
                              "text_encoder": state_dict_sha256(encoder),
                              "distil": None if distil is None else [distil["variant"],
                                                                     list(distil.get("weights", (1.0, 1.0, 1.0))),
                                                                     state_dict_sha256(distil["teacher"])]
                              # appended only when set: resume files of unclipped runs stay valid
                              + ([distil["max_grad_norm"]] if distil.get("max_grad_norm") is not None else [])
                              + ([{"snr_gamma": distil["snr_gamma"]}] if distil.get("snr_gamma") is not None else []),
                              # present only when set: resume files of plain runs stay valid
                              **({"pairing": list(components)} if components else {}),
                              **({"init": init["sha256"]} if init is not None else {}),
                              **({"snapshots": sorted(snapshots)} if snapshots else {})},
                             sort_keys=True)
    start, history = load_resume(resume, model, ema, optimizer, generator, fingerprint=fingerprint, log=log)

    run = _Run(model, ema, optimizer, generator, schedule, contexts, kd, train, images, labels,
               max_grad_norm=None if distil is None else distil.get("max_grad_norm"), added=added, pairing=pairing,
               guard=LossGuard(str(output), resume, start or None))
    began = time.perf_counter()
    model.train()
    try:
        for it in range(start, train.iterations):
            loss, parts = run.step(it)
            done = it + 1
            if done % train.log_every == 0 or done == train.iterations:
                history.append({"iteration": done, "loss": loss, **parts})
                log(f"iter {done}/{train.iterations} loss {loss:.4f}"
                    + "".join(f" {k} {v:.4f}" for k, v in parts.items()))
            if done in snapshots:
                refuse_nonfinite_weights(snapshots[done], done, ema=ema.state_dict())
                save_checkpoint(snapshots[done], ema.state_dict(), {"iteration": str(done)})
            if done % train.checkpoint_every == 0 or done == train.iterations or done in snapshots:
                save_resume(resume, done, model, ema, optimizer, generator, history, fingerprint)
                run.guard.saved_at = done
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
    finally:
        if kd is not None:
            kd.close()  # the teacher is the caller's: take the feature hooks off it
    metadata = {"model_config": json.dumps(unet_config, sort_keys=True), "train_config": json.dumps(asdict(train))}
    summary = {"model_config": unet_config, "train_config": asdict(train), "arch": "sd_unet",
               "distil": None if distil is None else {"variant": distil["variant"],
                                                      "weights": list(distil.get("weights", (1.0, 1.0, 1.0))),
                                                      "max_grad_norm": distil.get("max_grad_norm"),
                                                      **({"snr_gamma": distil["snr_gamma"]}
                                                         if distil.get("snr_gamma") is not None else {})},
               **({"pairing": list(components)} if components else {}),
               **({"init_sha256": init["sha256"]} if init is not None else {}),
               "parameters": sum(p.numel() for p in ema.parameters()),
               "final_loss": history[-1]["loss"] if history else None, "history": history,
               "seconds_this_run": time.perf_counter() - began,
               "text_encoder_sha256": state_dict_sha256(encoder),
               "sha256": save_checkpoint(output, ema.state_dict(), metadata)}
    resume.unlink(missing_ok=True)
    return summary


def _distillation_loss(model, distil: dict, schedule):
    """Initialise the student `model` from the teacher; the recipe's loss (its hooks on both)."""
    from ..models import bksdm, distill_sdxl
    from ..models.distill_sdxl_config import is_distill_sdxl_variant

    teacher, variant = distil["teacher"].eval().requires_grad_(False), distil["variant"]
    weights = tuple(distil.get("weights", (1.0, 1.0, 1.0)))
    if is_distill_sdxl_variant(variant):
        model.load_state_dict(distill_sdxl.build_student(teacher, variant).state_dict())
        return distill_sdxl.DistillSDXLLoss(teacher, model, variant, weights=weights, snr_gamma=distil.get("snr_gamma"),
                                            alphas_cumprod=schedule.alphas_cumprod)
    model.load_state_dict(bksdm.build_student(teacher, variant).state_dict())
    w_task, w_out, w_feat = weights
    return bksdm.FeatureKD(teacher, model, variant, w_task=w_task, w_out=w_out, w_feat=w_feat)


def noise_pairing(components: list | None, schedule):
    """The pairing part of `components` (None: plain DDPM's independent noise). The U-Net is
    trained as SD is (uniform timesteps, unweighted MSE): components changing anything else
    are refused."""
    if not components:
        return None
    import numpy as np

    from ..training_methods import build_training_method

    method = build_training_method(components, np.asarray(schedule.alphas_cumprod, dtype=np.float64))
    others = sorted(set(method.defined_by) - {"pairing"})
    if others:
        raise ValueError(f"U-Net training takes noise-pairing components only; {components} also "
                         f"define {others}")
    return method.pairing


def training_inputs(t2i: dict) -> dict:
    """The part of the t2i section a U-Net's training depends on (not steps or guidance)."""
    return {"scheduler": t2i["scheduler"], "text_encoder": t2i["text_encoder"]}


@dataclass
class _Run:
    """What one optimisation step needs: the models, the data and the one generator that draws
    batches, prompt drops, timesteps and noise (so a resumed run continues the same stream)."""
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    schedule: object  # diffusers DDPMScheduler: the forward process
    contexts: torch.Tensor  # prompt embeddings; the last row is the unconditional prompt
    kd: object | None  # bksdm.FeatureKD / distill_sdxl.DistillSDXLLoss when distilling
    train: TrainConfig
    images: torch.Tensor
    labels: torch.Tensor
    max_grad_norm: float | None = None  # BK-SDM's distillation clips the gradient norm at 1
    pairing: object | None = None  # training_methods.NoisePairing; None: independent Gaussian noise
    guard: LossGuard = field(default_factory=lambda: LossGuard("a U-Net"))  # stops at a NaN loss
    added: dict | None = None  # SDXL-shaped: {"pooled": rows as contexts, "time_ids": (6,)}

    def step(self, it: int) -> tuple[float, dict]:
        """One step at iteration `it` (0-based); returns the loss and, distilling, its parts."""
        train, generator = self.train, self.generator
        index = torch.randint(len(self.images), (train.batch_size,), generator=generator)
        x0, y = self.images[index], self.labels[index].clone()
        y[torch.rand(train.batch_size, generator=generator) < PROMPT_DROPOUT] = NUM_PROMPT_CLASSES
        t = torch.randint(self.schedule.config.num_train_timesteps, (train.batch_size,), generator=generator)
        if self.pairing is None:
            noise = torch.randn(x0.shape, generator=generator)
        else:  # Immiscible: the noise permuted (or picked) for x0; t was drawn independently above
            noise = self.pairing.pair(x0, generator)
        x_t = self.schedule.add_noise(x0, noise, t)
        # SDXL's added conditioning (none for SD-1.x-shaped U-Nets: their calls are unchanged)
        extra = {} if self.added is None else {"added_cond_kwargs": {
            "text_embeds": self.added["pooled"][y], "time_ids": self.added["time_ids"].expand(len(y), -1)}}
        if self.kd is None:
            prediction = self.model(x_t, t, encoder_hidden_states=self.contexts[y], **extra).sample
            loss, parts = torch.nn.functional.mse_loss(prediction, noise), {}
        else:
            terms = self.kd(x_t, t, self.contexts[y], noise, **extra)
            loss, parts = terms["total"], {k: v.item() for k, v in terms.items() if k != "total"}
        self.guard.check(loss, it + 1)
        optimizer_step(self.optimizer, self.model, self.ema, loss, train, it, self.max_grad_norm)
        return loss.item(), parts


def distil_student_job(*, teacher_path: str, teacher_config: dict, distil: dict, t2i: dict,
                       output: str, log=print) -> dict:
    """Rule distil_student: the BK-SDM / Distill SD XL student of the teacher checkpoint, distilled on the digits."""
    from ..checkpoints import recorded_sha256
    from ..data import load_digits_tensors
    from ..models.students import student_config
    from ..engines.pipeline import load_unet

    teacher = load_unet(teacher_path, teacher_config, "cpu")
    train = TrainConfig(**{k: v for k, v in distil.items()
                           if k not in ("teacher", "variant", "kd_weights", "max_grad_norm", "snr_gamma")})
    images, labels = load_digits_tensors()
    summary = train_t2i_unet(student_config(teacher_config, distil["variant"]), train, t2i, images, labels,
                             output, log=log, distil={"teacher": teacher, "variant": distil["variant"],
                                                      "weights": tuple(distil.get("kd_weights", (1, 1, 1))),
                                                      "max_grad_norm": distil.get("max_grad_norm"),
                                                      "snr_gamma": distil.get("snr_gamma")})
    summary["teacher_sha256"] = recorded_sha256(teacher_path)
    return summary
