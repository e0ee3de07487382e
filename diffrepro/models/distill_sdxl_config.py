"""Distill SD XL students as configs: which blocks diffengine's DistillSDXL (after segmind's
distill-sd) removes from an SDXL-shaped UNet2DConditionModel config. Plain Python (no torch), so
the workflow can derive a student's config while it builds the DAG; diffrepro.models.distill_sdxl
builds and distils the students.

Read from okotaku/diffengine, diffengine/models/editors/distill_sd/distill_sd_xl.py
(DistillSDXL._prepare_student): the student is the teacher with ``layers_per_block = 1``
(resnet/attention index 1 of every down stage deleted; in every up stage index 2 moved to index 1)
and, for ``sd_tiny``, ``mid_block = None``. No stage is removed. diffengine's model types are
"sd_small" / "sd_tiny" and its configs name the students small_sd_xl / tiny_sd_xl; we use the
config names. Naming trap: small_sd_xl is BK-SDM's Base pattern, tiny_sd_xl BK-SDM's Small."""

from __future__ import annotations

import copy

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (bookkeeping keys "_class_name" and
# "_diffusers_version" left out; null-valued keys left out, they are diffusers' defaults).
SDXL_BASE_UNET_CONFIG: dict = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_BASE_PARAMS = 2_567_463_684  # its U-Net's parameter count (diffusers, the published weights)

VARIANTS = ("small_sd_xl", "tiny_sd_xl")

_MID = "UNetMidBlock2DCrossAttn"
_MIRRORS = (("CrossAttnDownBlock2D", "CrossAttnUpBlock2D"), ("DownBlock2D", "UpBlock2D"))


def is_distill_sdxl_variant(variant: str) -> bool:
    return variant in VARIANTS


def check_teacher(cfg: dict, variant: str) -> int:
    """Validate that ``cfg`` can be cut as DistillSDXL cuts SDXL; return its number of stages."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Distill SD XL variant {variant!r}; expected one of {VARIANTS}")

    def bad(problem: str) -> ValueError:
        return ValueError(f"Distill SD XL {variant!r} cannot be built from this U-Net config: {problem}")

    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    n = len(cfg.get("block_out_channels", ()))
    if n < 2 or len(down) != n or len(up) != n:
        # distill_sd_xl.py asserts len(up_blocks) == len(down_blocks)
        raise bad(f"needs >= 2 stages with one down and one up block type each "
                  f"(got {n} channels, {len(down)} down, {len(up)} up types)")
    if cfg.get("layers_per_block", 2) != 2:
        # distill_sd_xl.py deletes resnets.1 (down) and resnets.2 (up): two / three per stage
        raise bad(f"layers_per_block must be 2, got {cfg.get('layers_per_block')!r}")
    if cfg.get("mid_block_type", _MID) != _MID:
        # the teacher's mid block is a feature-KD tap (hook "m")
        raise bad(f"mid_block_type must be {_MID!r}, got {cfg.get('mid_block_type')!r}")
    if cfg.get("reverse_transformer_layers_per_block") is not None:
        raise bad("reverse_transformer_layers_per_block is not supported")
    for i, (d, u) in enumerate(zip(down, reversed(up))):
        if (d, u) not in _MIRRORS:
            raise bad(f"down stage {i} is {d!r} but its mirror up stage is {u!r}")
    return n


def student_config(teacher_config: dict, variant: str) -> dict:
    """The diffusers config of diffengine's ``small_sd_xl`` / ``tiny_sd_xl`` of an SDXL-shaped U-Net."""
    cfg = {k: copy.deepcopy(v) for k, v in dict(teacher_config).items() if not k.startswith("_")}
    check_teacher(cfg, variant)
    cfg["layers_per_block"] = 1          # distill_sd_xl.py: config["layers_per_block"] = 1
    if variant == "tiny_sd_xl":
        cfg["mid_block_type"] = None     # distill_sd_xl.py (sd_tiny): unet.mid_block = None
    return cfg
