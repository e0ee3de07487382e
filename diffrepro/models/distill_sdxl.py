"""Distill SD XL: block-removed SDXL U-Nets distilled from their teacher, as okotaku/diffengine's
DistillSDXL does it (diffengine/models/editors/distill_sd/distill_sd_xl.py, after
segmind/distill-sd, itself after BK-SDM). Written for diffusers 0.42; the configs are in
diffrepro.models.distill_sdxl_config.

* Student: diffengine deletes modules from a copy of the teacher (``_prepare_student``), so every
  kept tensor is the teacher's: down stages keep resnet/attention 0 and the downsampler; up
  stages keep 0 and move 2 to 1 (``up_blocks[i].resnets[1] = resnets[2]``); small_sd_xl keeps the
  mid block, tiny_sd_xl drops it. We build the student from its config and copy by that mapping.
* Loss (``forward``): loss_sd = task (student vs the noise / v target), loss_kd = student vs
  teacher output, loss_features = plain SUM over the feature taps (``_cast_hook``) of one MSE
  each; diffengine returns the three keys and mmengine adds them (weights 1 / 1 / 1). With an
  SNRL2Loss every term (features too) is Min-SNR weighted per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from .bksdm import FeatureHooks
from .distill_sdxl_config import VARIANTS, check_teacher, student_config


def weight_mapping(num_stages: int) -> list[tuple[str, str]]:
    """(student prefix, teacher prefix) renames, first match wins; other keys copy by name.

    distill_sd_xl.py ``_prepare_student``: ``up_blocks[i].resnets[1] = up_blocks[i].resnets[2]``
    and the same for ``attentions``, for every up stage (both variants; UpBlock2D has no
    attentions). Down stages delete index 1, so index 0 and the downsamplers keep their names.
    """
    rules = []
    for i in range(num_stages):
        for kind in ("resnets", "attentions"):
            rules.append((f"up_blocks.{i}.{kind}.1.", f"up_blocks.{i}.{kind}.2."))
    return rules


def teacher_key(key: str, rules: list[tuple[str, str]]) -> str:
    for s, t in rules:
        if key.startswith(s):
            return t + key[len(s):]
    return key


def build_student(teacher: UNet2DConditionModel, variant: str) -> UNet2DConditionModel:
    """small_sd_xl / tiny_sd_xl initialised from ``teacher``'s weights exactly as DistillSDXL."""
    teacher_cfg = dict(teacher.config)
    student = UNet2DConditionModel.from_config(student_config(teacher_cfg, variant))
    if (student.device, student.dtype) != (teacher.device, teacher.dtype):
        student = student.to(device=teacher.device, dtype=teacher.dtype)
    rules = weight_mapping(len(teacher_cfg["block_out_channels"]))
    source, state = teacher.state_dict(), {}
    for key, value in student.state_dict().items():
        tkey = teacher_key(key, rules)
        if tkey not in source or source[tkey].shape != value.shape:
            raise RuntimeError(f"Distill SD XL {variant!r}: student {key} {tuple(value.shape)} has no "
                               f"matching teacher tensor {tkey}")
        state[key] = source[tkey]
    student.load_state_dict(state, strict=True)
    return student


def feature_taps(teacher_config: dict, variant: str) -> list[tuple[str, str, str]]:
    """(name, teacher module, student module) whose outputs loss_features compares.

    distill_sd_xl.py ``_cast_hook`` + ``forward``: every down block ("d<i>", its hidden state,
    not the skips), the mid block ("m") and every up block ("u<i>"). tiny_sd_xl has no mid
    block: the teacher's mid-block output is compared with the student's innermost down block
    instead, and the teacher's innermost down block is not compared.
    """
    n = check_teacher(dict(teacher_config), variant)
    downs = n if variant == "small_sd_xl" else n - 1
    taps = [(f"d{i}", f"down_blocks.{i}", f"down_blocks.{i}") for i in range(downs)]
    taps.append(("m", "mid_block", "mid_block" if variant == "small_sd_xl" else f"down_blocks.{n - 1}"))
    taps += [(f"u{i}", f"up_blocks.{i}", f"up_blocks.{i}") for i in range(n)]
    return taps


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample min(SNR, gamma) / SNR (Hang et al. 2023; diffengine snr_l2_loss.py, epsilon target)."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1.0 - a)
    return torch.clamp(snr, max=gamma) / snr


