"""One contract over every registered method (as diffusers runs one SchedulerCommonTest over
every scheduler), on tiny models, for every name `load_plugins()` returns:

(a) settings: a few valid settings give the pinned, distinct, file-name-safe ids (ids name
    result files: an id that changes orphans results); invalid values and unknown keys are
    refused with ValueError;
(b) off = reference exactly: the run a setting is measured against (`reference_run`: the
    setting's `reference()` or the method's configured baseline) is what the method claims
    it is, e.g. T-Stitch at ratio 0 is the large model alone, a parallel sampler converged
    at tolerance 0 is the sequential sampler;
(c) batch-size invariance: per-image generators make an image's sample the same whatever
    batch it is drawn in.

A newly registered method fails here until it declares its contract in CONTRACTS below (a
method with no exact "off" declares `NoExactOff(reason)`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

# The library internals this test uses, all in one place.
from diffrepro.diffusion.guidance import GuidedDenoiser
from diffrepro.diffusion.samplers import make_sampler
from diffrepro.diffusion.sampling import initial_noise_and_labels
from diffrepro.methods import get_method, load_plugins, reference_run

SEED = 3
NUM_CLASSES = 10
DIT_SHAPE = (1, 8, 8)      # tests/conftest.py's tiny DiTs
LATENT_SHAPE = (4, 8, 8)   # tests/t2i_tiny.py's tiny SD U-Nets
STEPS = 8                  # sampler steps where a setting does not fix its own
DEFAULT_SAMPLER = "ddpm"   # draws noise every step: per-image generators matter
T2I_STEPS = 4
LDM_STEPS = 10             # LDM's uniform DDIM grid needs a step count dividing 1000
INDICES = list(range(5))
SPLIT = ([0, 1, 2], [3, 4])  # the same images in two smaller batches


# --------------------------------------------------------------------------------------
# What each method promises
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NoExactOff:
    """The method has no setting that is exactly its reference; `reason` says why."""
    reason: str


@dataclass
class Contract:
    ids: dict[str, dict]                  # pinned setting id -> setting values
    invalid: list[dict]                   # values make_setting must refuse with ValueError
    off: Callable | NoExactOff            # off(ctx): asserts off = reference exactly
    batch: dict                           # the setting of the batch-invariance check
    baseline: dict | None = None          # methods.<name>.baseline, for settings without reference()
    # The tiny DiTs are bitwise batch-invariant on the CPU (tests/test_parallel.py relies on it).
    # A diffusers U-Net's convolutions need not be (oneDNN may block by batch size; bitwise on
    # this machine): a float-noise tolerance, as tests/test_t2i_jobs.py; a wrong seed is O(1).
    batch_atol: float = 0.0
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Tiny models and how the harness calls a method (seeding as diffrepro's sampling jobs do)
# --------------------------------------------------------------------------------------

class Context:
    def __init__(self, dits: dict, t2i: dict, ldms: dict | None = None):
        self.dits, self.t2i, self.ldms = dits, t2i, ldms or {}

    def denoisers(self, roles) -> dict:
        """One tiny DiT per role; "model" (a single-model method) is the large one."""
        return {role: self.dits["large" if role == "model" else role] for role in roles}

    def run(self, name: str, values: dict, indices=INDICES, sampler: str | None = None):
        spec = get_method(name)
        setting = spec.make_setting(values)
        if spec.family == "pipeline":
            pipeline, unets = self.pipeline_for(spec.roles)
            call = pipeline_call(pipeline, indices, getattr(setting, "steps", None) or T2I_STEPS)
            return spec.run(pipeline, unets, call, setting)
        if spec.family == "ldm":  # LDM U-Nets, LDM's DDIM with eta = 1 (noise every step)
            from diffrepro.diffusion.ldm_ddim import LDMDDIMSampler

            noise, labels, generators = initial_noise_and_labels(SEED, indices, DIT_SHAPE, NUM_CLASSES)
            return spec.run({role: self.ldms[role] for role in spec.roles}, LDMDDIMSampler(LDM_STEPS), noise,
                            labels, generators, setting)
        assert spec.family == "denoiser", f"unknown method family {spec.family!r}"
        noise, labels, generators = initial_noise_and_labels(SEED, indices, DIT_SHAPE, NUM_CLASSES)
        return spec.run(self.denoisers(spec.roles), sampler_for(spec, setting, sampler), noise, labels,
                        generators, setting)

    def pipeline_for(self, roles):
        """The pipeline around the large (or only) U-Net, and the U-Nets by role."""
        if "controlnet" in roles:  # the small U-Net with the large one's skeleton takes the residuals
            return self.t2i["controlnet_pipeline"], {"small": self.t2i["small_light"], "large": self.t2i["large"],
                                                     "controlnet": self.t2i["controlnet"]}
        if "large" in roles:
            return self.t2i["pipeline"], {role: self.t2i[role] for role in roles}
        return self.t2i["pipeline"], {"model": self.t2i["large"]}


def sampler_for(spec, setting, configured: str | None = None):
    """The setting's own sampler and steps if it names them, else the configured sampler (by
    default the first one a restricted method supports, else DEFAULT_SAMPLER)."""
    name = (getattr(setting, "sampler", None) or configured
            or (spec.samplers[0] if spec.samplers else DEFAULT_SAMPLER))
    return make_sampler(name, getattr(setting, "steps", None) or STEPS)


def alone(denoiser, sampler_name: str = DEFAULT_SAMPLER, steps: int = STEPS, indices=INDICES):
    """One model through the sampler, written out here: the reference 'off' is compared with."""
    noise, labels, generators = initial_noise_and_labels(SEED, indices, DIT_SHAPE, NUM_CLASSES)
    sampler, x = make_sampler(sampler_name, steps), noise
    with torch.no_grad():
        for i, t in enumerate(sampler.timesteps):
            x = sampler.step(i, denoiser(x, t, labels), x, generators)
    return x


def pipeline_call(pipeline, indices, steps: int):
    """`call(**kwargs)`: the pipeline on the fixed per-image noise, prompts and generators;
    returns the final latents."""
    noise, labels, generators = initial_noise_and_labels(SEED, indices, LATENT_SHAPE, NUM_CLASSES)
    prompts = [f"a handwritten digit {int(label)}" for label in labels]

    def call(**kwargs):
        with torch.no_grad():
            return pipeline(prompts, num_inference_steps=steps, guidance_scale=7.5, latents=noise.clone(),
                            generator=generators, output_type="latent", return_dict=False, **kwargs)[0]
    # what methods running their own loop read (engines.pipeline.run_batch sets the same)
    call.prompts, call.latents, call.labels, call.class_prompts = prompts, noise, labels, True  # digit prompts
    call.indices = list(indices)
    call.guidance_scale, call.steps, call.decode = 7.5, steps, lambda latents: latents
    return call


def reference_of(name: str, values: dict) -> dict:
    return reference_run(name, values, CONTRACTS[name].baseline)


# --------------------------------------------------------------------------------------
# (b) per method: off = reference exactly
# --------------------------------------------------------------------------------------

def assert_differ(a: torch.Tensor, b: torch.Tensor):
    """The models disagree: an 'equal to this model' check below means something."""
    assert not torch.allclose(a, b, atol=1e-3), "the tiny models give the same samples: the check is vacuous"


def off_tstitch(ctx: Context):
    # the configured baseline of every setting: ratio 0 with the setting's own sampler and steps
    for values in ({"ratio": 0.4}, {"ratio": 0.6, "sampler": "dpmsolver++", "steps": 5}):
        ref = reference_of("tstitch", values)
        assert ref == {"method": "tstitch", "params": {**values, "ratio": 0.0}}
        out = ctx.run(ref["method"], ref["params"])
        sampler, steps = values.get("sampler", DEFAULT_SAMPLER), values.get("steps", STEPS)
        assert torch.equal(out.samples, alone(ctx.dits["large"], sampler, steps))
        assert dict(out.model_steps) == {"large": steps}
    small = ctx.run("tstitch", {"ratio": 1.0})
    assert torch.equal(small.samples, alone(ctx.dits["small"])) and dict(small.model_steps) == {"small": STEPS}
    assert_differ(small.samples, alone(ctx.dits["large"]))


def off_tstitch3(ctx: Context):
    ref = reference_of("tstitch3", {"small": 0.2, "medium": 0.4})
    assert ref == {"method": "tstitch3", "params": {"small": 0.0, "medium": 0.0}}
    for values, role in ((ref["params"], "large"), ({"small": 1.0, "medium": 0.0}, "small"),
                         ({"small": 0.0, "medium": 1.0}, "medium")):
        out = ctx.run("tstitch3", values)
        assert torch.equal(out.samples, alone(ctx.dits[role])), (values, role)
        assert dict(out.model_steps) == {role: STEPS}
    assert_differ(alone(ctx.dits["medium"]), alone(ctx.dits["large"]))


def off_parallel(name: str, exact: dict):
    """A parallel DDIM solver at tolerance 0 is its reference, the sequential sampler with the
    same steps (float64 states against float32 arithmetic: rounding only)."""
    def check(ctx: Context):
        ref = reference_of(name, exact)
        assert ref == {"method": "sequential", "params": {"steps": exact["steps"]}}
        # the reference runs with the configured sampler, which a DDIM solver requires be DDIM
        out, sequential = ctx.run(name, exact), ctx.run(ref["method"], ref["params"], sampler="ddim")
        torch.testing.assert_close(out.samples, sequential.samples.to(out.samples.dtype), atol=2e-4, rtol=1e-5)
        if "converged" in out.per_image:
            assert out.per_image["converged"].all()
        # and the sequential run is the DDIM sampler alone
        assert torch.equal(sequential.samples, alone(ctx.dits["large"], "ddim", exact["steps"]))
        loose = ctx.run(name, {**exact, **CONTRACTS[name].extra["loose"]})
        assert not torch.equal(loose.samples, out.samples), "a loose tolerance changed nothing: vacuous"
    return check


def off_sequential(ctx: Context):
    # its own reference: the plain sampler, one call of the one model per step
    assert reference_of("sequential", {"steps": 5}) == {"method": "sequential", "params": {"steps": 5}}
    for sampler in ("ddpm", "ddim"):
        out = ctx.run("sequential", {"steps": STEPS}, sampler=sampler)
        assert torch.equal(out.samples, alone(ctx.dits["large"], sampler)) and dict(out.model_steps) == {"model": STEPS}


def off_dit_cache(name: str, on: dict):
    def check(ctx: Context):
        # its configured baseline is its off: the large DiT as DiTTransformer2DModel, no hook
        from diffrepro.dit_caches import diffusers_denoiser

        baseline = CONTRACTS[name].baseline
        assert reference_of(name, on) == {"method": name, "params": baseline}
        out = ctx.run(name, baseline)
        assert torch.equal(out.samples, alone(diffusers_denoiser(ctx.dits["large"])))
        assert dict(out.model_steps) == {"model": STEPS}
        assert_differ(ctx.run(name, on).samples, out.samples)
    return check


def off_tstitch_taylorseer_dit(ctx: Context):
    """Cache off: T-Stitch with the large DiT converted to DiTTransformer2DModel (no hook); at
    r = 0 that is taylorseer_dit's off, its reference, exactly."""
    from diffrepro.dit_caches import diffusers_denoiser

    assert reference_of("tstitch_taylorseer_dit", {"ratio": 0.5, "cache_interval": 3}) == \
        {"method": "tstitch_taylorseer_dit", "params": {"ratio": 0.0, "cache_interval": 1}}
    noise, labels, generators = initial_noise_and_labels(SEED, INDICES, DIT_SHAPE, NUM_CLASSES)
    models = {"small": ctx.dits["small"], "large": diffusers_denoiser(ctx.dits["large"])}
    spec = get_method("tstitch")
    stitched = spec.run(models, make_sampler(DEFAULT_SAMPLER, STEPS), noise, labels, generators,
                        spec.make_setting({"ratio": 0.5}))
    composed = ctx.run("tstitch_taylorseer_dit", {"ratio": 0.5, "cache_interval": 1})
    assert torch.equal(composed.samples, stitched.samples) and dict(composed.model_steps) == dict(stitched.model_steps)
    assert torch.equal(ctx.run("tstitch_taylorseer_dit", {"ratio": 0.0}).samples,
                       ctx.run("taylorseer_dit", {"cache_interval": 1}).samples)
    on = ctx.run("tstitch_taylorseer_dit", {"ratio": 0.3, "cache_interval": 2, "warmup_steps": 1})
    assert_differ(on.samples, ctx.run("tstitch_taylorseer_dit", {"ratio": 0.3}).samples)


