"""Distill SD XL at paper scale: a block-removed student of a hub SDXL pipeline's U-Net,
distilled on captioned images as okotaku/diffengine's recipe does it
(configs/distill_sd/{small,tiny}_sd_xl_pokemon_blip.py and their _base_ files:
datasets/pokemon_blip_xl.py, models/{small,tiny}_sd_xl.py, schedules/stable_diffusion_xl_50e.py;
diffengine/models/editors/distill_sd/distill_sd_xl.py, .../stable_diffusion_xl.py):

- data: every image with its caption; SaveImageShape (original height, width), Resize(1024,
  bilinear) of the shorter side, RandomCrop(1024) (crop corner kept), RandomHorizontalFlip(0.5)
  (the crop's left edge becomes the crop's width - its right edge), time_ids = original size + crop corner +
  target size, ToTensor + Normalize(0.5, 0.5); no caption dropout;
- latents: the separate VAE (madebyollin/sdxl-vae-fp16-fix) posterior sample x its scaling
  factor; prompts: both frozen text encoders' penultimate hidden states, concatenated, and the
  second encoder's pooled projection (StableDiffusionXL.encode_prompt);
- noise and timesteps: plain Gaussian, uniform over the scheduler's training steps; target: the
  noise (epsilon) or the velocity, by the scheduler's prediction_type;
- student: the teacher with blocks removed, initialised from it (diffrepro.models.distill_sdxl);
  loss loss_sd + loss_kd + loss_features (1 / 1 / 1), in float32; optional Min-SNR weighting;
- Adafactor (transformers; lr 1e-5, weight decay 1e-2, scale_parameter and relative_step off),
  bf16 autocast on a GPU (AmpOptimWrapper dtype bfloat16), gradients clipped at norm 1, gradient
  checkpointing on the student; no EMA (diffengine's checkpoint hook saves the U-Net itself).

Differences: the randomness (batch order, crops, flips, posterior noise, noise, timesteps) comes
from one seeded generator, so a killed run resumes to the same weights (diffengine draws crops
and flips from Python's and torch's global generators); batches are consecutive slices of
seeded epoch shuffles (no partial batches); one process.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..finite import LossGuard, refuse_nonfinite_weights
from ..io import save_pretrained_atomically
from ..training import load_resume, resume_path, save_resume
from .class_images import batch_indices

METADATA = "metadata.jsonl"  # Hugging Face's imagefolder layout: {"file_name": ..., "text": ...} per line

# diffengine's recipe, the defaults of a `distil_hub.train` block
RECIPE_DEFAULTS = {"epochs": 50, "batch_size": 2, "lr": 1e-5, "weight_decay": 1e-2, "max_grad_norm": 1.0,
                   "resolution": 1024, "random_flip": True, "gradient_checkpointing": True,
                   "weights": [1.0, 1.0, 1.0], "snr_gamma": None, "checkpoint_every": 500, "log_every": 50}


class CaptionedImagesMissing(ValueError):
    pass


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    text: str


def scan_captioned_images(root: str | Path, *, key: str) -> list[CaptionedImage]:
    """The images and captions of an imagefolder directory (its metadata.jsonl), in file order.
    lambdalabs/pokemon-blip-captions saved with datasets' `save_to_disk` is not this layout: export
    it as image files plus metadata.jsonl (docs/paper-scale.md shows how)."""
    root = Path(root)
    index = root / METADATA
    if not index.is_file():
        raise CaptionedImagesMissing(
            f"config key {key}: {root} has no {METADATA}; expected an imagefolder directory: image files and "
            f"one JSON line per image, {{\"file_name\": \"0001.png\", \"text\": \"a caption\"}}")
    items = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            item = CaptionedImage(root / entry["file_name"], str(entry["text"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CaptionedImagesMissing(f"config key {key}: {index} line {n} is not "
                                         f"{{\"file_name\": ..., \"text\": ...}} ({err})") from None
        if not item.path.is_file():
            raise CaptionedImagesMissing(f"config key {key}: {index} line {n} names {item.path}, which does not exist")
        items.append(item)
    if not items:
        raise CaptionedImagesMissing(f"config key {key}: {index} lists no images")
    return sorted(items, key=lambda i: str(i.path))


def prepare_image(path: Path, size: int, generator: torch.Generator, random_flip: bool
                  ) -> tuple[torch.Tensor, list[int]]:
    """(3, size, size) in [-1, 1] and SDXL's time_ids, as diffengine's SDXL training pipeline."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    original = [image.height, image.width]
    image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR)
    top = int(torch.randint(image.height - size + 1, (1,), generator=generator))
    left = int(torch.randint(image.width - size + 1, (1,), generator=generator))
    image = TF.crop(image, top, left, size, size)
    corner = [top, left]
    if random_flip and bool(torch.rand(1, generator=generator) < 0.5):
        image = TF.hflip(image)
        # diffengine's RandomHorizontalFlip: img.width - crop_bottom_right[1], where img is already
        # the crop (width = size): -left. Kept as it is (on square data such as the Pokemon
        # captions the corner is 0 either way); diffusers' SDXL script uses size - left instead.
        corner = [top, image.width - (left + size)]
    pixels = TF.normalize(TF.to_tensor(image), [0.5], [0.5])
    return pixels, original + corner + [size, size]


