"""Classifier-free guidance in DiT's style: one batch [x; x], guidance on the first channels."""

from __future__ import annotations

import torch
import torch.nn as nn


class GuidedDenoiser:
    """Runs the model on [x; x] with labels [y; null] and guides epsilon.

    Guidance applies to the first min(`guided_channels`, C) output channels, C being the
    data's channel count, so it never reaches the learned-variance channels; the remaining
    channels (the rest of epsilon and the whole variance) come from the conditional half.
    With C >= `guided_channels` this is DiT's forward_with_cfg (3 channels in the paper's
    code, "for exact reproducibility": 3 of the 4 latent epsilon channels). DiT's code
    slices `[:, :3]` of the whole output, so for C < 3 it also guides variance channels
    (for the 1-channel digits: the one variance channel). We do not: DDPM samples, which
    use the learned variance, differ from DiT's rule there; DDIM and DPM-Solver++ samples,
    which use epsilon only, do not. A scale of 1 runs the conditional model alone, as
    DiT's sample_ddp.py does (its sample.py always runs both halves).
    """

    def __init__(self, model: nn.Module, cfg_scale: float, guided_channels: int = 3,
                 autocast: torch.dtype | None = None):
        self.model = model
        self.cfg_scale = cfg_scale
        self.guided_channels = guided_channels
        # bf16/fp16 (opt-in): the network runs under autocast, the sampler stays in float32
        self.autocast = autocast
        self.null_label = model.null_label  # a torch.compile wrapper forwards attributes

    def _forward(self, x, t, y):
        if self.autocast is None:
            return self.model(x, t, y)
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.model(x, t, y).float()

    def unguided(self) -> "GuidedDenoiser":
        """The same model without guidance (the conditional half alone: one pass, not two)."""
        return GuidedDenoiser(self.model, cfg_scale=1.0, guided_channels=self.guided_channels,
                              autocast=self.autocast)

    @property
    def batch_multiplier(self) -> int:
        return 2 if self.cfg_scale != 1.0 else 1

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """t: one timestep for the batch, or one per row (parallel-in-time samplers)."""
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device).expand(n)
        if self.batch_multiplier == 1:
            return self._forward(x, t, y)
        out = self._forward(torch.cat([x, x]), torch.cat([t, t]),
                         torch.cat([y, torch.full_like(y, self.null_label)]))
        g = min(self.guided_channels, x.shape[1])
        cond, uncond = out[:n], out[n:]
        guided = uncond[:, :g] + self.cfg_scale * (cond[:, :g] - uncond[:, :g])
        return torch.cat([guided, cond[:, g:]], dim=1)