def sequential_ddim_pipeline(ctx: Context, steps: int) -> torch.Tensor:
    """The pipeline's own loop with DDIMScheduler from its config (clip_sample off), written out
    here: what sequential_sd must be."""
    from diffusers import DDIMScheduler

    pipeline = ctx.t2i["pipeline"]
    ddim = type(pipeline)(**{**pipeline.components,
                             "scheduler": DDIMScheduler.from_config(pipeline.scheduler.config, clip_sample=False)})
    ddim.set_progress_bar_config(disable=True)
    return pipeline_call(ddim, INDICES, steps)()


def off_sequential_sd(ctx: Context):
    assert reference_of("sequential_sd", {"steps": 5}) == {"method": "sequential_sd", "params": {"steps": 5}}
    own = ctx.t2i["pipeline"].scheduler
    out = ctx.run("sequential_sd", {"steps": 3})
    assert torch.equal(out.samples, sequential_ddim_pipeline(ctx, 3)) and dict(out.model_steps) == {"model": 3}
    assert ctx.t2i["pipeline"].scheduler is own  # given back after the run


def off_parallel_sd(name: str, exact: dict, loose: dict):
    """At tolerance 0 a parallel solver in the pipeline is sequential_sd (float64 states
    against the pipeline's float32 DDIM steps: rounding only)."""
    def check(ctx: Context):
        ref = reference_of(name, exact)
        assert ref == {"method": "sequential_sd", "params": {"steps": exact["steps"]}}
        out, sequential = ctx.run(name, exact), ctx.run(ref["method"], ref["params"])
        scale = float(sequential.samples.abs().max())
        torch.testing.assert_close(out.samples, sequential.samples, atol=2e-5 * scale, rtol=1e-5)
        assert out.per_image["converged"].all()
        assert not torch.equal(ctx.run(name, {**exact, **loose}).samples, out.samples), "vacuous"
    return check


