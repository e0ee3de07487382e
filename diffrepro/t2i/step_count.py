"""Denoising steps of one text-to-image pipeline call, counted through the pipeline's own step
callback (`callback_on_step_end`), so a method's NFE does not depend on timestep values."""

from __future__ import annotations

from collections import Counter


def count_unet_calls(call, role: str = "model", **kwargs):
    """(samples, Counter) of a pipeline call: one U-Net evaluation per step (the step callback),
    however much of the U-Net a cache skipped in it."""
    steps: Counter = Counter()

    def count(pipe, step_index, timestep, callback_kwargs):
        steps[role] += 1
        return {}

    return call(callback_on_step_end=count, **kwargs), steps
