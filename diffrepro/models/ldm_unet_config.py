"""The config of a class-conditional LDM U-Net (diffrepro.models.ldm_unet), without torch: the
workflow checks it while reading the config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LDMUNetConfig:
    image_size: int               # latent side (32 for the f8 first stage at 256 px)
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]   # downsampling factors with a SpatialTransformer
    num_head_channels: int
    context_dim: int              # the ClassEmbedder's embed_dim
    n_classes: int = 1000
    transformer_depth: int = 1
    norm_num_groups: int = field(default=32)  # LDM's GroupNorm32; the tiny digits models use fewer

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        problems = ldm_config_problems(self)
        if problems:
            raise ValueError("ldm_unet config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "channel_mult": list(self.channel_mult),
                "attention_resolutions": list(self.attention_resolutions)}

    def block_channels(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    def attends(self, level: int) -> bool:
        return 2 ** level in self.attention_resolutions

    def diffusers_config(self) -> dict:
        """UNet2DConditionModel's arguments for this architecture."""
        levels = range(len(self.channel_mult))
        down = ["CrossAttnDownBlock2D" if self.attends(lv) else "DownBlock2D" for lv in levels]
        up = ["CrossAttnUpBlock2D" if self.attends(lv) else "UpBlock2D" for lv in reversed(levels)]
        return {
            "sample_size": self.image_size, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "block_out_channels": self.block_channels(), "layers_per_block": self.num_res_blocks,
            "down_block_types": down, "up_block_types": up, "mid_block_type": "UNetMidBlock2DCrossAttn",
            "cross_attention_dim": self.context_dim, "norm_num_groups": self.norm_num_groups,
            # UNet2DConditionModel reads attention_head_dim as the number of heads per block:
            # LDM's num_head_channels fixes the width of a head, so heads = channels / width
            "attention_head_dim": [c // self.num_head_channels for c in self.block_channels()],
            "transformer_layers_per_block": self.transformer_depth,
            "flip_sin_to_cos": True, "freq_shift": 0, "use_linear_projection": False,
            "downsample_padding": 1, "norm_eps": 1e-5, "act_fn": "silu",
        }


def ldm_config_problems(config: LDMUNetConfig) -> list[str]:
    """What an ldm_unet config gets wrong, each with the fix (empty: fine)."""
    problems = []
    for name in ("image_size", "in_channels", "out_channels", "model_channels", "num_res_blocks",
                 "num_head_channels", "context_dim", "n_classes", "transformer_depth", "norm_num_groups"):
        value = getattr(config, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            problems.append(f"{name} = {value!r} must be a positive integer")
    if problems:
        return problems
    if not config.channel_mult or not all(isinstance(m, int) and m >= 1 for m in config.channel_mult):
        problems.append(f"channel_mult = {list(config.channel_mult)!r} must be a non-empty list of positive integers")
        return problems
    for c in config.block_channels():
        if c % config.num_head_channels:
            problems.append(f"channels {c} (model_channels x channel_mult) are not a multiple of "
                            f"num_head_channels {config.num_head_channels}")
        if c % config.norm_num_groups:
            problems.append(f"channels {c} are not a multiple of norm_num_groups {config.norm_num_groups}")
    bad = [r for r in config.attention_resolutions if r not in [2 ** lv for lv in range(len(config.channel_mult))]]
    if bad:
        problems.append(f"attention_resolutions {bad} are not downsampling factors of this U-Net "
                        f"({[2 ** lv for lv in range(len(config.channel_mult))]})")
    if config.image_size % 2 ** (len(config.channel_mult) - 1):
        problems.append(f"image_size {config.image_size} is not divisible by 2^{len(config.channel_mult) - 1} "
                        f"(one downsampling per level but the last)")
    return problems
