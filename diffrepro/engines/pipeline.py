"""The engine of diffusers text-to-image pipelines (method family "pipeline"): the large
pipeline (the embedded suite's pixel-space U-Net with a seeded text encoder, or a hub pipeline
from its fetch record) and the U-Nets a method swaps in, prompts per image, decoded images
resized to the scoring size."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoints import load_checkpoint
from ..data import to_uint8_nhwc
from ..diffusion.sampling import initial_noise_and_labels
from ..finite import nonfinite_rows
from ..io import read_json
from ..validation import schema_defaults
from ..t2i.components import (build_text_encoder, build_unet, char_tokenizer, digit_prompt, is_sdxl_shaped,
                              unet_step_inputs)
from . import Batch

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


def embedded_text_encoder(t2i: dict, with_projection: bool = False):
    """The embedded suite's frozen text encoder: seeded random weights over a character-level
    CLIP tokenizer, identical in every job (its state-dict hash is recorded). with_projection:
    the projecting encoder SDXL-shaped U-Nets are conditioned on (their pooled text)."""
    spec = t2i["text_encoder"]
    tokenizer = char_tokenizer(spec["max_length"])
    encoder = build_text_encoder(tokenizer, spec["seed"], hidden_size=spec["hidden_size"],
                                 layers=spec["layers"], heads=spec["heads"], with_projection=with_projection)
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
    (output_type "latent" returns the denoised 8x8 digits themselves). An SDXL-shaped U-Net gets
    StableDiffusionXLPipeline the same way."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if is_sdxl_shaped(unet.config):
        # SDXL-shaped (added conditioning): SDXL's pipeline with its second, projecting encoder only
        tokenizer, encoder = embedded_text_encoder(t2i, with_projection=True)
        pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, tokenizer=None, text_encoder_2=encoder,
                                         tokenizer_2=tokenizer, unet=unet, scheduler=make_scheduler(t2i["scheduler"]),
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    tokenizer, encoder = embedded_text_encoder(t2i)
    pipe = StableDiffusionPipeline(vae=None, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(t2i["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CONTROLNET_ROLE = "controlnet"


def build_controlnet(config: dict):
    """diffusers' ControlNetModel of an embedded-suite model entry of arch sd_controlnet: the
    copy of its U-Net's encoder (`unet`: that U-Net's config) with a conditioning embedding of
    `conditioning_channels` channels, random weights (the checkpoint has the trained ones)."""
    from diffusers import ControlNetModel

    extra = {k: v for k, v in config.items() if k != "unet"}
    return ControlNetModel.from_unet(build_unet(config["unet"]), load_weights_from_unet=False, **extra)


def controlnet_pipeline(pipeline, controlnet):
    """The same components in diffusers' ControlNet pipeline (SD or SDXL): T-Stitch's SDXL
    ControlNet scripts run StableDiffusionXLControlNetPipeline around SDXL-base."""
    from diffusers import (StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
                           StableDiffusionXLPipeline)

    cls = StableDiffusionXLControlNetPipeline if isinstance(pipeline, StableDiffusionXLPipeline) \
        else StableDiffusionControlNetPipeline
    out = cls.from_pipe(pipeline, controlnet=controlnet)
    out.set_progress_bar_config(disable=True)
    return out


def load_unet(path: str, config: dict, device) -> torch.nn.Module:
    unet = build_controlnet(config) if "unet" in config else build_unet(config)
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
    check_text_encoder(embedded_encoder(pipeline), checkpoints)
    if CONTROLNET_ROLE in unets:
        pipeline = controlnet_pipeline(pipeline, unets[CONTROLNET_ROLE])
    return pipeline, unets


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_hub_pipeline_models(records: dict[str, str], t2i: dict, device, precision: str):
    """The paper configs' pipelines: weights verified against their fetch records, loaded in
    the configured dtype (the papers run SD in fp16), the scheduler the config names."""
    from ..t2i.hub import load_from_record, verify_record

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
        elif role == CONTROLNET_ROLE:
            from ..t2i.hub import controlnet_from_record

            unets[role] = controlnet_from_record(record, torch_dtype=dtype).to(device)
        else:
            unets[role] = load_from_record(record, as_pipeline=False, torch_dtype=dtype).to(device)
    pipeline.scheduler = make_scheduler(t2i["scheduler"], pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    # decode one image at a time: batches of 1024 px images would otherwise need tens of GB in
    # the fp32-upcast SDXL VAE, and each image's pixels no longer depend on its batch
    pipeline.vae.enable_slicing()
    if CONTROLNET_ROLE in unets:
        pipeline = controlnet_pipeline(pipeline, unets[CONTROLNET_ROLE])
    return pipeline, unets


def embedded_encoder(pipeline):
    """The embedded pipeline's one text encoder (SDXL-shaped: the second, projecting one)."""
    return pipeline.text_encoder if getattr(pipeline, "text_encoder", None) is not None else pipeline.text_encoder_2


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

    from ..t2i.coco import jpeg_roundtrip

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
    steps = getattr(setting, "steps", None)
    return t2i["steps"] if steps is None else steps


