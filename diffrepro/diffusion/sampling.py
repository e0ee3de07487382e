"""The sampling loop and per-image seeding."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np
import torch

from .guidance import GuidedDenoiser
from .samplers import Sampler

# (step index, original timestep) -> (name of the model to use, its guided denoiser)
DenoiserPicker = Callable[[int, int], tuple[str, GuidedDenoiser]]


def image_generator(seed: int, index: int) -> torch.Generator:
    """One generator per image, seeded from (global seed, image index) alone."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def initial_noise_and_labels(seed: int, indices: Sequence[int], shape: tuple[int, ...],
                             num_classes: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Generator]]:
    """x_T and class labels for these image indices; the generators continue for DDPM noise.

    Every setting of every method calls this with the same seed, so all of them start from
    the same noise and labels, whatever the batch or shard an image falls in.
    """
    generators = [image_generator(seed, i) for i in indices]
    labels = torch.stack([torch.randint(num_classes, (), generator=g) for g in generators])
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    return noise, labels, generators


@torch.no_grad()
def sample_loop(sampler: Sampler, pick: DenoiserPicker, x: torch.Tensor, y: torch.Tensor,
                generators: Sequence[torch.Generator] | None = None) -> tuple[torch.Tensor, Counter]:
    """Run the sampler from x_T; returns x_0 and how many steps each model ran."""
    steps: Counter = Counter()
    for i, t in enumerate(sampler.timesteps):
        name, denoiser = pick(i, t)
        steps[name] += 1
        x = sampler.step(i, denoiser(x, t, y), x, generators)
    return x, steps