def off_text_to_image(ctx: Context):
    # the baseline itself ({}): the pipeline exactly as it is, the step count on the side
    ref = reference_of("text_to_image", {})
    assert ref == {"method": "text_to_image", "params": {}}
    out = ctx.run(ref["method"], ref["params"])
    plain = pipeline_call(ctx.t2i["pipeline"], INDICES, T2I_STEPS)()
    assert torch.equal(out.samples, plain)
    assert dict(out.model_steps) == {"model": len(ctx.t2i["pipeline"].scheduler.timesteps)}


def off_tstitch_sd(ctx: Context):
    pipeline = ctx.t2i["pipeline"]
    ref = reference_of("tstitch_sd", {"ratio": 0.5})
    assert ref == {"method": "tstitch_sd", "params": {"ratio": 0.0}}
    large = ctx.run(ref["method"], ref["params"])
    assert torch.equal(large.samples, pipeline_call(pipeline, INDICES, T2I_STEPS)())
    assert dict(large.model_steps) == {"large": T2I_STEPS}
    assert pipeline.unet is ctx.t2i["large"]  # given back after the run
    small = ctx.run("tstitch_sd", {"ratio": 1.0})
    small_pipeline = type(pipeline)(**{**pipeline.components, "unet": ctx.t2i["small"]})
    small_pipeline.set_progress_bar_config(disable=True)
    small_alone = pipeline_call(small_pipeline, INDICES, T2I_STEPS)()
    assert torch.equal(small.samples, small_alone) and dict(small.model_steps) == {"small": T2I_STEPS}
    assert_differ(small.samples, large.samples)


