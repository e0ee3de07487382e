"""Parallel-in-time DDIM (ParaTAA, Picard) inside a diffusers SD-1.x pipeline.

The fixed-point solvers of diffrepro.diffusion.parallel take a trajectory (the DDIM step as
X[i+1] = a_i X[i] + b_i eps_i) and a denoiser (x, t, y) -> eps. Here both come from the
pipeline, as the released ParaTAA SD script does (TZW1998/ParaTAA-Diffusion, parallel_sd.py):

- `ddim_scheduler`: `DDIMScheduler.from_config(pipeline.scheduler.config)`, the script's
  swap; `trajectory_of` reads the affine coefficients off it, with the previous timestep and
  final alpha exactly as `DDIMScheduler.step` takes them;
- `PromptDenoiser`: the pipeline's U-Net with classifier-free guidance on the pipeline's own
  prompt embeddings (`encode_prompt`): rows [uncond; text], eps = u + s (c - u), as both the
  pipeline's loop and the script's `parallel_sampling` compute it. `y` picks each row's prompt.

The solvers' state stays on the CPU in float64 (as for DiT); only the U-Net runs on the
pipeline's device and dtype.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ..diffusion.parallel import Trajectory


def ddim_scheduler(scheduler):
    """The script's DDIM: DDIMScheduler built from the pipeline's scheduler config.

    clip_sample is switched off: SD-1.x's own config says so (its scheduler_config.json,
    clip_sample: false), but the embedded suite's PNDM config leaves the key out and DDIM's
    default (True) would clip x0 — a non-affine step the fixed-point form cannot express.
    Thresholding and other prediction types are refused rather than silently changed."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
    if ddim.config.thresholding or ddim.config.prediction_type != "epsilon":
        raise ValueError("parallel DDIM in the pipeline needs an epsilon-predicting U-Net without dynamic "
                         f"thresholding; the scheduler config has prediction_type "
                         f"{ddim.config.prediction_type!r}, thresholding {ddim.config.thresholding}")
    return ddim


@contextlib.contextmanager
def using_scheduler(pipeline, scheduler):
    """Within the block the pipeline samples with `scheduler`; its own is put back after."""
    own = pipeline.scheduler
    # plain attribute swap: DiffusionPipeline.__setattr__ would rewrite its config entry
    object.__setattr__(pipeline, "scheduler", scheduler)
    try:
        yield scheduler
    finally:
        object.__setattr__(pipeline, "scheduler", own)


def trajectory_of(scheduler, steps: int) -> Trajectory:
    """The deterministic (eta = 0) DDIM trajectory of `scheduler` at `steps` steps, in float64.

    Step i at timestep t: x' = sqrt(a') (x - sqrt(1 - a) eps) / sqrt(a) + sqrt(1 - a') eps,
    a = alphas_cumprod[t], a' = alphas_cumprod[t - T // steps] (final_alpha_cumprod below 0),
    as DDIMScheduler.step; the posterior std (the relative tolerance's scale) is the script's
    noise_thr, sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')."""
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    timesteps = scheduler.timesteps.cpu().long()
    a = abar[timesteps]
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], final)
    coef_x = (a_prev / a).sqrt()
    coef_eps = (1 - a_prev).sqrt() - coef_x * (1 - a).sqrt()
    posterior_std = ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
    return Trajectory(timesteps, coef_x, coef_eps, torch.zeros_like(coef_x), posterior_std)


