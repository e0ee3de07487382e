"""The engine of DiT-style denoisers (method family "denoiser"): our DiT behind classifier-free
guidance, our samplers (DDIM, DDPM, DPM-Solver++), class labels; for a latent suite, a VAE
that decodes the samples to images (diffrepro.decoder)."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoints import load_checkpoint
from ..data import to_uint8_nhwc
from ..diffusion.guidance import GuidedDenoiser
from ..diffusion.samplers import make_sampler
from ..diffusion.sampling import initial_noise_and_labels
from ..finite import nonfinite_rows
from ..io import read_json
from ..validation import schema_defaults
from ..models.dit import DiT, DiTConfig, build_dit
from . import Batch
from .clock import timed

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_dit(path: str | Path, model_config: dict) -> DiT:
    model = build_dit(DiTConfig(**model_config))
    model.load_state_dict(load_checkpoint(path), strict=True)
    return model.eval().requires_grad_(False)


def load_denoisers(checkpoints: dict[str, str], model_configs: dict[str, dict],
                   sampling: dict, device: torch.device | str = "cpu") -> dict[str, GuidedDenoiser]:
    """Guided denoisers on `device`, with the sampling block's precision and compile options."""
    sampling = {**schema_defaults("compute"), **sampling}
    denoisers = {}
    for role in checkpoints:
        model = load_dit(checkpoints[role], model_configs[role]).to(device)
        if sampling["compile"]:
            model = torch.compile(model)
        denoisers[role] = GuidedDenoiser(model, sampling["cfg_scale"], sampling["guided_channels"],
                                         autocast=AUTOCAST_DTYPES[sampling["precision"]])
    return denoisers


def pixels_to_uint8(samples: torch.Tensor):
    """(uint8 images, no positions): pixel-space samples are the images, checked as samples."""
    return to_uint8_nhwc(samples), np.zeros(0, dtype=np.int64)


def sample_geometry(model_configs: dict[str, dict]) -> tuple[tuple[int, int, int], int]:
    """(image shape, number of classes) of the samples; every role's model shares them."""
    config = next(iter(model_configs.values()))
    return (config["in_channels"], config["input_size"], config["input_size"]), config["num_classes"]


def steps_for(setting, sampling: dict) -> int:
    """The sampler's step count: the setting's own if it has one, else the config's."""
    steps = getattr(setting, "steps", None)
    return sampling["steps"] if steps is None else steps


def sampler_name_for(setting, sampling: dict) -> str:
    """The sampler: the setting's own if it names one (a samplers x steps grid), else the config's."""
    return getattr(setting, "sampler", None) or sampling["sampler"]


def sampler_for(setting, sampling: dict):
    """The setting's sampler at the setting's step count."""
    return make_sampler(sampler_name_for(setting, sampling), steps_for(setting, sampling))


