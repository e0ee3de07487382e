"""BK-SDM block removal (Kim et al., ECCV 2024, arXiv 2305.15798).

Facts below were read from the authors' code, github.com/Nota-NetsPresso/BK-SDM (Nota AI; the
checkpoints are nota-ai/bk-sdm-* on the HF hub), commit e13670c:

* src/unet_config/bk_{base,small,tiny}/config.json - the students as diffusers configs: Base is
  SD-v1.4 with ``layers_per_block=1``; Small also sets ``mid_block_type=None``; Tiny also drops
  the last entry of ``block_out_channels`` / ``down_block_types`` (the attention-free
  DownBlock2D) and the first of ``up_block_types`` (UpBlock2D).
* src/kd_train_text_to_image.py, ``copy_weight_from_teacher`` - student initialisation,
  ``mapping_layers_tea/stu`` + ``add_hook`` - the feature-KD taps, and the loss in the
  training loop.
* src/count_macs_params.py - parameter and MAC counting (thop 0.1.1.post2209072238).

The code here is written for diffusers 0.42 and generalises the SD-1.x-specific lists of the
original to any number of stages; for SD-1.x shaped configs it yields exactly those lists.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from .bksdm_config import SD14_UNET_CONFIG, VARIANTS, _check_teacher, _check_variant, student_config


def weight_mapping(num_stages: int, variant: str) -> list[tuple[str, str]]:
    """(student prefix, teacher prefix) renames, first match wins; other keys copy by name.

    As copy_weight_from_teacher in src/kd_train_text_to_image.py:
    * down stages keep the FIRST residual+attention pair (resnets.0/attentions.0 by name) and
      the downsampler; the mid block (Base) and conv_in/time embedding/conv_out copy by name;
    * up stages keep the first and the LAST of their three pairs: student resnets.1 /
      attentions.1 <- teacher resnets.2 / attentions.2 (the last pair is the one whose input
      width matches the skip from the stage above, so the shapes fit);
    * Tiny: student up stage j <- teacher up stage j+1 (the teacher's innermost up stage is
      dropped), with the same 0 -> 0, 1 -> 2 pair mapping and its upsampler. The student's new
      innermost down stage has no downsampler, so the teacher's one there is not used.
    """
    _check_variant(variant)
    shift = 1 if variant == "tiny" else 0
    rules = []
    for j in range(num_stages - shift):
        s, t = f"up_blocks.{j}.", f"up_blocks.{j + shift}."
        rules += [(s + "resnets.1.", t + "resnets.2."), (s + "attentions.1.", t + "attentions.2.")]
        if shift:
            rules.append((s, t))
    return rules


def _teacher_key(key: str, rules: list[tuple[str, str]]) -> str:
    for s, t in rules:
        if key.startswith(s):
            return t + key[len(s):]
    return key


def build_student(teacher: UNet2DConditionModel, variant: str) -> UNet2DConditionModel:
    """Student U-Net initialised from ``teacher``'s weights exactly as BK-SDM does."""
    teacher_cfg = dict(teacher.config)
    cfg = student_config(teacher_cfg, variant)
    student = UNet2DConditionModel.from_config(cfg)
    if (student.device, student.dtype) != (teacher.device, teacher.dtype):
        student = student.to(device=teacher.device, dtype=teacher.dtype)
    rules = weight_mapping(len(teacher_cfg["block_out_channels"]), variant)
    source = teacher.state_dict()
    state = {}
    for key, value in student.state_dict().items():
        tkey = _teacher_key(key, rules)
        if tkey not in source or source[tkey].shape != value.shape:
            raise RuntimeError(f"BK-SDM {variant!r}: student {key} {tuple(value.shape)} has no "
                               f"matching teacher tensor {tkey}")
        state[key] = source[tkey]
    student.load_state_dict(state, strict=True)
    return student


