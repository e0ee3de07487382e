"""Checks of a UNet2DConditionModel config that need no torch, so the workflow can refuse a bad
U-Net config while it builds the DAG, before any job runs (importing diffusers there would add
~6 s to every snakemake call). Building the model stays the final word: these catch the usual
mistakes (a misspelt key, per-block lists of different lengths) early."""

from __future__ import annotations

# UNet2DConditionModel.__init__'s arguments in the pinned diffusers (0.42.1);
# tests/test_config.py compares them with diffusers' own signature.
UNET_CONFIG_KEYS = frozenset({
    "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
    "down_block_types", "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "dropout", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
    "reverse_transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim",
    "num_attention_heads", "dual_cross_attention", "use_linear_projection", "class_embed_type",
    "addition_embed_type", "addition_time_embed_dim", "num_class_embeds", "upcast_attention",
    "resnet_time_scale_shift", "resnet_skip_time_act", "resnet_out_scale_factor", "time_embedding_type",
    "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim",
    "conv_in_kernel", "conv_out_kernel", "projection_class_embeddings_input_dim", "attention_type",
    "class_embeddings_concat", "mid_block_only_cross_attention", "cross_attention_norm",
    "addition_embed_type_num_heads",
})

# Arguments that may be one value or one value per down block.
PER_BLOCK_KEYS = ("up_block_types", "block_out_channels", "only_cross_attention", "layers_per_block",
                  "attention_head_dim", "num_attention_heads", "cross_attention_dim",
                  "transformer_layers_per_block")

# UNet2DConditionModel's defaults for the keys checked below.
DEFAULT_DOWN_BLOCKS = 4
DEFAULT_BLOCK_OUT_CHANNELS = (320, 640, 1280, 1280)
DEFAULT_NORM_GROUPS = 32


def unet_config_problems(config: dict) -> list[str]:
    """What makes `config` unusable as UNet2DConditionModel's arguments; [] when nothing does."""
    problems = []
    unknown = sorted(set(config) - UNET_CONFIG_KEYS)
    if unknown:
        problems.append(f"unknown keys {unknown} (UNet2DConditionModel has no such arguments)")
    blocks = len(config.get("down_block_types", ()) or ()) or DEFAULT_DOWN_BLOCKS
    for key in PER_BLOCK_KEYS:
        value = config.get(key)
        if isinstance(value, list) and len(value) != blocks:
            problems.append(f"{key} has {len(value)} entries for {blocks} down blocks")
    groups = config.get("norm_num_groups", DEFAULT_NORM_GROUPS)
    channels = config.get("block_out_channels", DEFAULT_BLOCK_OUT_CHANNELS)
    if groups and any(c % groups for c in channels):
        problems.append(f"block_out_channels {list(channels)} are not all divisible by norm_num_groups {groups}")
    return problems