@torch.no_grad()
def encode_captions(pipeline, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) of StableDiffusionXL.encode_prompt: both encoders' penultimate
    hidden states side by side, the second encoder's pooled projection."""
    from .components import encode_prompts_sdxl

    first, _ = encode_prompts_sdxl(pipeline.tokenizer, pipeline.text_encoder, texts)
    second, pooled = encode_prompts_sdxl(pipeline.tokenizer_2, pipeline.text_encoder_2, texts)
    return torch.cat([first, second], dim=-1), pooled


def iterations_for(epochs: int, images: int, batch_size: int) -> int:
    return math.ceil(epochs * images / batch_size)


def make_optimizer(parameters, recipe: dict):
    from transformers.optimization import Adafactor

    return Adafactor(parameters, lr=recipe["lr"], weight_decay=recipe["weight_decay"], scale_parameter=False,
                     relative_step=False)


def train_sdxl_student(pipeline, vae, images: list[CaptionedImage], *, variant: str, train: dict, seed: int,
                       output_dir: str | Path, device="cpu", precision: str = "fp32", log=print,
                       stop_after: int | None = None, fingerprint_extra: dict | None = None) -> dict:
    """Distil `variant` (small_sd_xl / tiny_sd_xl) of `pipeline.unet` on `images`; the student is
    saved with save_pretrained (safetensors) to `output_dir`, replaced as a whole. Resumable
    (a resume file beside `output_dir`). Returns a summary."""
    from ..models.distill_sdxl import DistillSDXLLoss, build_student

    recipe = {**RECIPE_DEFAULTS, **train}
    device = torch.device(device)
    autocast = precision == "bf16" and device.type == "cuda"
    teacher = pipeline.unet.to(device).eval().requires_grad_(False)
    student = build_student(teacher, variant).float().to(device).train()
    if recipe["gradient_checkpointing"]:
        student.enable_gradient_checkpointing()
    vae = vae.to(device).eval().requires_grad_(False)
    for encoder in (pipeline.text_encoder, pipeline.text_encoder_2):
        encoder.to(device).eval().requires_grad_(False)
    schedule = pipeline.scheduler
    alphas = schedule.alphas_cumprod.to(device)
    loss = DistillSDXLLoss(teacher, student, variant, weights=tuple(recipe["weights"]),
                           snr_gamma=recipe["snr_gamma"], alphas_cumprod=alphas)
    optimizer = make_optimizer(student.parameters(), recipe)
    iterations = iterations_for(recipe["epochs"], len(images), recipe["batch_size"])
    generator = torch.Generator().manual_seed(seed)
    output_dir = Path(output_dir)
    resume = resume_path(output_dir)
    fingerprint = json.dumps({"variant": variant, "recipe": recipe, "seed": seed, "images": len(images),
                              "precision": precision, **(fingerprint_extra or {})}, sort_keys=True)
    start, history = load_resume(resume, student, None, optimizer, generator, fingerprint=fingerprint, log=log)
    guard = LossGuard(str(output_dir), resume, start or None)
    log(f"Distill SD XL {variant}: {len(images)} images, batch {recipe['batch_size']}, {recipe['epochs']} epochs = "
        f"{iterations} iterations, from {start}; {precision} on {device}")
    began = time.perf_counter()
    order = batch_indices(len(images), recipe["batch_size"], seed, start, iterations)
    try:
        for it, batch in zip(range(start, iterations), order):
            prepared = [prepare_image(images[i].path, recipe["resolution"], generator, recipe["random_flip"])
                        for i in batch]
            pixels = torch.stack([p for p, _ in prepared]).to(device)
            time_ids = torch.tensor([ids for _, ids in prepared], dtype=torch.float32, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                with torch.no_grad():
                    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator=generator)
                    latents = latents.float() * vae.config.scaling_factor
                    prompt_embeds, pooled = encode_captions(pipeline, [images[i].text for i in batch])
                noise = torch.randn(latents.shape, generator=generator).to(device)
                t = torch.randint(schedule.config.num_train_timesteps, (len(latents),), generator=generator).to(device)
                noisy = schedule.add_noise(latents, noise, t)
                target = noise if schedule.config.prediction_type == "epsilon" else \
                    schedule.get_velocity(latents, noise, t)
                terms = loss(noisy, t, prompt_embeds, target,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
            total = terms["total"]
            guard.check(total, it + 1)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if recipe["max_grad_norm"] is not None:
                torch.nn.utils.clip_grad_norm_(student.parameters(), recipe["max_grad_norm"])
            optimizer.step()
            done = it + 1
            if done % recipe["log_every"] == 0 or done == iterations:
                parts = {k: float(v.detach()) for k, v in terms.items() if k != "total"}
                history.append({"iteration": done, "loss": float(total.detach()), **parts})
                log(f"iter {done}/{iterations} loss {float(total.detach()):.4f} "
                    + " ".join(f"{k} {v:.4f}" for k, v in parts.items()) + f" ({time.perf_counter() - began:.0f} s)")
            if done % recipe["checkpoint_every"] == 0 or done == iterations:
                save_resume(resume, done, student, None, optimizer, generator, history, fingerprint)
                guard.saved_at = done
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
    finally:
        loss.close()  # the teacher is the pipeline's: take the feature hooks off it
    refuse_nonfinite_weights(output_dir, iterations, student=student.state_dict())
    save_pretrained_atomically(student, output_dir)
    resume.unlink(missing_ok=True)
    return {"variant": variant, "recipe": recipe, "iterations": iterations, "images": len(images), "seed": seed,
            "precision": precision, "history": history, "final_loss": history[-1]["loss"] if history else None,
            "parameters": sum(p.numel() for p in student.parameters()),
            "seconds_this_run": time.perf_counter() - began}


def load_vae(spec: dict, *, config_key: str, allow_downloads: bool, device, dtype) -> tuple[object, dict]:
    """The separate VAE of the recipe (a diffusers AutoencoderKL repository), and its weights' sha256."""
    from ..io import sha256_file
    from .hub import diffusers_model_from, resolve_model

    variant = spec.get("variant")
    weights = f"diffusion_pytorch_model{'.' + variant if variant else ''}.safetensors"
    directory = resolve_model(spec["id"], config_key=f"{config_key}.path", path=spec.get("path"),
                              allow_downloads=allow_downloads, allow_patterns=["config.json", weights])
    if not (directory / weights).is_file():
        raise CaptionedImagesMissing(f"config key {config_key}: {directory} has no {weights} (safetensors weights)")
    vae = diffusers_model_from("AutoencoderKL", {"directory": str(directory), "variant": variant}, None)
    return vae.to(device, dtype), {"id": spec["id"], "directory": str(directory), "files": {weights: sha256_file(directory / weights)}}


def distil_hub_student_job(*, model: str, spec: dict, teacher_record: str, directory: str, compute: dict,
                           allow_downloads: bool, output: str, log=print) -> dict:
    """Rule distil_hub_student: the teacher's pipeline from its fetch record, the recipe's VAE,
    the captioned images; writes the student directory and a summary (rule fetch_hub_model then
    pins the directory's weights for the methods)."""
    from ..io import read_json, write_json
    from ..jobs import job_device
    from .hub import load_from_record, verify_record

    key = f"models.{model}.distil_hub"
    images = scan_captioned_images(spec["data"]["images"], key=f"{key}.data.images")  # before any model loads
    record = read_json(teacher_record)
    verify_record(record, teacher_record)
    device = job_device(compute)
    precision = "bf16" if compute["precision"] != "fp32" and device.type == "cuda" else "fp32"
    pipeline = load_from_record(record, as_pipeline=True)  # float32 weights; bf16 autocast on a GPU
    vae, vae_record = load_vae(spec["vae"], config_key=f"{key}.vae", allow_downloads=allow_downloads,
                               device=device, dtype=torch.float32)
    summary = train_sdxl_student(pipeline, vae, images, variant=spec["variant"], train=spec.get("train", {}),
                                 seed=spec.get("seed", 0), output_dir=directory, device=device, precision=precision,
                                 log=log, fingerprint_extra={"teacher": record["base"]["files"],
                                                             "vae": vae_record["files"]})
    summary.update(teacher=record["base"]["id"], vae=vae_record, directory=directory,
                   data=str(spec["data"]["images"]))
    write_json(output, summary)
    return summary
