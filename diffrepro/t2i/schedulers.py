"""Another diffusers scheduler in a text-to-image pipeline for one call: the fewer-steps
baselines (PNDM, DDIM, DPM-Solver++, UniPC), each built from the pipeline's own scheduler
config, so the betas, `steps_offset` and timestep spacing stay the suite's (diffusers' documented
way to swap a pipeline's scheduler: `Scheduler.from_config(pipe.scheduler.config)`)."""

from __future__ import annotations

import contextlib

# name -> (diffusers class, options over the pipeline's config)
SCHEDULERS = {
    "pndm": ("PNDMScheduler", {}),
    # SD-1.x's own DDIM config has clip_sample false; DDIMScheduler's default (true) would clip x_0
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    # DPM-Solver++ (2M), as the T-Stitch samplers figure and diffusers' SD docs
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
PIPELINE = "pipeline"  # the pipeline's configured scheduler, unchanged
NAMES = (PIPELINE, *SCHEDULERS)


def scheduler_from_pipeline(name: str, pipeline_scheduler):
    """The scheduler `name` built from the pipeline scheduler's config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {list(NAMES)}")
    class_name, options = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(pipeline_scheduler.config, **options)


@contextlib.contextmanager
def using_scheduler(pipeline, name: str):
    """Within the block the pipeline samples with scheduler `name` (PIPELINE: its own); its own
    scheduler is put back on exit, also after an error."""
    if name == PIPELINE:
        yield pipeline.scheduler
        return
    own = pipeline.scheduler
    swapped = scheduler_from_pipeline(name, own)
    # plain attribute swap, as diffrepro.t2i.stitch does: DiffusionPipeline.__setattr__ would
    # rewrite the pipeline's config entry
    object.__setattr__(pipeline, "scheduler", swapped)
    try:
        yield swapped
    finally:
        object.__setattr__(pipeline, "scheduler", own)
