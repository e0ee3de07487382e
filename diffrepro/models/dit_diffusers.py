"""Our DiT as diffusers' DiTTransformer2DModel, so diffusers' cache hooks (diffusers.hooks.apply_*)
can attach to it: the same weights under diffusers' names, with the key mapping of diffusers'
scripts/convert_dit_to_diffusers.py (the timestep and class embedders copied into every block's
AdaLayerNormZero; q, k, v split from timm's fused qkv).

One difference is fixed here: diffusers' CombinedTimestepLabelEmbeddings builds its sinusoidal
timestep features with `downscale_freq_shift=1` (frequencies 10000^(-k / (half - 1))), DiT's
TimestepEmbedder with 10000^(-k / half) (facebookresearch/DiT models.py). The converted model
gets DiT's (shift 0) so that its outputs are DiT's up to float rounding (tests/test_dit_diffusers.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .dit import DiT


def diffusers_config(dit: DiT) -> dict:
    c = dit.config
    if c.mlp_ratio != 4.0:
        raise ValueError(f"DiTTransformer2DModel has a fixed 4x feed-forward; this DiT's mlp_ratio is {c.mlp_ratio}")
    return dict(num_attention_heads=c.num_heads, attention_head_dim=c.hidden_size // c.num_heads,
                in_channels=c.in_channels, out_channels=dit.out_channels, num_layers=c.depth, dropout=0.0,
                attention_bias=True, sample_size=c.input_size, patch_size=c.patch_size,
                activation_fn="gelu-approximate", num_embeds_ada_norm=c.num_classes, upcast_attention=False,
                norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-6)


def diffusers_state_dict(dit: DiT) -> dict[str, torch.Tensor]:
    sd = dit.state_dict()
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(dit.config.depth):
        block, ours = f"transformer_blocks.{i}", f"blocks.{i}"
        emb = f"{block}.norm1.emb"
        out.update({
            f"{emb}.timestep_embedder.linear_1.weight": sd["t_embedder.mlp.0.weight"],
            f"{emb}.timestep_embedder.linear_1.bias": sd["t_embedder.mlp.0.bias"],
            f"{emb}.timestep_embedder.linear_2.weight": sd["t_embedder.mlp.2.weight"],
            f"{emb}.timestep_embedder.linear_2.bias": sd["t_embedder.mlp.2.bias"],
            f"{emb}.class_embedder.embedding_table.weight": sd["y_embedder.embedding_table.weight"],
            f"{block}.norm1.linear.weight": sd[f"{ours}.adaLN_modulation.1.weight"],
            f"{block}.norm1.linear.bias": sd[f"{ours}.adaLN_modulation.1.bias"],
            f"{block}.attn1.to_out.0.weight": sd[f"{ours}.attn.proj.weight"],
            f"{block}.attn1.to_out.0.bias": sd[f"{ours}.attn.proj.bias"],
            f"{block}.ff.net.0.proj.weight": sd[f"{ours}.mlp.fc1.weight"],
            f"{block}.ff.net.0.proj.bias": sd[f"{ours}.mlp.fc1.bias"],
            f"{block}.ff.net.2.weight": sd[f"{ours}.mlp.fc2.weight"],
            f"{block}.ff.net.2.bias": sd[f"{ours}.mlp.fc2.bias"],
        })
        for name, w, b in zip(("to_q", "to_k", "to_v"), sd[f"{ours}.attn.qkv.weight"].chunk(3, dim=0),
                              sd[f"{ours}.attn.qkv.bias"].chunk(3, dim=0)):
            out[f"{block}.attn1.{name}.weight"], out[f"{block}.attn1.{name}.bias"] = w, b
    return {k: v.clone() for k, v in out.items()}


class DiffusersDiT(nn.Module):
    """forward(x, t, y) -> (N, out_channels, H, W), as our DiT, through DiTTransformer2DModel."""

    def __init__(self, transformer: nn.Module, num_classes: int):
        super().__init__()
        self.transformer = transformer
        self.num_classes = num_classes

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]


def to_diffusers(dit: DiT) -> DiffusersDiT:
    """DiTTransformer2DModel with this DiT's weights (strict load), on its device and dtype."""
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel(**diffusers_config(dit))
    transformer.load_state_dict(diffusers_state_dict(dit), strict=True)
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT's frequencies (module docstring)
    param = next(dit.parameters())
    transformer.to(param.device)
    if param.dtype != torch.float32:
        transformer.to(param.dtype)
    return DiffusersDiT(transformer.eval(), dit.num_classes)
