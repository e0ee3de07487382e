"""Rule bodies for text-to-image methods (method family "pipeline"): build the large
pipeline and the U-Nets, sample a shard on the fixed per-image noise, time a setting against
its baseline. The shards and timing files have the same format as the class-conditional
suite's, so scoring, tables and plots are shared."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoints import load_checkpoint
from ..data import to_uint8_nhwc
from ..diffusion.sampling import initial_noise_and_labels
from ..io import read_json, write_json, write_npz
from ..methods import get_method
from ..provenance import provenance
from ..timing import _median_ci, _timed
from .components import build_text_encoder, build_unet, char_tokenizer, digit_prompt, unet_step_inputs

NUM_PROMPT_CLASSES = 10  # the embedded suite's class prompts (one per digit)


def make_scheduler(spec: dict, pipeline_scheduler=None):
    """A diffusers scheduler from {class, config?}: with no config, the class built from the
    pipeline's own scheduler config (e.g. LCMScheduler for LCM-SDXL, as diffusers' docs do)."""
    import diffusers

    cls = getattr(diffusers, spec["class"], None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise ValueError(f"config key t2i.scheduler.class: {spec['class']!r} is not a diffusers scheduler")
    if "config" in spec:
        return cls(**spec["config"])
    if pipeline_scheduler is None:
        raise ValueError("config key t2i.scheduler.config: needed for the embedded suite's pipeline")
    return cls.from_config(pipeline_scheduler.config)


def embedded_text_encoder(t2i: dict):
    """The embedded suite's frozen text encoder: seeded random weights over a character-level
    CLIP tokenizer, identical in every job (its state-dict hash is recorded)."""
    spec = t2i["text_encoder"]
    tokenizer = char_tokenizer(spec["max_length"])
    encoder = build_text_encoder(tokenizer, spec["seed"], hidden_size=spec["hidden_size"],
                                 layers=spec["layers"], heads=spec["heads"])
    return tokenizer, encoder


def state_dict_sha256(module: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def embedded_pipeline(unet, t2i: dict):
    """diffusers' StableDiffusionPipeline over the embedded suite's pixel-space U-Net: no VAE
    (output_type "latent" returns the denoised 8x8 digits themselves)."""
    from diffusers import StableDiffusionPipeline

    tokenizer, encoder = embedded_text_encoder(t2i)
    pipe = StableDiffusionPipeline(vae=None, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(t2i["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_unet(path: str, config: dict, device) -> torch.nn.Module:
    unet = build_unet(config)
    unet.load_state_dict(load_checkpoint(path), strict=True)
    return unet.to(device).eval().requires_grad_(False)


def load_pipeline_models(checkpoints: dict[str, str], model_configs: dict[str, dict], t2i: dict,
                         device, precision: str = "fp32") -> tuple[object, dict[str, torch.nn.Module]]:
    """(the pipeline around the `large` (or only, `model`) U-Net, U-Nets by role); the other
    roles are U-Nets the method swaps in. Checkpoints are the embedded suite's trained U-Nets
    (.safetensors) or hub models (the .hub.json records of rule fetch_hub_model)."""
    if all(str(path).endswith(".hub.json") for path in checkpoints.values()):
        return load_hub_pipeline_models(checkpoints, t2i, device, precision)
    unets = {role: load_unet(path, model_configs[role], device) for role, path in checkpoints.items()}
    pipeline = embedded_pipeline(unets[pipeline_role(unets)], t2i).to(device)
    check_text_encoder(pipeline.text_encoder, checkpoints)
    return pipeline, unets


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_hub_pipeline_models(records: dict[str, str], t2i: dict, device, precision: str):
    """The paper configs' pipelines: weights verified against their fetch records, loaded in
    the configured dtype (the papers run SD in fp16), the scheduler the config names."""
    from .hub import load_from_record, verify_record

    dtype = TORCH_DTYPES[precision]
    if dtype != torch.float32 and torch.device(device).type == "cpu":
        raise RuntimeError(f"compute.precision is {precision}, but this job runs on the CPU (no GPU visible to it): "
                           f"half precision on a CPU would take days. Give the job a GPU (resources: gpu=1, "
                           f"compute.device: cuda) or set compute.precision: fp32.")
    unets, pipeline = {}, None
    for role, path in records.items():
        record = read_json(path)
        verify_record(record, path)
        if role == pipeline_role(records):
            pipeline = load_from_record(record, as_pipeline=True, torch_dtype=dtype).to(device)
            unets[role] = pipeline.unet
        else:
            unets[role] = load_from_record(record, as_pipeline=False, torch_dtype=dtype).to(device)
    pipeline.scheduler = make_scheduler(t2i["scheduler"], pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    # decode one image at a time: batches of 1024 px images would otherwise need tens of GB in
    # the fp32-upcast SDXL VAE, and each image's pixels no longer depend on its batch
    pipeline.vae.enable_slicing()
    return pipeline, unets


def check_text_encoder(encoder, checkpoints: dict[str, str]) -> str:
    """The text encoder is rebuilt from its seed in every job: make sure it is the one each
    U-Net was trained with (recorded in the U-Net's training summary). Returns its hash."""
    digest = state_dict_sha256(encoder)
    for role, path in checkpoints.items():
        summary = Path(str(path).removesuffix(".safetensors") + ".train.json")
        trained_with = read_json(summary).get("text_encoder_sha256") if summary.exists() else None
        if trained_with is not None and trained_with != digest:
            raise RuntimeError(
                f"the text encoder built here (sha256 {digest}) is not the one {role} U-Net {path} was "
                f"trained with ({trained_with}): t2i.text_encoder or the installed torch/transformers "
                f"changed since training. Delete {path} and rerun snakemake to retrain it.")
    return digest


def pipeline_role(roles) -> str:
    return "large" if "large" in roles else "model"


def sample_shape(model_configs: dict[str, dict], pipeline=None, t2i: dict | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of the initial noise: the embedded U-Net's pixels, or a hub
    pipeline's latents at t2i.image_size (default: the U-Net's native size)."""
    if pipeline is not None and getattr(pipeline, "vae", None) is not None:
        factor = pipeline.vae_scale_factor
        size = (t2i or {}).get("image_size") or pipeline.unet.config.sample_size * factor
        return pipeline.unet.config.in_channels, size // factor, size // factor
    config = model_configs[pipeline_role(model_configs)]
    return config["in_channels"], config["sample_size"], config["sample_size"]


def read_prompts(path: str | None) -> list[str] | None:
    """The captions of rule coco_prompts (prompt i for image i); None: the class prompts."""
    return None if path is None else [p["caption"] for p in read_json(path)]


def fid_images(images: np.ndarray, size: int | None, jpeg_quality: int | None = None) -> np.ndarray:
    """Decoded float NHWC images in [0, 1] to uint8 (diffusers' rounding), resized to the
    scoring size with PIL bicubic as BK-SDM's change_img_size does; with jpeg_quality, through
    a JPEG before and after the resize, as BK-SDM's samples are stored (.jpg, quality 75)."""
    from PIL import Image

    from .coco import jpeg_roundtrip

    uint8 = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    if (size is None or uint8.shape[1] == size) and jpeg_quality is None:
        return uint8
    out = []
    for image in uint8:
        picture = jpeg_roundtrip(Image.fromarray(image), jpeg_quality)
        if size is not None and picture.size != (size, size):
            picture = jpeg_roundtrip(picture.resize((size, size), Image.BICUBIC), jpeg_quality)
        out.append(np.asarray(picture, dtype=np.uint8))
    return np.stack(out)


def steps_of(setting, t2i: dict) -> int:
    return getattr(setting, "steps", None) or t2i["steps"]


def run_batch(spec, setting, pipeline, unets, t2i: dict, seed: int, indices: Sequence[int],
              shape, device, prompts: list[str] | None = None):
    """One batch on the fixed per-image noise: (method output, labels, decoded images or None).

    The embedded suite draws a class prompt per image (label = digit) and its pipeline has no
    VAE: the output is the denoised pixels. With a prompt list, image i gets prompt i (label =
    i); the output is then the final latents, and the decoded images come separately."""
    noise, labels, generators = initial_noise_and_labels(seed, list(indices), shape, NUM_PROMPT_CLASSES)
    if prompts is None:
        texts = [digit_prompt(label) for label in labels]
    else:
        labels = torch.as_tensor(list(indices), dtype=torch.int64)
        texts = [prompts[i] for i in indices]
    decoded = getattr(pipeline, "vae", None) is not None
    final: dict = {}

    def call(callback_on_step_end=None, **kwargs):
        def on_step_end(pipe, step_index, timestep, callback_kwargs):
            final["latents"] = callback_kwargs["latents"]  # after the step: the last call has x_0
            return callback_on_step_end(pipe, step_index, timestep, callback_kwargs) if callback_on_step_end else {}

        size = {"height": shape[1] * pipeline.vae_scale_factor, "width": shape[2] * pipeline.vae_scale_factor} \
            if decoded else {}
        # generators: per image, for schedulers that draw noise while sampling (LCM, DDPM)
        out = pipeline(texts, num_inference_steps=steps_of(setting, t2i), guidance_scale=t2i["guidance_scale"],
                       latents=noise.to(device, pipeline.unet.dtype), generator=generators,
                       output_type="np" if decoded else "latent", return_dict=False,
                       callback_on_step_end=on_step_end, **size, **kwargs)[0]
        if decoded:
            final["images"] = out
            return final["latents"]
        return out

    return spec.run(pipeline, unets, call, setting), labels, final.get("images")


@torch.no_grad()
def sample_shard_t2i(*, method: str, setting_values: dict, checkpoints: dict[str, str],
                     model_configs: dict[str, dict], t2i: dict, seed: int, indices: Sequence[int],
                     batch_size: int, output: str, prompts_path: str | None = None, device="cpu",
                     log=print) -> None:
    """One shard: uint8 images at the scoring size, labels (digit, or prompt index), and the
    method's final samples (the embedded suite's pixels; a hub pipeline's latents, float16)."""
    device = torch.device(device)
    spec = get_method(method)
    setting = spec.make_setting(setting_values)
    pipeline, unets = load_pipeline_models(checkpoints, model_configs, t2i, device, t2i.get("precision", "fp32"))
    shape = sample_shape(model_configs, pipeline, t2i)
    prompts = read_prompts(prompts_path)
    images, labels, samples, steps = [], [], [], {}
    began = time.perf_counter()
    for start in range(0, len(indices), batch_size):
        batch = list(indices[start:start + batch_size])
        out, y, decoded = run_batch(spec, setting, pipeline, unets, t2i, seed, batch, shape, device, prompts)
        x = out.samples.float().cpu()
        if decoded is None:
            samples.append(x.numpy())
            images.append(to_uint8_nhwc(x))
        else:
            samples.append(x.numpy().astype(np.float16))
            images.append(fid_images(decoded, t2i.get("fid_size"), t2i.get("jpeg_quality")))
        labels.append(y.numpy())
        steps = out.steps_by_role(unets)
        done = start + len(batch)
        log(f"{method} {spec.setting_id(setting)}: {done}/{len(indices)} images, "
            f"{done / (time.perf_counter() - began):.1f} images/s")
    meta = {"method": method, "params": setting_values, "model_steps": steps, "seed": seed,
            "sampling": t2i, "checkpoints": checkpoints, "device": str(device), "decoder": None,
            "text_encoder_sha256": None if prompts is not None else state_dict_sha256(pipeline.text_encoder)}
    write_npz(output, images=np.concatenate(images), labels=np.concatenate(labels),
              indices=np.asarray(indices, dtype=np.int64), samples=np.concatenate(samples),
              meta=np.asarray(json.dumps(meta, sort_keys=True)))


@torch.no_grad()
def time_t2i_setting(*, method: str, setting_values: dict, baseline: dict, checkpoints: dict[str, str],
                     model_configs: dict[str, dict], t2i: dict, seed: int, timing: dict, config: dict,
                     output: str, prompts_path: str | None = None, device="cpu", log=print) -> dict:
    """Wall-clock of whole pipeline calls (text encoding, every step, guidance; the paper's
    per-image time at timing.batch_size 1), each paired with a run of the baseline setting,
    and the ideal time: steps x one guided U-Net pass, per U-Net."""
    device = torch.device(device)
    spec, base_spec = get_method(method), get_method(baseline["method"])
    setting, base_setting = spec.make_setting(setting_values), base_spec.make_setting(baseline["params"])
    is_baseline = (method, setting) == (baseline["method"], base_setting)
    pipeline, unets = load_pipeline_models(checkpoints, model_configs, t2i, device, t2i.get("precision", "fp32"))
    shape = sample_shape(model_configs, pipeline, t2i)
    batch = list(range(timing["batch_size"]))
    prompts = read_prompts(prompts_path)

    def timed(run_spec, which):
        holder = []
        seconds = _timed(lambda: holder.append(
            run_batch(run_spec, which, pipeline, unets, t2i, seed, batch, shape, device, prompts)[0]), device)
        return seconds, holder[0]

    # One U-Net pass as the pipeline runs it: with CFG the unconditional and conditional halves
    # in one batch; LCM-SDXL unguided, with its guidance embedding.
    guided = t2i["guidance_scale"] > 1 and pipeline.unet.config.get("time_cond_proj_dim") is None
    tokens = pipeline.tokenizer.model_max_length

    def inputs_for(unet):
        return unet_step_inputs(unet, batch=len(batch), shape=shape, tokens=tokens, guided=guided, seed=seed,
                                device=device, dtype=unet.dtype)

    def forward_times(unet) -> list[float]:
        inputs = inputs_for(unet)
        return [_timed(lambda: unet(**inputs), device) for _ in range(timing["forward_repeats"])]

    for _ in range(timing["warmup"]):
        timed(spec, setting)
        for unet in unets.values():
            forward_times(unet)
    runs, base_runs, speedups, pair_ratios, forward = [], [], [], [], {role: [] for role in unets}
    for _ in range(timing["repeats"]):
        seconds, out = timed(spec, setting)
        runs.append(seconds)
        steps = out.steps_by_role(unets)
        if not is_baseline:
            base_runs.append(timed(base_spec, base_setting)[0])
            speedups.append(base_runs[-1] / seconds)
        block = {role: forward_times(unet) for role, unet in unets.items()}
        for role, times in block.items():
            forward[role].extend(times)
        pair_ratios.append(seconds / sum(steps[r] * statistics.median(block[r]) for r in block))
    speedups = speedups or [1.0] * len(runs)
    per_step = {role: statistics.median(v) for role, v in forward.items()}
    result = {
        "method": method, "setting": spec.setting_id(setting), "params": asdict(setting),
        "batch_size": len(batch), "repeats": timing["repeats"], "warmup": timing["warmup"],
        "forward_repeats": timing["forward_repeats"], "times_s": runs, "median_s": statistics.median(runs),
        "model_steps": steps, "per_step_forward_s": per_step, "baseline": baseline,
        "baseline_times_s": base_runs or runs, "speedup_pairs": speedups,
        "speedup_vs_baseline": statistics.median(speedups), "speedup_ci95": _median_ci(speedups),
        "ideal_s": sum(steps[r] * per_step[r] for r in per_step), "pair_ratios": pair_ratios,
        "overhead_fraction": statistics.median(pair_ratios) - 1,
        "forward_s": {"batch": statistics.median(forward[pipeline_role(forward)]), "window": None,
                      "window_batch": None},
        "threads": torch.get_num_threads(), "device": str(device),
        "provenance": provenance(config, seeds={"seed": seed}, files=checkpoints, device=device,
                                 extra={"text_encoder_sha256": None if prompts is not None
                                        else state_dict_sha256(pipeline.text_encoder)}),
    }
    log(f"{method} {result['setting']}: median {result['median_s']:.4f} s per call of "
        f"{len(batch)} image(s), speed-up {result['speedup_vs_baseline']:.3f}x, overhead vs ideal "
        f"{100 * result['overhead_fraction']:+.1f}%")
    write_json(output, result)
    return result
