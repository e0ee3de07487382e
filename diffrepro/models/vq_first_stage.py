"""The VQ first stage of CompVis' latent diffusion (taming-transformers' VQModel: the vq-f8
autoencoder of T-Stitch's LDMs) as diffusers' VQModel.

diffusers has the model (Encoder/Decoder blocks, VectorQuantizer) but no converter for the
taming layout, so the key mapping is written here from both codebases' module layouts
(taming/modules/diffusionmodules/model.py: Encoder.down[i].block/attn/downsample, mid.block_1 /
attn_1 / block_2, Decoder.up[i] indexed by resolution level, 1x1-conv attention). The decode is
LDM's: `decode_first_stage` calls `VQModelInterface.decode(z, force_not_quantize=False)`, i.e.
the latent is snapped to its nearest codebook entry, then post_quant_conv and the decoder
(NVlabs/T-Stitch ldm/ldm/models/diffusion/ddpm.py); diffusers' VQModel.decode does the same.
Its nearest-entry search is torch.cdist where taming expands |z|^2 + |e|^2 - 2 z.e: the two
can pick different entries only at float-rounding ties.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch

# cin-ldm-vq-f8(-t-stitch).yaml, first_stage_config: the vq-f8 autoencoder
VQ_F8 = {"embed_dim": 4, "n_embed": 16384,
         "ddconfig": {"double_z": False, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                      "ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [32],
                      "dropout": 0.0}}

CHECKPOINT_MEMBER = "model.ckpt"  # what vq-f8.zip holds (ommer-lab.com/files/latent-diffusion)


def diffusers_vq_config(first_stage: dict) -> dict:
    """VQModel's constructor arguments for a taming VQ config ({embed_dim, n_embed, ddconfig})."""
    dd = first_stage["ddconfig"]
    if dd.get("double_z", False):
        raise ValueError("a VQ first stage has double_z: false (double_z is a KL autoencoder's)")
    levels = len(dd["ch_mult"])
    attn = [dd["resolution"] // 2 ** i in dd["attn_resolutions"] for i in range(levels)]
    return dict(in_channels=dd["in_channels"], out_channels=dd["out_ch"],
                down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
                # diffusers' up_blocks[0] is taming's innermost level (Decoder.up[levels - 1])
                up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
                block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]), layers_per_block=dd["num_res_blocks"],
                act_fn="silu", latent_channels=dd["z_channels"], sample_size=dd["resolution"],
                num_vq_embeddings=first_stage["n_embed"], norm_num_groups=32, vq_embed_dim=first_stage["embed_dim"],
                scaling_factor=1.0, norm_type="group", mid_block_add_attention=True)


def _rename(key: str, levels: int) -> str | None:
    """A taming key -> its diffusers VQModel key (None: not part of the autoencoder)."""
    if key.startswith("loss."):  # the training loss (discriminator, LPIPS): LDM's config drops it
        return None
    renames = [
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
        (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv."),
        (r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets."),
        (r"^decoder\.up\.(\d+)\.attn\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.attentions."),
        (r"^decoder\.up\.(\d+)\.upsample\.conv\.",
         lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv."),
    ]
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    key = key.replace(".nin_shortcut.", ".conv_shortcut.")
    if ".attentions." in key:  # AttnBlock: norm and 1x1 convs q, k, v, proj_out
        key = re.sub(r"\.norm\.", ".group_norm.", key)
        key = re.sub(r"\.(q|k|v)\.", lambda m: f".to_{m[1]}.", key)
        key = key.replace(".proj_out.", ".to_out.0.")
    return key


def convert_taming_vq_state_dict(state: dict[str, torch.Tensor], first_stage: dict) -> dict[str, torch.Tensor]:
    """taming VQModel keys -> diffusers VQModel keys; attention's 1x1 conv weights become linear."""
    levels = len(first_stage["ddconfig"]["ch_mult"])
    out = {}
    for key, value in state.items():
        new = _rename(key, levels)
        if new is None:
            continue
        if ".attentions." in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def read_first_stage_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a taming/LDM autoencoder .ckpt, or of the zip the LDM authors publish
    it in (its model.ckpt), loaded with weights_only=True."""
    import io

    path = Path(path)
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if Path(n).name == CHECKPOINT_MEMBER]
            if len(members) != 1:
                raise ValueError(f"{path}: expected one {CHECKPOINT_MEMBER} in the archive, found "
                                 f"{members or sorted(archive.namelist())[:5]}")
            obj = torch.load(io.BytesIO(archive.read(members[0])), map_location="cpu", weights_only=True)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not an autoencoder checkpoint (a dict with a 'state_dict' of tensors)")
    return state


def _is_torch_zip(path: Path) -> bool:
    """torch.save writes a zip too: one whose members all sit under one folder with data.pkl."""
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/data.pkl") for n in archive.namelist())


def build_vq_model(first_stage: dict):
    from diffusers import VQModel

    return VQModel(**diffusers_vq_config(first_stage))


def convert_first_stage(source: str | os.PathLike, first_stage: dict, directory: str | os.PathLike):
    """Convert a taming VQ checkpoint into a diffusers VQModel directory (config.json and
    safetensors weights, written atomically as a whole); strict: every key must match."""

    model = build_vq_model(first_stage)
    state = convert_taming_vq_state_dict(read_first_stage_checkpoint(source), first_stage)
    fix = "check the config's decoder.first_stage against the checkpoint's config.yaml"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(f"{source}: the checkpoint does not match the configured first stage "
                         f"({str(err).splitlines()[-1].strip()}); {fix}") from None
    if missing or unexpected:
        raise ValueError(f"{source}: the checkpoint does not match the configured first stage "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); {fix}")
    from ..io import save_pretrained_atomically

    save_pretrained_atomically(model, directory)
    return Path(directory)