def run_batch(spec, setting, pipeline, unets, t2i: dict, seed: int, indices: Sequence[int],
              shape, device, prompts: list[str] | None = None, control_images: list | None = None):
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
    negative = t2i.get("negative_prompt")
    negatives = None if negative is None else [negative] * len(texts)

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
                       callback_on_step_end=on_step_end, **size,
                       **({"negative_prompt": negatives} if negatives is not None else {}), **kwargs)[0]
        if decoded:
            final["images"] = out
            return final["latents"]
        return out

    def decode(latents):
        """For methods that run their own loop (parallel DDIM): the final latents decoded as the
        pipeline's call decodes them (a hub pipeline's VAE; the embedded suite has none)."""
        if decoded:
            vae = pipeline.vae
            with torch.no_grad():
                image = vae.decode(latents.to(device, vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            final["images"] = pipeline.image_processor.postprocess(image, output_type="np")
        return latents

    # What a method that runs its own loop needs of the call: the same prompts, x_T (CPU float32),
    # guidance and steps as `call` uses, and the pipeline's decoding.
    # x_T rounded to the U-Net dtype as the pipeline call receives it (fp16 hub pipelines)
    call.prompts, call.latents, call.labels = texts, noise.to(pipeline.unet.dtype).float(), labels
    call.class_prompts, call.indices, call.negative_prompts = prompts is None, list(indices), negatives
    # paper scale: each prompt's control image (rule control_images), for ControlNet methods
    call.control_images = control_images
    call.size = (shape[2] * pipeline.vae_scale_factor, shape[1] * pipeline.vae_scale_factor)  # (width, height) px
    call.guidance_scale, call.steps, call.decode = t2i["guidance_scale"], steps_of(setting, t2i), decode
    return spec.run(pipeline, unets, call, setting), labels, final.get("images")


class PipelineEngine:
    family = "pipeline"

    def __init__(self, pipeline, unets: dict[str, torch.nn.Module], model_configs: dict[str, dict], t2i: dict,
                 device, prompts: list[str] | None = None, control_images=None):
        self.pipeline, self.roles, self.t2i, self.prompts = pipeline, unets, t2i, prompts
        self.control_images = control_images
        self.device = torch.device(device)
        self.shape = sample_shape(model_configs, pipeline, t2i)

    @classmethod
    def load(cls, *, checkpoints, model_configs, sampling, device, vae_info=None, prompts_path=None,
             control_path=None):
        """`sampling`: the config's t2i section with the compute options; `control_path`: the
        control images of rule control_images (a paper-scale ControlNet method)."""
        from ..t2i.control_images import ControlImages

        device, sampling = torch.device(device), {**schema_defaults("compute"), **sampling}
        pipeline, unets = load_pipeline_models(checkpoints, model_configs, sampling, device,
                                               sampling["precision"])
        control = None if control_path is None else ControlImages(control_path)
        return cls(pipeline, unets, model_configs, sampling, device, read_prompts(prompts_path), control)

    def meta(self) -> dict:
        """The embedded suite's text encoder is rebuilt from a seed in every job: its hash."""
        return {"decoder": None, "text_encoder_sha256": None if self.prompts is not None
                else state_dict_sha256(embedded_encoder(self.pipeline))}

    def steps(self, setting) -> int:
        return steps_of(setting, self.t2i)

    @torch.no_grad()
    def run_batch(self, spec, setting, seed: int, indices: Sequence[int]) -> Batch:
        """Images at the scoring size; samples: the embedded suite's pixels (float32), a hub
        pipeline's final latents (float16)."""
        out, y, decoded = run_batch(spec, setting, self.pipeline, self.roles, self.t2i, seed, indices,
                                    self.shape, self.device, self.prompts, self.control_for(indices))
        x = out.samples.float().cpu()
        if decoded is None:
            samples, images = x.numpy(), to_uint8_nhwc(x)
            nonfinite = nonfinite_rows(samples)
        else:
            samples = x.numpy().astype(np.float16)
            images = fid_images(decoded, self.t2i.get("fid_size"), self.t2i.get("jpeg_quality"))
            # the decoded floats, before the uint8 cast turns a NaN black
            nonfinite = np.union1d(nonfinite_rows(samples), nonfinite_rows(decoded)).astype(np.int64)
        extras = {"samples": samples, **{f"per_image__{k}": v for k, v in out.per_image.items()},
                  **{f"trace__{k}": v for k, v in out.traces.items()}}
        return Batch(images, y.numpy(), out.steps_by_role(self.roles), extras, nonfinite)

    def prepare(self, spec, setting, seed: int, indices: Sequence[int]):
        """A whole pipeline call (text encoding, every step, guidance, decoding: the paper's
        per-image time at batch size 1); its per-image noise is drawn inside it."""
        indices = list(indices)
        control = self.control_for(indices)  # read before: the scripts time the pipeline call alone
        return lambda: run_batch(spec, setting, self.pipeline, self.roles, self.t2i, seed, indices,
                                 self.shape, self.device, self.prompts, control)[0]

    def control_for(self, indices: Sequence[int]) -> list | None:
        """The prompts' control images (verified PIL images), where the method has them."""
        return None if self.control_images is None else self.control_images(list(indices))

    def forward_pass(self, role: str, batch_size: int, seed: int):
        """One U-Net pass as the pipeline runs it: with CFG the unconditional and conditional
        halves in one batch; LCM-SDXL unguided, with its guidance embedding."""
        unet = self.roles[role]
        guided = self.t2i["guidance_scale"] > 1 and self.pipeline.unet.config.get("time_cond_proj_dim") is None
        inputs = unet_step_inputs(unet, batch=batch_size, shape=self.shape,
                                  tokens=(self.pipeline.tokenizer or self.pipeline.tokenizer_2).model_max_length, guided=guided, seed=seed,
                                  device=self.device, dtype=unet.dtype)
        if role == CONTROLNET_ROLE:  # its conditioning image, at pixel size (vae_scale_factor x the latents)
            rows, factor = inputs["sample"].shape[0], self.pipeline.vae_scale_factor
            generator = torch.Generator().manual_seed(seed + 1)
            inputs["controlnet_cond"] = torch.rand(
                (rows, unet.config.conditioning_channels, self.shape[1] * factor, self.shape[2] * factor),
                generator=generator).to(self.device, unet.dtype)
        return lambda: unet(**inputs)

    def flop_modules(self) -> dict[str, torch.nn.Module]:
        """The networks whose forward FLOPs count (engines.flops), by role: the U-Nets only,
        not the text encoder or the VAE."""
        return dict(self.roles)

    def counting(self):
        """While FLOPs are counted: nothing to swap (pipelines run eager here)."""
        return contextlib.nullcontext()

    def extra_costs(self, spec, setting, seed: int, batch_size: int, repeats: int, uniform_batch: bool) -> dict:
        """For methods that evaluate a window of steps at once (parallel DDIM): one U-Net pass
        on window x batch rows, as they call it."""
        if not hasattr(setting, "window"):
            return {"window": None, "window_batch": None}
        from .clock import timed

        window = min(setting.window, self.steps(setting))
        run = self.forward_pass(next(iter(self.roles)), window * batch_size, seed)
        return {"window": window, "window_batch": statistics.median(timed(run, self.device) for _ in range(repeats))}
