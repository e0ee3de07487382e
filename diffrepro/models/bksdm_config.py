"""BK-SDM students as configs: which blocks Base, Small and Tiny remove from an SD-1.x shaped
UNet2DConditionModel config. Plain Python (no torch), so the workflow can derive a student's
config while it builds the DAG; diffrepro.models.bksdm builds and distils the students."""

from __future__ import annotations

import copy

# CompVis/stable-diffusion-v1-4, unet/config.json (bookkeeping keys "_class_name" and
# "_diffusers_version": "0.2.2" left out; every other key is diffusers' default).
SD14_UNET_CONFIG: dict = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

VARIANTS = ("base", "small", "tiny")

# U-Net size at 512 px (64x64 latent, 77 tokens of dim 768): (params in M, MACs in G), as
# published; the check in tests/test_bksdm.py and scripts/bksdm_sizes.py compares against these.
PUBLISHED_SIZES = {
    "sd-v1.4": (859.5, 338.7),
    "base": (579.4, 223.8),
    "small": (482.3, 217.7),
    "tiny": (323.4, 205.0),
}

_CROSS_DOWN, _PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
_CROSS_UP, _PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
_MID = "UNetMidBlock2DCrossAttn"
# Config entries that may be given per down stage; Tiny must drop the innermost entry.
_PER_STAGE_KEYS = ("attention_head_dim", "num_attention_heads", "cross_attention_dim",
                   "transformer_layers_per_block", "only_cross_attention")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown BK-SDM variant {variant!r}; expected one of {VARIANTS}")


def _check_teacher(cfg: dict, variant: str) -> int:
    """Validate that ``cfg`` is SD-1.x shaped; return its number of stages."""
    def bad(problem: str) -> ValueError:
        return ValueError(f"BK-SDM {variant!r} cannot be built from this U-Net config: {problem}")

    channels = list(cfg.get("block_out_channels", ()))
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    n = len(channels)
    if n < 2 or len(down) != n or len(up) != n:
        raise bad(f"needs >= 2 stages with one down and one up block type each "
                  f"(got {n} channels, {len(down)} down, {len(up)} up types)")
    if cfg.get("layers_per_block", 2) != 2:
        # BK-SDM removes one of two (down) / three (up) residual+attention pairs per stage.
        raise bad(f"layers_per_block must be 2, got {cfg.get('layers_per_block')!r}")
    if cfg.get("mid_block_type", _MID) != _MID:
        raise bad(f"mid_block_type must be {_MID!r}, got {cfg.get('mid_block_type')!r}")
    if cfg.get("reverse_transformer_layers_per_block") is not None:
        raise bad("reverse_transformer_layers_per_block is not supported")
    for i, (d, u) in enumerate(zip(down, reversed(up))):
        # Up stage n-1-i mirrors down stage i (same channels, attention iff the down has it).
        if (d, u) not in ((_CROSS_DOWN, _CROSS_UP), (_PLAIN_DOWN, _PLAIN_UP)):
            raise bad(f"down stage {i} is {d!r} but its mirror up stage is {u!r}")
    for key in _PER_STAGE_KEYS:
        value = cfg.get(key)
        if isinstance(value, (list, tuple)) and len(value) != n:
            raise bad(f"{key} has {len(value)} entries for {n} stages")
    if variant == "tiny":
        if down[-2] != _CROSS_DOWN:
            raise bad("the second-innermost down stage must have attention "
                      "(BK-SDM taps its last attention's proj_out)")
        if channels[-1] != channels[-2]:
            # The kept up stage that becomes the innermost one was fed block_out_channels[-1]
            # from below; its weights only fit if that equals the new innermost width.
            raise bad(f"the two innermost stages must have equal widths, got {channels[-2:]}")
    return n


def student_config(teacher_config: dict, variant: str) -> dict:
    """The diffusers config of the BK-SDM student ``variant`` of an SD-1.x shaped U-Net."""
    _check_variant(variant)
    cfg = {k: copy.deepcopy(v) for k, v in dict(teacher_config).items() if not k.startswith("_")}
    n = _check_teacher(cfg, variant)
    cfg["layers_per_block"] = 1                  # Base: one pair per down stage (two per up)
    if variant in ("small", "tiny"):
        cfg["mid_block_type"] = None             # Small: no mid block
    if variant == "tiny":                        # Tiny: no innermost down and up stage
        cfg["block_out_channels"] = list(cfg["block_out_channels"])[:-1]
        cfg["down_block_types"] = list(cfg["down_block_types"])[:-1]
        cfg["up_block_types"] = list(cfg["up_block_types"])[1:]
        for key in _PER_STAGE_KEYS:
            if isinstance(cfg.get(key), (list, tuple)):
                cfg[key] = list(cfg[key])[: n - 1]
    return cfg