def off_tstitch_controlnet_sd(ctx: Context):
    from diffrepro.engines.pipeline import controlnet_pipeline
    from diffrepro.t2i.controlnet import digit_control

    pipeline, net = ctx.t2i["controlnet_pipeline"], ctx.t2i["controlnet"]
    ref = reference_of("tstitch_controlnet_sd", {"ratio": 0.5})
    assert ref == {"method": "tstitch_controlnet_sd", "params": {"ratio": 0.0}}
    noise, labels, _ = initial_noise_and_labels(SEED, INDICES, LATENT_SHAPE, NUM_CLASSES)
    image, _ = digit_control(INDICES, labels.tolist(), pipeline.vae_scale_factor)
    plain = {"image": image, "controlnet_conditioning_scale": 0.5}
    large = ctx.run(ref["method"], ref["params"])
    assert torch.equal(large.samples, pipeline_call(pipeline, INDICES, T2I_STEPS)(**plain))
    assert dict(large.model_steps) == {"large": T2I_STEPS, "controlnet": T2I_STEPS}
    small = ctx.run("tstitch_controlnet_sd", {"ratio": 1.0})
    small_pipeline = controlnet_pipeline(type(ctx.t2i["pipeline"])(**{**ctx.t2i["pipeline"].components,
                                                                      "unet": ctx.t2i["small_light"]}), net)
    assert torch.equal(small.samples, pipeline_call(small_pipeline, INDICES, T2I_STEPS)(**plain))
    assert dict(small.model_steps) == {"small": T2I_STEPS, "controlnet": T2I_STEPS}
    assert_differ(small.samples, large.samples)
    assert pipeline.unet is ctx.t2i["large"]


def off_tstitch_ldm(ctx: Context):
    from diffrepro.diffusion.ldm_ddim import LDMDDIMSampler
    from diffrepro.diffusion.random_context_guidance import draw_context_seeds

    def ldm_alone(denoiser):
        noise, labels, generators = initial_noise_and_labels(SEED, INDICES, DIT_SHAPE, NUM_CLASSES)
        bound, sampler, x = denoiser.with_contexts(draw_context_seeds(generators)), LDMDDIMSampler(LDM_STEPS), noise
        with torch.no_grad():
            for i, t in enumerate(sampler.timesteps):
                x = sampler.step(i, bound(x, t, labels), x, generators)
        return x

    ref = reference_of("tstitch_ldm", {"ratio": 0.5})
    assert ref == {"method": "tstitch_ldm", "params": {"ratio": 0.0}}
    large, small = ctx.run(ref["method"], ref["params"]), ctx.run("tstitch_ldm", {"ratio": 1.0})
    assert torch.equal(large.samples, ldm_alone(ctx.ldms["large"])) and dict(large.model_steps) == {"large": LDM_STEPS}
    assert torch.equal(small.samples, ldm_alone(ctx.ldms["small"])) and dict(small.model_steps) == {"small": LDM_STEPS}
    assert_differ(small.samples, large.samples)


def off_pipeline_baseline(name: str, on: dict):
    """A pipeline baseline is measured against the plain pipeline with the same steps (one run
    shared by all: sd_scheduler's `pipeline` setting), and at its default, no-op setting it is
    that pipeline exactly, one U-Net call per step (that `on` changes the samples and leaves
    the pipeline plain: tests/test_sd_baselines.py)."""
    def check(ctx: Context):
        pipeline = ctx.t2i["pipeline"]
        steps = {"steps": on["steps"]} if "steps" in on else {}
        assert reference_of(name, on) == {"method": "sd_scheduler",
                                          "params": {"scheduler": "pipeline", "steps": on.get("steps")}}
        off = ctx.run(name, steps)
        assert torch.equal(off.samples, pipeline_call(pipeline, INDICES, on.get("steps", T2I_STEPS))())
        assert dict(off.model_steps) == {"model": len(pipeline.scheduler.timesteps)}
    return check