def feature_kd_layers(teacher_config: dict, variant: str) -> list[tuple[str, str]]:
    """(teacher module, student module) pairs whose outputs the feature-KD loss compares.

    As mapping_layers_tea/stu in src/kd_train_text_to_image.py: Base and Small tap the output of
    every down and up block (down blocks return (hidden, skips); hidden is used). Tiny taps the
    outer down blocks, the up blocks shifted by one, and - because the teacher's block at the new
    innermost down stage ends in a downsampler the student lacks - the proj_out of that stage's
    last attention (teacher attentions.1, student attentions.0), i.e. the transformer's
    residual branch before it is added back.
    """
    _check_variant(variant)
    n = _check_teacher(dict(teacher_config), variant)
    if variant in ("base", "small"):
        names = [f"up_blocks.{i}" for i in range(n)] + [f"down_blocks.{i}" for i in range(n)]
        return [(m, m) for m in names]
    pairs = [(f"down_blocks.{i}", f"down_blocks.{i}") for i in range(n - 2)]
    pairs.append((f"down_blocks.{n - 2}.attentions.1.proj_out", f"down_blocks.{n - 2}.attentions.0.proj_out"))
    pairs += [(f"up_blocks.{i + 1}", f"up_blocks.{i}") for i in range(n - 1)]
    return pairs


class FeatureHooks:
    """Forward hooks keeping the outputs of named teacher ("tea") and student ("stu") modules
    for a distillation loss (a block returning (hidden, skips) keeps hidden, as BK-SDM and
    diffengine do). Use as a context manager (or call close()) to remove the hooks."""

    def _hook(self, taps) -> None:
        """taps: (side, module, key) for every module to keep the output of."""
        self._acts: dict = {"tea": {}, "stu": {}}
        self._handles = [module.register_forward_hook(self._keep(side, key)) for side, module, key in taps]

    def _keep(self, side: str, name: str):
        def hook(module, args, output):
            self._acts[side][name] = output[0] if isinstance(output, tuple) else output
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FeatureKD(FeatureHooks):
    """BK-SDM's training loss: w_task*task + w_out*out_kd + w_feat*feat_kd.

    All terms are F.mse_loss with reduction="mean" in float32; feat_kd is the plain SUM of the
    per-tap means (no per-layer weighting or normalisation), as in the original training loop.
    The teacher runs under no_grad, so gradients reach only the student.
    Use as a context manager (or call close()) to remove the forward hooks.
    """

    def __init__(self, teacher: UNet2DConditionModel, student: UNet2DConditionModel, variant: str,
                 *, w_task: float = 1.0, w_out: float = 1.0, w_feat: float = 1.0):
        if teacher is student:
            raise ValueError("teacher and student must be different modules")
        self.teacher, self.student = teacher, student
        self.weights = (w_task, w_out, w_feat)
        self.pairs = feature_kd_layers(dict(teacher.config), variant)
        self._hook([(side, net.get_submodule(name), name)
                    for side, net, names in (("tea", teacher, [t for t, _ in self.pairs]),
                                             ("stu", student, [s for _, s in self.pairs]))
                    for name in names])

    def __call__(self, noisy_latents, timesteps, encoder_hidden_states, target) -> dict:
        w_task, w_out, w_feat = self.weights
        try:
            pred = self.student(noisy_latents, timesteps, encoder_hidden_states).sample
            with torch.no_grad():
                pred_teacher = self.teacher(noisy_latents, timesteps, encoder_hidden_states).sample
            task = F.mse_loss(pred.float(), target.float(), reduction="mean")
            out_kd = F.mse_loss(pred.float(), pred_teacher.float(), reduction="mean")
            feat_kd = sum(F.mse_loss(self._acts["stu"][s].float(), self._acts["tea"][t].detach().float(),
                                     reduction="mean") for t, s in self.pairs)
        finally:
            self._acts = {"tea": {}, "stu": {}}  # do not keep activations alive between steps
        total = w_task * task + w_out * out_kd + w_feat * feat_kd
        return {"task": task, "out_kd": out_kd, "feat_kd": feat_kd, "total": total}


def bksdm_loss(teacher, student, variant, noisy_latents, timesteps, encoder_hidden_states, target,
               weights=(1.0, 1.0, 1.0)) -> dict:
    """One-shot FeatureKD: registers the hooks, computes the loss dict, removes the hooks."""
    w_task, w_out, w_feat = weights
    with FeatureKD(teacher, student, variant, w_task=w_task, w_out=w_out, w_feat=w_feat) as kd:
        return kd(noisy_latents, timesteps, encoder_hidden_states, target)


