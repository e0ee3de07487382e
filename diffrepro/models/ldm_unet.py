"""Class-conditional latent-diffusion U-Net (CompVis latent-diffusion, the cin-ldm-vq-f8 configs
T-Stitch's LDM and LDM-S use), built from diffusers' UNet2DConditionModel.

Why UNet2DConditionModel and not UNet2DModel with a class embedding: in LDM's class-conditional
ImageNet models the class enters only through cross-attention. `ClassEmbedder`
(ldm/modules/encoders/modules.py) maps the label to a (B, 1, D) context with one nn.Embedding,
and openaimodel.UNetModel (use_spatial_transformer, context_dim = D) attends to it; there is no
label term in the timestep embedding (num_classes unset). UNet2DConditionModel's
encoder_hidden_states is that context, block for block: ResBlock = ResnetBlock2D, SpatialTransformer
= Transformer2DModel (conv proj_in/proj_out, self-attn, cross-attn, GEGLU), the middle block
Res-Attn-Res, LDM's cos-then-sin timestep embedding = flip_sin_to_cos, freq_shift 0. It is the
model Stable Diffusion (an LDM) runs in diffusers, and diffusers' own single-file converter
(convert_ldm_unet_checkpoint) maps the CompVis keys to it.

The config takes the CompVis names (`unet_config.params` of the LDM yaml plus the ClassEmbedder's
n_classes) so a user copies them from the paper's config file.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .ldm_unet_config import LDMUNetConfig, ldm_config_problems  # noqa: F401

CONDITIONING_KEY = "cond_stage_model.embedding.weight"  # LDM's ClassEmbedder
UNET_PREFIX = "model.diffusion_model."


class ClassConditionalLDM(nn.Module):
    """LDM's ClassEmbedder + U-Net: eps = unet(x, t, context = embedding(y)[:, None])."""

    def __init__(self, config: LDMUNetConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = config
        self.embedding = nn.Embedding(config.n_classes, config.context_dim)
        self.unet = UNet2DConditionModel(**config.diffusers_config())

    def context(self, y: torch.Tensor) -> torch.Tensor:
        """The cross-attention context of labels y: (B, 1, context_dim), as ClassEmbedder."""
        return self.embedding(y[:, None])

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            context = self.context(y)
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


def build_ldm_unet(config: LDMUNetConfig | dict) -> ClassConditionalLDM:
    return ClassConditionalLDM(config if isinstance(config, LDMUNetConfig) else LDMUNetConfig(**config))


# --- the official checkpoint -----------------------------------------------------------------

def convert_ldm_state_dict(official: dict[str, torch.Tensor], config: LDMUNetConfig | dict,
                           *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """An LDM checkpoint's state dict (model.diffusion_model.*, model_ema.*, cond_stage_model.*)
    -> our keys (embedding.weight, unet.*). The U-Net goes through diffusers' own converter;
    with `use_ema` and an EMA copy present, the EMA U-Net weights, as LDM samples under
    ema_scope (the class embedding has no EMA copy: LitEma covers the diffusion model only)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = config if isinstance(config, LDMUNetConfig) else LDMUNetConfig(**config)
    if CONDITIONING_KEY not in official:
        raise ValueError(f"not a class-conditional LDM checkpoint: no {CONDITIONING_KEY!r} "
                         f"(found e.g. {sorted(official)[:3]})")
    has_ema = sum(k.startswith("model_ema.") for k in official) > 100
    unet = convert_ldm_unet_checkpoint(dict(official), config.diffusers_config(), extract_ema=use_ema and has_ema)
    return {"embedding.weight": official[CONDITIONING_KEY], **{f"unet.{k}": v for k, v in unet.items()}}


def read_ldm_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state dict of a PyTorch-Lightning LDM .ckpt, loaded with weights_only=True (a
    Lightning checkpoint also holds plain-data entries: epoch, global_step, callbacks)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not an LDM checkpoint (a dict with a 'state_dict' of tensors)")
    return state


def compvis_layout(config: LDMUNetConfig | dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an LDM checkpoint of this config, as CompVis' openaimodel.UNetModel
    (use_spatial_transformer, conv_resample, no scale-shift norm) and ClassEmbedder name them.
    Written from the model's constructor, for tests of the converter (no download here)."""
    c = config if isinstance(config, LDMUNetConfig) else LDMUNetConfig(**config)
    mc, emb, ctx = c.model_channels, 4 * c.model_channels, c.context_dim
    keys: dict[str, tuple[int, ...]] = {CONDITIONING_KEY: (c.n_classes, ctx)}
    p = UNET_PREFIX

    def norm(name, ch):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (ch,), (ch,)

    def conv(name, cin, cout, k):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def linear(name, cin, cout, bias=True):
        keys[f"{name}.weight"] = (cout, cin)
        if bias:
            keys[f"{name}.bias"] = (cout,)

    def resblock(name, cin, cout):
        norm(f"{name}.in_layers.0", cin)
        conv(f"{name}.in_layers.2", cin, cout, 3)
        linear(f"{name}.emb_layers.1", emb, cout)
        norm(f"{name}.out_layers.0", cout)
        conv(f"{name}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.skip_connection", cin, cout, 1)

    def transformer(name, ch):
        norm(f"{name}.norm", ch)
        conv(f"{name}.proj_in", ch, ch, 1)
        for d in range(c.transformer_depth):
            b = f"{name}.transformer_blocks.{d}"
            for attn, kv in (("attn1", ch), ("attn2", ctx)):
                linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
                linear(f"{b}.{attn}.to_k", kv, ch, bias=False)
                linear(f"{b}.{attn}.to_v", kv, ch, bias=False)
                linear(f"{b}.{attn}.to_out.0", ch, ch)
            linear(f"{b}.ff.net.0.proj", ch, ch * 8)   # GEGLU: 2 x (4 x dim)
            linear(f"{b}.ff.net.2", ch * 4, ch)
            for n in ("norm1", "norm2", "norm3"):
                norm(f"{b}.{n}", ch)
        conv(f"{name}.proj_out", ch, ch, 1)

    linear(f"{p}time_embed.0", mc, emb)
    linear(f"{p}time_embed.2", emb, emb)
    conv(f"{p}input_blocks.0.0", c.in_channels, mc, 3)
    chans, ch, block = [mc], mc, 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            resblock(f"{p}input_blocks.{block}.0", ch, mult * mc)
            ch = mult * mc
            if c.attends(level):
                transformer(f"{p}input_blocks.{block}.1", ch)
            chans.append(ch)
            block += 1
        if level != len(c.channel_mult) - 1:
            conv(f"{p}input_blocks.{block}.0.op", ch, ch, 3)
            chans.append(ch)
            block += 1
    resblock(f"{p}middle_block.0", ch, ch)
    transformer(f"{p}middle_block.1", ch)
    resblock(f"{p}middle_block.2", ch, ch)
    block = 0
    for level, mult in list(enumerate(c.channel_mult))[::-1]:
        for i in range(c.num_res_blocks + 1):
            resblock(f"{p}output_blocks.{block}.0", ch + chans.pop(), mult * mc)
            ch, layer = mult * mc, 1
            if c.attends(level):
                transformer(f"{p}output_blocks.{block}.1", ch)
                layer = 2
            if level and i == c.num_res_blocks:
                conv(f"{p}output_blocks.{block}.{layer}.conv", ch, ch, 3)
            block += 1
    norm(f"{p}out.0", ch)
    conv(f"{p}out.2", ch, c.out_channels, 3)
    return keys


def check_ldm_state_dict(state: dict[str, torch.Tensor], config: LDMUNetConfig, source: str) -> None:
    """Load into a model of this config on the meta device: names and shapes must match exactly."""
    with torch.device("meta"):
        model = build_ldm_unet(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{source} does not fit the configured ldm_unet {config.to_dict()}: {err}. Check the "
                         f"model's `config` against the LDM yaml's unet_config (model_channels, channel_mult, "
                         f"num_res_blocks, attention_resolutions, num_head_channels, context_dim).") from None


def convert_official_ldm_checkpoint(source_path, config: LDMUNetConfig | dict, output, *, url: str = "",
                                    lock_path=None, log=print) -> str:
    """Verify an LDM .ckpt (against the download lock, then against the config), convert it to
    our keys (EMA U-Net weights) and write checksummed safetensors; returns their sha256."""
    import os

    from ..checkpoints import save_checkpoint
    from ..io import sha256_file

    config = config if isinstance(config, LDMUNetConfig) else LDMUNetConfig(**config)
    if lock_path is not None:
        from ..download import RemoteFile, fetch

        fetch(RemoteFile(os.path.basename(source_path), url), source_path, lock_path, allow_downloads=False, log=log)
    state = convert_ldm_state_dict(read_ldm_checkpoint(source_path), config)
    check_ldm_state_dict(state, config, str(source_path))
    metadata = {"source_file": os.path.basename(source_path), "source_url": url,
                "source_sha256": sha256_file(source_path), "converted_from": "CompVis LDM layout"}
    return save_checkpoint(output, state, metadata=metadata)