def off_sd_scheduler(ctx: Context):
    # the configured baseline: the pipeline's own scheduler at t2i.steps, the pipeline as it is
    assert reference_of("sd_scheduler", {"scheduler": "ddim", "steps": 3}) == \
        {"method": "sd_scheduler", "params": {"scheduler": "pipeline", "steps": None}}
    off = ctx.run("sd_scheduler", {})
    assert torch.equal(off.samples, pipeline_call(ctx.t2i["pipeline"], INDICES, T2I_STEPS)())


def off_tstitch_deepcache_sd(ctx: Context):
    # DeepCache off is T-Stitch exactly, at any ratio
    composed = ctx.run("tstitch_deepcache_sd", {"ratio": 0.5, "cache_interval": 1})
    stitched = ctx.run("tstitch_sd", {"ratio": 0.5})
    assert torch.equal(composed.samples, stitched.samples) and composed.model_steps == stitched.model_steps
    assert reference_of("tstitch_deepcache_sd", {"ratio": 0.5, "cache_interval": 2}) == \
        {"method": "tstitch_sd", "params": {"ratio": 0.0}}
    assert reference_of("tstitch_deepcache_sd", {"ratio": 0.5, "steps": 8})["params"] == {"ratio": 0.0, "steps": 8}


# --------------------------------------------------------------------------------------
# The contracts
# --------------------------------------------------------------------------------------

PARATAA_EXACT = {"steps": 6, "window": 4, "order": 2, "memory": 2, "tolerance": 0.0, "relative_tolerance": 0.0}
PICARD_EXACT = {"steps": 6, "window": 4, "tolerance": 0.0}