class PromptDenoiser:
    """(x, t, y) -> guided eps of the pipeline's U-Net, y indexing `cond` / `uncond` rows.

    The same call signature as diffrepro.diffusion.guidance.GuidedDenoiser, so the solvers and
    `solve_in_lockstep` run on it unchanged. Inputs and outputs are float32 on the CPU."""

    def __init__(self, unet, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float,
                 scheduler=None):
        self.unet = unet
        self.cond, self.uncond = cond, uncond
        self.guidance_scale = guidance_scale
        self.scheduler = scheduler  # scale_model_input, as the pipeline (DDIM: identity)
        self.evaluations = 0        # rows of x the U-Net ran on (guided: twice as many passes)

    @property
    def guided(self) -> bool:
        return self.uncond is not None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        device, dtype = self.cond.device, self.unet.dtype
        t = torch.as_tensor(t).expand(n).to(device)
        y = torch.as_tensor(y).expand(n).to(device)
        sample = x.to(device, dtype)
        if self.scheduler is not None:
            sample = self.scheduler.scale_model_input(sample, t)
        text = self.cond[y]
        if self.guided:
            sample, t, text = torch.cat([sample, sample]), torch.cat([t, t]), torch.cat([self.uncond[y], text])
        out = self.unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
        if self.guided:
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        self.evaluations += n
        return out.float().cpu()


def prompt_denoiser(pipeline, prompts: Sequence[str], guidance_scale: float, scheduler=None,
                    negative_prompt: str | None = None) -> PromptDenoiser:
    """The pipeline's U-Net and guidance on these prompts (row k: prompt k), embeddings from the
    pipeline's own encode_prompt with the negative prompt (None: empty, the pipeline's default),
    guided when the pipeline would guide (scale > 1). SD-1.x pipelines only (SDXL's added
    conditioning is not passed)."""
    from diffusers import StableDiffusionPipeline

    if not isinstance(pipeline, StableDiffusionPipeline):
        raise ValueError(f"parallel DDIM runs in SD-1.x pipelines (StableDiffusionPipeline); got "
                         f"{type(pipeline).__name__}")
    guided = guidance_scale > 1 and pipeline.unet.config.get("time_cond_proj_dim") is None
    negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
    cond, uncond = pipeline.encode_prompt(list(prompts), pipeline.unet.device, 1, guided, negative_prompt=negative)
    return PromptDenoiser(pipeline.unet, cond, uncond if guided else None, guidance_scale, scheduler)


def solve_in_pipeline(pipeline, call, make_solver, sources: Sequence[str] | None = None):
    """Run one parallel solver per image of `call` (the engine's pipeline call, see
    engines.pipeline.run_batch) on the pipeline's DDIM trajectory; returns MethodOutput.

    make_solver(trajectory, x_T, noise, initial) -> a solver of diffrepro.diffusion.parallel.
    sources: per image, the prompt whose sequential trajectory (same noise) initialises the
    solver (warm start, variation: parallel_sd_winit.py's prompt 1); given, not timed."""
    import time

    from ..diffusion.parallel import sequential_trajectories, solve_in_lockstep, summarize
    from ..methods import MethodOutput

    prompts, x_T = list(call.prompts), call.latents.float().cpu()
    n = len(prompts)
    ddim = ddim_scheduler(pipeline.scheduler)
    trajectory = trajectory_of(ddim, call.steps)
    negatives = getattr(call, "negative_prompts", None)
    denoiser = prompt_denoiser(pipeline, prompts + list(sources or []), call.guidance_scale, ddim,
                               negatives[0] if negatives else None)
    noise = torch.zeros(trajectory.steps, *x_T.shape[1:], dtype=torch.float64)  # eta = 0: unused
    initial, given_s = [None] * n, 0.0
    if sources:
        began = time.perf_counter()
        initial = list(sequential_trajectories(trajectory, denoiser, x_T, torch.arange(n, 2 * n),
                                               noise.expand(n, *noise.shape)))
        given_s = time.perf_counter() - began
    solvers = [make_solver(trajectory, x_T[k], noise, initial[k]) for k in range(n)]
    calls = solve_in_lockstep(solvers, denoiser, torch.arange(n))
    samples, per_image, traces = summarize(solvers)
    return MethodOutput(call.decode(samples), {"model": calls}, per_image, traces, uniform_batch=False,
                        given_s=given_s)
