"""One engine per model family, behind one small interface; the rule bodies (diffrepro.jobs,
diffrepro.timing) use nothing else, so sampling and timing are written once for every family.

An engine is built by `load_engine` from a method's checkpoints (by role), model configs,
sampling section and device, and then

- `run_batch(spec, setting, seed, indices)` -> `Batch`: uint8 images, labels, per-model step
  counts, the method's extras and which images were not finite before the uint8 cast, on the
  fixed per-image noise of those image indices;
- `prepare(spec, setting, seed, indices)` -> a callable that runs the method once on inputs
  drawn beforehand and returns its `MethodOutput` (what timing times);
- `forward_pass(role, batch_size, seed)` -> a callable: one forward pass of that role's model
  as the method's loop calls it (guided), for the ideal time;
- `extra_costs(...)`: family-specific timing extras (a denoiser's loop-only time);
- `flop_modules()` -> {role: nn.Module}: the networks whose forward FLOPs timing counts
  (engines.flops; a pipeline's U-Nets, not its text encoder or VAE), and `counting()`, a
  context in which they run eager for the count;
- `roles` (models by role), `device`, `meta()` (what shard and timing files record about
  the loaded models).

Families are the `family` of a registered method ("denoiser": our DiT and samplers;
"pipeline": a diffusers text-to-image pipeline; "ldm": class-conditional LDM U-Nets, engines.ldm).
Engines are imported lazily: the workflow imports diffrepro without diffusers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

ENGINES = {"denoiser": "diffrepro.engines.denoiser:DenoiserEngine",
           "pipeline": "diffrepro.engines.pipeline:PipelineEngine",
           "ldm": "diffrepro.engines.ldm:LDMEngine"}


@dataclass
class Batch:
    images: np.ndarray                 # uint8 NHWC at the scoring size
    labels: np.ndarray                 # class label, or prompt index
    model_steps: dict[str, int]        # network calls per role (0 for a role never run)
    # "samples" (model space) and the method's per_image__<name>, trace__<name> arrays
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    # positions in the batch whose float output (model-space samples, decoded pixels before
    # the uint8 cast, where a NaN turns black) holds a NaN or inf (diffrepro.finite)
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def engine_class(family: str):
    if family not in ENGINES:
        raise KeyError(f"no engine for method family {family!r}; families: {sorted(ENGINES)}")
    module, name = ENGINES[family].split(":")
    return getattr(importlib.import_module(module), name)


def load_engine(method: str, *, checkpoints: dict[str, str], model_configs: dict[str, dict],
                sampling: dict, device, vae_info: str | None = None, prompts_path: str | None = None,
                control_path: str | None = None):
    """The engine of `method`'s family with the method's models loaded on `device`.
    `vae_info`: a latent denoiser suite's VAE record; `prompts_path`: a text-to-image suite's
    prompt list; `control_path`: its ControlNet's control images (rule control_images). Each
    engine ignores what does not apply to it."""
    from ..methods import get_method

    family = get_method(method).family
    extra = {"control_path": control_path} if family == "pipeline" else {}
    return engine_class(family).load(
        checkpoints=checkpoints, model_configs=model_configs, sampling=sampling, device=device,
        vae_info=vae_info, prompts_path=prompts_path, **extra)
