"""DiT (Peebles & Xie, 2023): a transformer denoiser with adaLN-Zero conditioning.

Written to load the official DiT state dicts unchanged: module names (x_embedder,
t_embedder.mlp, y_embedder.embedding_table, pos_embed, blocks.N.{attn,mlp,adaLN_modulation},
final_layer) and the timm layers (PatchEmbed, Attention, Mlp: diffrepro.models.vit_layers,
equal to timm's) are those of facebookresearch/DiT. The embedded suite uses the same class at tiny sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from .vit_layers import Attention, Mlp, PatchEmbed


@dataclass(frozen=True)
class DiTConfig:
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


# Paper sizes (DiT Table 1); the input size is the latent size (256 px / 8 = 32).
PAPER_SIZES = {
    "DiT-S/2": dict(depth=12, hidden_size=384, patch_size=2, num_heads=6),
    "DiT-B/2": dict(depth=12, hidden_size=768, patch_size=2, num_heads=12),
    "DiT-L/2": dict(depth=24, hidden_size=1024, patch_size=2, num_heads=16),
    "DiT-XL/2": dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --------------------------------------------------------------------------------------
# Embeddings for timesteps and class labels
# --------------------------------------------------------------------------------------

class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies of the timestep (cos first, as GLIDE/DiT), then an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None].to(t.device)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row, the null class, used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < self.dropout_prob
        return torch.where(drop, self.num_classes, labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


# --------------------------------------------------------------------------------------
# Core DiT model
# --------------------------------------------------------------------------------------

class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: shift, scale and gate from the conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                       act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion transformer; forward(x, t, y) -> (N, out_channels, H, W)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * 2 if config.learn_sigma else config.in_channels
        self.patch_size = config.patch_size
        self.num_classes = config.num_classes
        hidden = config.hidden_size

        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels,
                                     hidden, bias=True)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(config.num_classes, hidden, config.class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos embedding, kept as a frozen parameter so the official key loads.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.final_layer = FinalLayer(hidden, config.patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_label(self) -> int:
        return self.num_classes

    def initialize_weights(self) -> None:
        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(basic_init)

        grid = int(self.x_embedder.num_patches ** 0.5)
        pos = sincos_2d_position_embedding(self.pos_embed.shape[-1], grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))

        # Patch embedding initialised like a linear layer, not a conv.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        # adaLN-Zero: every block starts as the identity, the output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed      # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))  # (N, out_channels, H, W)


def build_dit(config: DiTConfig | dict) -> DiT:
    if isinstance(config, dict):
        config = DiTConfig(**config)
    return DiT(config)


def paper_dit(name: str, input_size: int = 32, num_classes: int = 1000) -> DiT:
    """A paper-size DiT (random weights) under its published name, e.g. "DiT-XL/2"."""
    if name not in PAPER_SIZES:
        raise ValueError(f"unknown DiT size {name!r}; choose one of {sorted(PAPER_SIZES)}")
    return DiT(DiTConfig(input_size=input_size, num_classes=num_classes, **PAPER_SIZES[name]))


# --------------------------------------------------------------------------------------
# Sine/cosine positional embedding (MAE's 2-D recipe, as DiT uses it)
# --------------------------------------------------------------------------------------

def sincos_2d_position_embedding(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid*grid, D): half the channels encode the row, half the column."""
    coords = np.arange(grid_size, dtype=np.float32)
    grid_w, grid_h = np.meshgrid(coords, coords)  # w first, as DiT
    emb_h = _sincos_1d(embed_dim // 2, grid_w)
    emb_w = _sincos_1d(embed_dim // 2, grid_h)
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