CONTRACTS: dict[str, Contract] = {
    "tstitch": Contract(
        ids={"r0": {"ratio": 0.0}, "r0.4": {"ratio": 0.4}, "r1": {"ratio": 1.0},
             "ddpm20-r0.2": {"ratio": 0.2, "sampler": "ddpm", "steps": 20},
             "dpmsolver++10-r0.2": {"ratio": 0.2, "sampler": "dpmsolver++", "steps": 10}},
        invalid=[{"ratio": -0.1}, {"ratio": 1.2}, {"ratio": 0.5, "sampler": "euler"},
                 {"ratio": 0.5, "steps": 1}, {"ratio": 0.5, "steps": 10.5}],
        off=off_tstitch, batch={"ratio": 0.5}, baseline={"ratio": 0.0}),
    "tstitch3": Contract(
        ids={"s0-m0": {"small": 0.0, "medium": 0.0}, "s0.2-m0.4": {"small": 0.2, "medium": 0.4},
             "s0.4-m0.2": {"small": 0.4, "medium": 0.2}, "s1-m0": {"small": 1.0, "medium": 0.0}},
        invalid=[{"small": 0.7, "medium": 0.4}, {"small": -0.1, "medium": 0.0}, {"small": 0.0, "medium": 1.5}],
        off=off_tstitch3, batch={"small": 0.3, "medium": 0.4}, baseline={"small": 0.0, "medium": 0.0}),
    "parataa": Contract(
        ids={"n25-w25-k25-m2-tol0.001-rtol0.001-it25": {"steps": 25, "window": 25, "order": 25, "memory": 2},
             "n25-w5-k1-m1-tol0-rtol0-it10": {"steps": 25, "window": 5, "memory": 1, "tolerance": 0.0,
                                               "relative_tolerance": 0.0, "max_iterations": 10},
             "n25-w25-k25-m2-tol0.001-rtol0.001-it25-warm": {"steps": 25, "window": 25, "order": 25,
                                                             "warm_start": True},
             "n25-w25-k25-m2-tol0.001-rtol0.001-it25-var5": {"steps": 25, "window": 25, "order": 25,
                                                             "variation_steps": 5},
             "n25-w5-k1-m3-tol0.001-rtol0.001-it25-initrelease-histrelease": {
                 "steps": 25, "window": 5, "memory": 3, "window_init": "release", "taa_history": "release"}},
        invalid=[{"steps": 0, "window": 1}, {"steps": 10, "window": 11}, {"steps": 10, "window": 4, "order": 5},
                 {"steps": 10, "window": 4, "memory": 0}, {"steps": 10, "window": 4, "tolerance": -1.0},
                 {"steps": 10, "window": 4, "max_iterations": -1}, {"steps": 10, "window": 4, "variation_steps": 11},
                 {"steps": 10, "window": 4, "window_init": "zeros"}, {"steps": 10, "window": 4, "taa_history": "x"}],
        off=off_parallel("parataa", PARATAA_EXACT), batch={"steps": 6, "window": 3, "order": 2, "memory": 2},
        extra={"loose": {"tolerance": 0.5, "relative_tolerance": 0.0}}),
    "picard": Contract(
        ids={"n25-w10-tol0.1-it25": {"steps": 25, "window": 10},
             "n25-w25-tol0-it5": {"steps": 25, "window": 25, "tolerance": 0.0, "max_iterations": 5}},
        invalid=[{"steps": 10, "window": 0}, {"steps": 10, "window": 11}, {"steps": 10, "window": 4, "tolerance": -0.1},
                 {"steps": 10, "window": 4, "max_iterations": -1}],
        off=off_parallel("picard", PICARD_EXACT), batch={"steps": 6, "window": 3, "tolerance": 0.05},
        extra={"loose": {"tolerance": 10.0}}),  # (the random tiny DiT: |x| ~ 500)
    "sequential": Contract(
        ids={"n25": {"steps": 25}, "n100": {"steps": 100}},
        invalid=[{"steps": 0}, {"steps": -5}],
        off=off_sequential, batch={"steps": STEPS}),
    "text_to_image": Contract(
        ids={"default": {}, "steps25": {"steps": 25}},
        invalid=[{"steps": 0}, {"steps": 1001}, {"steps": 2.5}],
        off=off_text_to_image, batch={}, baseline={}, batch_atol=1e-4),
    "tstitch_sd": Contract(
        ids={"r0": {"ratio": 0.0}, "r0.4": {"ratio": 0.4}, "8-r0.25": {"ratio": 0.25, "steps": 8}},
        invalid=[{"ratio": -0.5}, {"ratio": 1.5}, {"ratio": 0.5, "steps": 0}, {"ratio": 0.5, "steps": 2.5}],
        off=off_tstitch_sd, batch={"ratio": 0.5}, baseline={"ratio": 0.0}, batch_atol=1e-4),
    "tstitch_controlnet_sd": Contract(
        ids={"r0-s0.5": {"ratio": 0.0}, "r0.4-s1": {"ratio": 0.4, "scale": 1.0},
             "8-r0.25-s0.5": {"ratio": 0.25, "steps": 8}},
        invalid=[{"ratio": -0.5}, {"ratio": 1.5}, {"ratio": 0.5, "scale": -1.0}, {"ratio": 0.5, "steps": 0}],
        off=off_tstitch_controlnet_sd, batch={"ratio": 0.5}, baseline={"ratio": 0.0}, batch_atol=1e-4),
    "tstitch_ldm": Contract(
        ids={"r0": {"ratio": 0.0}, "r0.3": {"ratio": 0.3}, "r1": {"ratio": 1.0}},
        invalid=[{"ratio": -0.1}, {"ratio": 1.01}],
        off=off_tstitch_ldm, batch={"ratio": 0.5}, baseline={"ratio": 0.0}, batch_atol=1e-4),
    # the text-to-image acceleration baselines (baselines/*_sd.py, sd_scheduler.py)
    "sd_scheduler": Contract(
        ids={"pipeline": {}, "ddim10": {"scheduler": "ddim", "steps": 10},
             "dpmsolver++10": {"scheduler": "dpmsolver++", "steps": 10}, "unipc": {"scheduler": "unipc"}},
        invalid=[{"scheduler": "euler"}, {"scheduler": "ddim", "steps": 0}, {"steps": 2.5}],
        off=off_sd_scheduler,
        batch={"scheduler": "dpmsolver++", "steps": 3}, baseline={"scheduler": "pipeline", "steps": None},
        batch_atol=1e-4),
    "deepcache_sd": Contract(
        ids={"i1-b0": {}, "i3-b0": {"cache_interval": 3}, "10-i2-b4": {"cache_interval": 2, "cache_branch_id": 4,
                                                                       "steps": 10}},
        invalid=[{"cache_interval": 0}, {"cache_branch_id": 12}, {"cache_branch_id": -1}, {"cache_interval": 1.5}],
        off=off_pipeline_baseline("deepcache_sd", {"cache_interval": 2}),
        batch={"cache_interval": 2}, batch_atol=1e-4),
    "tome_sd": Contract(
        ids={"r0": {}, "r0.5": {"ratio": 0.5}, "10-r0.3-d2": {"ratio": 0.3, "max_downsample": 2, "steps": 10}},
        invalid=[{"ratio": -0.1}, {"ratio": 0.8}, {"max_downsample": 3}],
        off=off_pipeline_baseline("tome_sd", {"ratio": 0.5}),
        batch={"ratio": 0.5}, batch_atol=1e-4),
    "pab_sd": Contract(
        ids={"s1-c1": {}, "s2-c6": {"spatial_skip": 2, "cross_skip": 6},
             "s2-c1-t0-1000": {"spatial_skip": 2, "timestep_low": 0, "timestep_high": 1000}},
        invalid=[{"spatial_skip": 0}, {"cross_skip": 0}, {"timestep_low": 800, "timestep_high": 100}],
        off=off_pipeline_baseline("pab_sd", {"spatial_skip": 2, "cross_skip": 2, "timestep_low": -1,
                                             "timestep_high": 1001}),
        batch={"spatial_skip": 2, "cross_skip": 2, "timestep_low": -1, "timestep_high": 1001},
        batch_atol=1e-4),
    "taylorseer_sd": Contract(
        ids={"i1-o1-w3": {}, "i3-o1-w3": {"cache_interval": 3}, "i2-o2-w1": {"cache_interval": 2, "max_order": 2,
                                                                            "warmup_steps": 1}},
        invalid=[{"cache_interval": 0}, {"max_order": -1}, {"cache_interval": 2, "warmup_steps": 0}],
        off=off_pipeline_baseline("taylorseer_sd", {"cache_interval": 2, "warmup_steps": 1}),
        batch={"cache_interval": 2, "warmup_steps": 1}, batch_atol=1e-4),
    "pab_dit": Contract(
        ids={"s1": {}, "s3-t-1-1001": {"skip": 3, "timestep_low": -1, "timestep_high": 1001}},
        invalid=[{"skip": 0}, {"timestep_low": 800, "timestep_high": 100}],
        off=off_dit_cache("pab_dit", {"skip": 3}), baseline={"skip": 1},
        batch={"skip": 3, "timestep_low": -1, "timestep_high": 1001}),
    "taylorseer_dit": Contract(
        ids={"i1-o1-w3": {}, "i3-o1-w2": {"cache_interval": 3, "warmup_steps": 2}},
        invalid=[{"cache_interval": 0}, {"max_order": -1}, {"cache_interval": 2, "warmup_steps": 0}],
        off=off_dit_cache("taylorseer_dit", {"cache_interval": 3}), baseline={"cache_interval": 1},
        batch={"cache_interval": 3, "warmup_steps": 2}),
    "magcache_dit": Contract(
        ids={"e0-k3-r0.2": {}, "e0.06-k2-r0.25": {"threshold": 0.06, "max_skip_steps": 2, "retention_ratio": 0.25}},
        invalid=[{"threshold": -0.1}, {"threshold": float("nan")}, {"threshold": True}, {"max_skip_steps": 0},
                 {"retention_ratio": 1.5}],
        off=off_dit_cache("magcache_dit", {"threshold": 0.5}), baseline={"threshold": 0.0},
        batch={"threshold": 0.5}),
    "tstitch_taylorseer_dit": Contract(
        ids={"r0.4-i1-o1-w3": {"ratio": 0.4}, "r0.4-i2-o1-w3": {"ratio": 0.4, "cache_interval": 2}},
        invalid=[{"ratio": 1.5}, {"ratio": 0.4, "cache_interval": 0}, {"ratio": 0.4, "max_order": -1}],
        off=off_tstitch_taylorseer_dit, baseline={"ratio": 0.0, "cache_interval": 1},
        batch={"ratio": 0.3, "cache_interval": 2, "warmup_steps": 1}),
    "tstitch_deepcache_sd": Contract(
        ids={"r0-i1-b0": {"ratio": 0.0}, "r0.4-i2-b0": {"ratio": 0.4, "cache_interval": 2}},
        invalid=[{"ratio": 1.5}, {"ratio": 0.4, "cache_interval": 0}, {"ratio": 0.4, "cache_branch_id": 12}],
        off=off_tstitch_deepcache_sd, batch={"ratio": 0.25, "cache_interval": 2},
        batch_atol=1e-4),
    "sequential_sd": Contract(
        ids={"n25": {"steps": 25}, "n50": {"steps": 50}},
        invalid=[{"steps": 0}, {"steps": -5}],
        off=off_sequential_sd, batch={"steps": T2I_STEPS}, batch_atol=1e-4),
    "parataa_sd": Contract(
        ids={"n50-w50-k20-m2-tol0.001-rtol0.001-it50": {"steps": 50, "window": 50, "order": 20, "memory": 2},
             "n50-w50-k20-m2-tol0.001-rtol0.001-it50-var10-src-a-cute-dog": {
                 "steps": 50, "window": 50, "order": 20, "variation_steps": 10, "source_prompt": "a cute dog"},
             "n50-w50-k20-m2-tol0.001-rtol0.001-it50-var10": {"steps": 50, "window": 50, "order": 20,
                                                              "variation_steps": 10}},
        invalid=[{"steps": 10, "window": 11}, {"steps": 10, "window": 4, "order": 5},
                 {"steps": 10, "window": 4, "variation_steps": 10}, {"steps": 10, "window": 4, "source_prompt": ""}],
        off=off_parallel_sd("parataa_sd", {**PARATAA_EXACT, "steps": 4, "window": 3},
                            {"tolerance": 0.5, "relative_tolerance": 0.0}),
        batch={"steps": 4, "window": 2, "order": 2, "memory": 2}, batch_atol=1e-4),
    "picard_sd": Contract(
        ids={"n50-w50-tol0.1-it50": {"steps": 50, "window": 50}, "n50-w50-tol0-it50": {"steps": 50, "window": 50,
                                                                                      "tolerance": 0.0}},
        invalid=[{"steps": 10, "window": 0}, {"steps": 10, "window": 4, "tolerance": -0.1}],
        off=off_parallel_sd("picard_sd", {**PICARD_EXACT, "steps": 4, "window": 3}, {"tolerance": 10.0}),
        batch={"steps": 4, "window": 2, "tolerance": 0.05}, batch_atol=1e-4),
}