# --- size ---------------------------------------------------------------------------------------
# BK-SDM's src/count_macs_params.py runs thop.profile (0.1.1.post2209072238) on the U-Net with a
# zero latent, zero timestep and zero text embedding. thop counts only leaf nn.Modules whose exact
# type is in its table; for a diffusers U-Net that means
#   Conv2d:    output elements * (in_channels / groups) * kh * kw   (bias not counted)
#   Linear:    output elements * in_features                         (bias not counted)
#   LayerNorm: 2 * input elements, x2 with an affine weight           (so 4 per element here)
# and zero for GroupNorm and SiLU (not in the table) and for every functional op: the attention
# matmuls (QK^T and AV, 63.0 GMACs in SD-v1.4), softmax, GEGLU's gelu, interpolation, additions.
# FlopCounterMode would add those matmuls (SD-v1.4: 401.6 GMACs) and skip LayerNorm, so it does
# not reproduce the published numbers; the hooks below do.
_THOP_COUNTED = (nn.Conv2d, nn.Linear, nn.LayerNorm)


def _thop_macs(module: nn.Module, args, output) -> int:
    kind = type(module)
    if kind is nn.Conv2d:
        kh, kw = module.kernel_size
        return output.numel() * (args[0].shape[1] // module.groups) * kh * kw
    if kind is nn.Linear:
        return output.numel() * module.in_features
    if kind is nn.LayerNorm:
        return args[0].numel() * (4 if module.elementwise_affine else 2)
    return 0


def zero_added_conditioning(config: dict, batch: int) -> dict | None:
    """SDXL's added conditioning (pooled text, 6 size/crop ids) as zeros, for a U-Net with
    addition_embed_type "text_time" (so the same counter sizes SDXL-shaped U-Nets); else None."""
    if config.get("addition_embed_type") != "text_time":
        return None
    time_ids = 6  # SDXL: original size, crop corner, target size
    pooled = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
    return {"text_embeds": torch.zeros(batch, pooled), "time_ids": torch.zeros(batch, time_ids)}


def unet_size(config: dict, *, latent_size: int = 64, text_tokens: int = 77, batch: int = 1,
              breakdown: bool = False) -> dict:
    """Parameters (M) and MACs per sample (G) of a UNet2DConditionModel config, with no weights.

    The model is built and run on the meta device (shapes only). ``breakdown=True`` adds the
    MACs per counted module type (in G) under "by_type".
    """
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg).eval()
    params = sum(p.numel() for p in unet.parameters())
    macs = Counter()

    def hook(module, args, output):
        macs[type(module).__name__] += _thop_macs(module, args, output)

    handles = [m.register_forward_hook(hook) for m in unet.modules() if type(m) in _THOP_COUNTED]
    text_dim = cfg.get("cross_attention_dim", 1280)
    text_dim = text_dim[0] if isinstance(text_dim, (list, tuple)) else text_dim
    try:
        with torch.device("meta"), torch.no_grad():
            unet(torch.zeros(batch, cfg.get("in_channels", 4), latent_size, latent_size),
                 torch.zeros(batch), torch.zeros(batch, text_tokens, text_dim),
                 added_cond_kwargs=zero_added_conditioning(cfg, batch))
    finally:
        for h in handles:
            h.remove()
    out = {"params_m": params / 1e6, "gmacs": sum(macs.values()) / batch / 1e9}
    if breakdown:
        out["by_type"] = {k: v / batch / 1e9 for k, v in macs.items()}
    return out


def size_table(teacher_config: dict = SD14_UNET_CONFIG, *, teacher_name: str = "sd-v1.4",
               **size_kwargs) -> list[dict]:
    """Rows (name, params_m, gmacs, params_ratio, gmacs_ratio) for the teacher and each variant."""
    rows = []
    for name, cfg in [(teacher_name, teacher_config)] + [(v, student_config(teacher_config, v)) for v in VARIANTS]:
        rows.append({"name": name, **unet_size(cfg, **size_kwargs)})
    for row in rows:
        row["params_ratio"] = row["params_m"] / rows[0]["params_m"]
        row["gmacs_ratio"] = row["gmacs"] / rows[0]["gmacs"]
    return rows