class DenoiserEngine:
    family = "denoiser"

    def __init__(self, denoisers: dict[str, GuidedDenoiser], shape, num_classes: int, sampling: dict,
                 device: torch.device | str = "cpu", to_images=pixels_to_uint8, decoder: dict | None = None):
        self.roles, self.shape, self.num_classes = denoisers, tuple(shape), num_classes
        self.sampling, self.device = sampling, torch.device(device)
        # to_images(samples) -> (uint8 images, positions of images whose float pixels are not
        # finite); `decoder`: the VAE's fetch record
        self.to_images, self.decoder = to_images, decoder

    @classmethod
    def load(cls, *, checkpoints, model_configs, sampling, device, vae_info=None, prompts_path=None):
        """With `vae_info` (rule fetch_vae's record) the samples are latents, decoded to images
        by that VAE."""
        denoisers = load_denoisers(checkpoints, model_configs, sampling, device)
        to_images, decoder = pixels_to_uint8, None
        if vae_info is not None:
            from ..decoder import decode_to_uint8, load_vae

            decoder = read_json(vae_info)
            vae = load_vae(decoder, device)
            rule = decoder.get("to_uint8", "dit")  # vae.json records of older builds have no rule: DiT's
            to_images = lambda latents: decode_to_uint8(vae, latents, decoder["scale"], to_uint8=rule)  # noqa: E731
        return cls(denoisers, *sample_geometry(model_configs), sampling, device, to_images, decoder)

    def meta(self) -> dict:
        return {"decoder": self.decoder}

    def steps(self, setting) -> int:
        return steps_for(setting, self.sampling)

    def sampler_for(self, setting):
        """The setting's sampler (None: the configured one); an engine of another family may
        bring its own sampler (engines.ldm)."""
        return sampler_for(setting, self.sampling)

    def _inputs(self, seed: int, indices: Sequence[int]):
        return initial_noise_and_labels(seed, list(indices), self.shape, self.num_classes)

    def run_batch(self, spec, setting, seed: int, indices: Sequence[int]) -> Batch:
        noise, y, generators = self._inputs(seed, indices)
        out = spec.run(self.roles, self.sampler_for(setting), noise.to(self.device),
                       y.to(self.device), generators, setting)
        samples = out.samples.float().cpu()
        extras = {"samples": samples.numpy(),
                  **{f"per_image__{k}": v for k, v in out.per_image.items()},
                  **{f"trace__{k}": v for k, v in out.traces.items()}}
        images, undecodable = self.to_images(samples)
        nonfinite = np.union1d(nonfinite_rows(samples), undecodable).astype(np.int64)
        return Batch(images, y.numpy(), out.steps_by_role(self.roles), extras, nonfinite)

    def prepare(self, spec, setting, seed: int, indices: Sequence[int]):
        """The method on inputs drawn now, outside whatever times the returned call."""
        sampler = self.sampler_for(setting)
        noise, y, generators = self._inputs(seed, indices)
        noise, y = noise.to(self.device), y.to(self.device)
        return lambda: spec.run(self.roles, sampler, noise, y, generators, setting)

    def _forward_inputs(self, batch_size: int, seed: int):
        noise, y, _ = self._inputs(seed, range(batch_size))
        sampler = self.sampler_for(None)
        # the cost of a DiT pass does not depend on t; the middle step's, as the sampler calls it
        return noise.to(self.device), sampler.timesteps[len(sampler.timesteps) // 2], y.to(self.device)

    def forward_pass(self, role: str, batch_size: int, seed: int):
        """One guided forward pass of `role`'s model on a batch of `batch_size` images."""
        noise, t, y = self._forward_inputs(batch_size, seed)
        denoiser = self.roles[role]
        return lambda: denoiser(noise, t, y)

    def flop_modules(self) -> dict[str, torch.nn.Module]:
        """The networks whose forward FLOPs count (engines.flops), by role: each DiT behind its guidance."""
        return {role: denoiser.model for role, denoiser in self.roles.items()}

    @contextlib.contextmanager
    def counting(self):
        """While FLOPs are counted: the eager DiTs in place of torch.compile'd ones (a counter
        sees the ops of eager calls; a compiled graph is counted as traced, if at all)."""
        compiled = {role: d.model for role, d in self.roles.items() if hasattr(d.model, "_orig_mod")}
        try:
            for role, model in compiled.items():
                self.roles[role].model = model._orig_mod
            yield
        finally:
            for role, model in compiled.items():
                self.roles[role].model = model

    def extra_costs(self, spec, setting, seed: int, batch_size: int, repeats: int, uniform_batch: bool) -> dict:
        """For methods that evaluate a window of steps at once: one forward pass on the
        window x batch rows ({"window", "window_batch"}); for whole-batch methods, the loop
        alone ("loop_only_s": method + sampler, the network replaced by a constant)."""
        noise, t, y = self._forward_inputs(batch_size, seed)
        sampler = self.sampler_for(setting)
        costs = {"window": None, "window_batch": None}
        if hasattr(setting, "window"):
            window = min(setting.window, len(sampler.timesteps))
            denoiser = next(iter(self.roles.values()))
            x, labels = noise.repeat(window, 1, 1, 1), y.repeat(window)
            costs = {"window": window, "window_batch": statistics.median(
                [timed(lambda: denoiser(x, t, labels), self.device) for _ in range(repeats)])}
        if uniform_batch:
            stand_ins = {role: _ConstantDenoiser(d(noise, t, y)) for role, d in self.roles.items()}
            times = []
            for _ in range(repeats):
                inputs = self._inputs(seed, range(batch_size))
                noise_b, y_b = inputs[0].to(self.device), inputs[1].to(self.device)
                times.append(timed(lambda: spec.run(stand_ins, sampler, noise_b, y_b, inputs[2], setting),
                                   self.device))
            costs["loop_only_s"] = statistics.median(times)
        return costs


class _ConstantDenoiser:
    """Stands in for a network: returns a fixed output, so a run times only the loop."""

    def __init__(self, output: torch.Tensor):
        self.output = output

    def __call__(self, x, t, y):
        return self.output

    def unguided(self) -> "_ConstantDenoiser":  # GuidedDenoiser's interface for methods
        return self