# Read at collection, before any test loads a config: a config's `plugin:` entries (aliases, the
# same method under another name) are registered later and need no contract of their own.
REGISTERED = sorted(load_plugins())


def contract(name: str) -> Contract:
    if name not in CONTRACTS:
        pytest.fail(f"method {name!r} is registered but declares no contract: add it to CONTRACTS in "
                    f"tests/test_method_contract.py (valid and invalid settings, its exact 'off' or NoExactOff(reason), "
                    f"a setting for the batch check)")
    return CONTRACTS[name]


@pytest.fixture(scope="module")
def ctx(tiny_models):
    from conftest import tiny_dit
    from t2i_tiny import sd_pipeline, sd_unet

    from diffusers import DDPMScheduler

    dits = {"small": GuidedDenoiser(tiny_models["small"], 1.5),
            "medium": GuidedDenoiser(tiny_dit(3, hidden=24), 1.5),
            "large": GuidedDenoiser(tiny_models["large"], 1.5)}
    small, large = sd_unet(1, layers=1), sd_unet(2, layers=2)
    pipeline = sd_pipeline(large)
    # a scheduler that draws noise at every step: the per-image generators are used
    pipeline.scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, clip_sample=False)  # as the pipeline would set it
    from diffrepro.diffusion.random_context_guidance import RandomContextGuidedDenoiser
    from diffrepro.models.ldm_unet import build_ldm_unet

    ldms = {}
    for seed, (role, channels) in enumerate((("small", 8), ("large", 16))):
        torch.manual_seed(seed)
        model = build_ldm_unet(dict(image_size=8, in_channels=1, out_channels=1, model_channels=channels,
                                    channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[2],
                                    num_head_channels=8, context_dim=channels, n_classes=NUM_CLASSES,
                                    norm_num_groups=4))
        ldms[role] = RandomContextGuidedDenoiser(model.eval().requires_grad_(False), 3.0)
    from diffrepro.engines.pipeline import controlnet_pipeline
    from test_tstitch_controlnet_sd import light_sd_unet, trained_like_controlnet

    small_light, controlnet = light_sd_unet(3), trained_like_controlnet(large, 4, conditioning_channels=1)
    return Context(dits, {"pipeline": pipeline, "small": small, "large": large, "small_light": small_light,
                          "controlnet": controlnet, "controlnet_pipeline": controlnet_pipeline(pipeline, controlnet)},
                   ldms)


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------

