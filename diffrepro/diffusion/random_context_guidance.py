"""Classifier-free guidance with a uniform random unconditional context, as T-Stitch samples
LDM (NVlabs/T-Stitch ldm/scripts/sample_imagenet_ddp_t_stitch.py): the class embedding c of
each model is paired with uc = torch.rand_like(c), uniform on [0, 1), drawn once before the
sampling loop, and eps = eps(x, uc) + s * (eps(x, c) - eps(x, uc)) on one [uc; c] batch
(ldm/models/diffusion/ddim.py, p_sample_ddim). LDM's class-conditional models were trained
without label dropout, so they have no null class to guide against.

Seeding: T-Stitch draws both models' uc from the global generator of the batch. Here each
image's uc comes from a seed drawn once from that image's generator, and every model draws
its own uc from a fresh generator at that seed: the draw then does not depend on the batch,
nor on which other model takes part, so a stitch at ratio 0 is the large model alone and at
ratio 1 the small one alone, bit for bit. (Statistically the same thing: each network sees a
uniform vector independent of its noise and label.)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def draw_context_seeds(generators: Sequence[torch.Generator]) -> list[int]:
    """One seed per image, drawn from the image's generator (one draw, whatever the models)."""
    return [int(torch.randint(2 ** 62, (), generator=g)) for g in generators]


def uniform_contexts(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) uniform [0, 1) contexts, image i's from a generator seeded with seeds[i]."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


class RandomContextGuidedDenoiser:
    """An LDM class-conditional model behind guidance against a uniform random context.

    `with_contexts(seeds)` returns the denoiser with each image's unconditional context fixed
    (what a method calls before its loop); called without, as a forward pass for timing is,
    the contexts are drawn from torch's global generator (the cost is the same).
    """

    def __init__(self, model: nn.Module, cfg_scale: float, autocast: torch.dtype | None = None,
                 seeds: Sequence[int] | None = None):
        self.model = model
        self.cfg_scale = cfg_scale
        self.autocast = autocast
        self.seeds = None if seeds is None else list(seeds)

    def with_contexts(self, seeds: Sequence[int]) -> "RandomContextGuidedDenoiser":
        return RandomContextGuidedDenoiser(self.model, self.cfg_scale, self.autocast, seeds)

    def unguided(self) -> "RandomContextGuidedDenoiser":
        return RandomContextGuidedDenoiser(self.model, 1.0, self.autocast, self.seeds)

    @property
    def batch_multiplier(self) -> int:
        return 2 if self.cfg_scale != 1.0 else 1

    def _forward(self, x, t, context):
        if self.autocast is None:
            return self.model(x, t, context=context)
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.model(x, t, context=context).float()

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device).expand(n)
        context = self.model.context(y)
        if self.batch_multiplier == 1:
            return self._forward(x, t, context)
        if self.seeds is None:
            uncond = torch.rand_like(context)
        else:
            if len(self.seeds) != n:
                raise ValueError(f"{len(self.seeds)} context seeds for a batch of {n} images")
            uncond = uniform_contexts(self.seeds, tuple(context.shape[1:])).to(context)
        out_uncond, out_cond = self._forward(torch.cat([x, x]), torch.cat([t, t]),
                                             torch.cat([uncond, context])).chunk(2)
        return out_uncond + self.cfg_scale * (out_cond - out_uncond)


def with_random_contexts(denoiser, seeds: Sequence[int]):
    """The denoiser with its unconditional contexts fixed; a stand-in without contexts (the
    constant denoiser timing uses to measure the loop alone) is returned as it is."""
    bind = getattr(denoiser, "with_contexts", None)
    return denoiser if bind is None else bind(seeds)