class DistillSDXLLoss(FeatureHooks):
    """loss_sd + loss_kd + loss_features (weights ``weights``, diffengine: 1 / 1 / 1), in float32.

    Plain MSE means, or, with ``snr_gamma`` (and the schedule's ``alphas_cumprod``), each term
    is the per-sample mean times min(SNR, gamma) / SNR, averaged over the batch, as diffengine's
    SNRL2Loss. The teacher runs under no_grad; SDXL's added conditioning (``added_cond_kwargs``:
    text_embeds, time_ids) is passed to both. Use as a context manager (or close()) to remove
    the hooks.
    """

    def __init__(self, teacher: UNet2DConditionModel, student: UNet2DConditionModel, variant: str, *,
                 weights=(1.0, 1.0, 1.0), snr_gamma: float | None = None,
                 alphas_cumprod: torch.Tensor | None = None):
        if teacher is student:
            raise ValueError("teacher and student must be different modules")
        if snr_gamma is not None and alphas_cumprod is None:
            raise ValueError("Min-SNR weighting needs the noise schedule's alphas_cumprod")
        self.teacher, self.student = teacher, student
        self.weights, self.snr_gamma, self.alphas_cumprod = tuple(weights), snr_gamma, alphas_cumprod
        self.taps = feature_taps(dict(teacher.config), variant)
        self._hook([(side, net.get_submodule(tap[col]), tap[0])
                    for side, net, col in (("tea", teacher, 1), ("stu", student, 2)) for tap in self.taps])

    def _mse(self, pred, target, timesteps) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if self.snr_gamma is None:
            return F.mse_loss(pred, target, reduction="mean")
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, pred.ndim)))
        return (per_sample * min_snr_weights(timesteps, self.alphas_cumprod, self.snr_gamma)).mean()

    def __call__(self, noisy_latents, timesteps, encoder_hidden_states, target,
                 added_cond_kwargs: dict | None = None) -> dict:
        w_sd, w_kd, w_feat = self.weights
        try:
            pred = self.student(noisy_latents, timesteps, encoder_hidden_states,
                                added_cond_kwargs=added_cond_kwargs).sample
            with torch.no_grad():
                pred_teacher = self.teacher(noisy_latents, timesteps, encoder_hidden_states,
                                            added_cond_kwargs=added_cond_kwargs).sample
            loss_sd = self._mse(pred, target, timesteps)
            loss_kd = self._mse(pred, pred_teacher, timesteps)
            loss_features = sum(self._mse(self._acts["stu"][name], self._acts["tea"][name].detach(), timesteps)
                                for name, _, _ in self.taps)
        finally:
            self._acts = {"tea": {}, "stu": {}}  # do not keep activations alive between steps
        total = w_sd * loss_sd + w_kd * loss_kd + w_feat * loss_features
        return {"loss_sd": loss_sd, "loss_kd": loss_kd, "loss_features": loss_features, "total": total}


def size_table(teacher_config: dict | None = None, *, latent_size: int = 128, text_tokens: int = 77) -> list[dict]:
    """Rows (name, params_m, gmacs, params_ratio, gmacs_ratio) of SDXL-base (1024 px: 128x128
    latent, 77 tokens) and its two students, with BK-SDM's counter (thop's convention)."""
    from .bksdm import unet_size
    from .distill_sdxl_config import SDXL_BASE_UNET_CONFIG

    teacher_config = SDXL_BASE_UNET_CONFIG if teacher_config is None else teacher_config
    configs = [("sdxl-base", teacher_config)] + [(v, student_config(teacher_config, v)) for v in VARIANTS]
    rows = [{"name": name, **unet_size(cfg, latent_size=latent_size, text_tokens=text_tokens)}
            for name, cfg in configs]
    for row in rows:
        row["params_ratio"] = row["params_m"] / rows[0]["params_m"]
        row["gmacs_ratio"] = row["gmacs"] / rows[0]["gmacs"]
    return rows