def test_every_registered_method_and_no_other_has_a_contract():
    assert sorted(CONTRACTS) == REGISTERED


@pytest.mark.parametrize("name", REGISTERED)
def test_settings_round_trip_to_pinned_distinct_ids(name):
    spec, expected = get_method(name), contract(name)
    assert len(expected.ids) >= 2
    for setting_id, values in expected.ids.items():
        setting = spec.make_setting(dict(values))
        assert spec.setting_id(setting) == setting_id, values
        again = spec.make_setting(dict(values))
        assert again == setting and hash(again) == hash(setting)  # frozen: a stable value
        assert spec.setting_id(again) == setting_id
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", setting_id), f"{setting_id!r} is not a safe file name"
    for values in expected.invalid:
        with pytest.raises(ValueError):
            spec.make_setting(dict(values))
    valid = dict(next(iter(expected.ids.values())))
    with pytest.raises(ValueError, match="no setting"):
        spec.make_setting({**valid, "no_such_field": 1})


@pytest.mark.parametrize("name", REGISTERED)
def test_off_is_the_reference_exactly(name, ctx):
    off = contract(name).off
    if isinstance(off, NoExactOff):
        pytest.skip(f"{name}: no exact 'off' ({off.reason})")
    off(ctx)


@pytest.mark.parametrize("name", REGISTERED)
def test_samples_do_not_depend_on_the_batch(name, ctx):
    spec, expected = get_method(name), contract(name)
    whole = ctx.run(name, expected.batch)
    parts = [ctx.run(name, expected.batch, indices=batch) for batch in SPLIT]
    assert whole.samples.shape[0] == len(INDICES)
    assert set(whole.model_steps) <= set(spec.roles) and sum(whole.model_steps.values()) > 0
    split = torch.cat([p.samples for p in parts])
    if expected.batch_atol:
        torch.testing.assert_close(split, whole.samples, atol=expected.batch_atol, rtol=expected.batch_atol)
    else:
        assert torch.equal(split, whole.samples)
    for key, values in whole.per_image.items():
        np.testing.assert_array_equal(np.concatenate([p.per_image[key] for p in parts]), values, err_msg=key)
    # and the images differ from each other: the check compares something
    assert not torch.allclose(whole.samples[0], whole.samples[1])
