"""T-Stitch with ControlNet: the control branch's residuals reach whichever U-Net runs.

NVlabs/T-Stitch (tstitch_sd_utils.py, TStitchSDXLControlNet; sdxl_canny.py, sdxl_depth.py,
sdxl_pose.py) runs the SDXL ControlNet once per step and adds its down / mid residuals to the
U-Net of that step: SSD-1B for the first steps, SDXL-base for the rest. That works because
SSD-1B is a pruned SDXL: it drops transformer layers but keeps SDXL's down-block skeleton
(block_out_channels, layers_per_block, a downsampler per stage but the last, a mid block), so
each residual has the shape of the skip it is added to. diffusers' ControlNet pipelines call
`self.unet(..., down_block_additional_residuals=..., mid_block_additional_residual=...)`, and
the stitching wrapper (diffrepro.t2i.stitch) passes those to the U-Net it picks unchanged. A
small U-Net with another skeleton (the embedded suite's sd_small: two stages, one pair each)
cannot take them; `check_residual_compatible` refuses it before any step runs.

The embedded suite's control signal: the edge map of a real digit of the prompt's class
(`edge_map`, a thresholded Sobel magnitude on the 8x8 pixels); control fidelity is the IoU of
the control edges with the generated image's edges (`edge_iou`).
"""

from __future__ import annotations

import numpy as np

# Sobel magnitude threshold on images in [0, 1] (a unit step gives magnitude 4; normalised to 1).
EDGE_THRESHOLD = 0.35


def _per_stage(value, stages: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * stages


def residual_skeleton(config) -> dict:
    """What fixes the shapes of the down / mid residuals a ControlNet produces and a U-Net adds
    to its skips: channels and resnet count per stage, the stage count, and a mid block."""
    stages = len(config["down_block_types"])
    return {"block_out_channels": list(config["block_out_channels"]),
            "layers_per_block": _per_stage(config["layers_per_block"], stages),
            "stages": stages,
            "mid_block": config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None}


def check_residual_compatible(controlnet_config, unet_config, what: str = "the small U-Net") -> None:
    """Refuse a U-Net whose skips the ControlNet's residuals do not fit, with the reason."""
    control, unet = residual_skeleton(controlnet_config), residual_skeleton(unet_config)
    if control == unet:
        return
    differ = {k: (control[k], unet[k]) for k in control if control[k] != unet[k]}
    detail = "; ".join(f"{k}: ControlNet {c}, U-Net {u}" for k, (c, u) in differ.items())
    raise ValueError(
        f"{what} cannot take the ControlNet's residuals ({detail}). T-Stitch with ControlNet adds the "
        f"large model's ControlNet residuals to whichever U-Net runs, so the small U-Net needs the large "
        f"one's down-block skeleton (SSD-1B keeps SDXL's); use a small U-Net with the same "
        f"block_out_channels, layers_per_block and stages (fewer attention blocks are fine)")


def controlnet_config(entry: dict, unet_config: dict) -> dict:
    """A model entry's `controlnet` section to the engine's build_controlnet config: its U-Net's
    config and a one-channel control embedding (the edge map)."""
    return {"unet": unet_config, "conditioning_channels": 1,
            "conditioning_embedding_out_channels": list(entry["conditioning_embedding_out_channels"])}


def edge_map(images: np.ndarray, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
    """Boolean edges of (N, H, W) images in [0, 1]: Sobel gradient magnitude (edge-replicated
    borders), divided by 4 so a unit step scores 1, at or above `threshold`."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"edge_map takes (N, H, W) images, got shape {x.shape}")
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
    gy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
    return np.hypot(gx, gy) / 4.0 >= threshold


def edge_iou(control: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Per image: |control edges AND generated edges| / |either| (1 where both are empty)."""
    a, b = np.asarray(control, dtype=bool), np.asarray(generated, dtype=bool)
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def digit_sources(images01: np.ndarray, labels: np.ndarray, indices, wanted_labels) -> np.ndarray:
    """The digit whose edges steer image i: the (i // 10)-th digit of its prompt's class in the
    dataset's order (cycling), so every image index has a fixed source of the right class."""
    labels = np.asarray(labels)
    out = []
    for i, y in zip(indices, np.asarray(wanted_labels)):
        pool = np.flatnonzero(labels == int(y))
        if len(pool) == 0:
            raise ValueError(f"no digit of class {int(y)} to take a control map from")
        out.append(images01[pool[(int(i) // 10) % len(pool)]])
    return np.stack(out)


def digit_control(indices, wanted_labels, scale: int):
    """(control image batch (N, 1, 8 scale, 8 scale) float32 in {0, 1}, control edges (N, 8, 8)):
    the edge map of each image's source digit, upsampled (nearest) by `scale`, the pipeline's
    vae_scale_factor, as a ControlNet's conditioning image is at pixel resolution."""
    import torch

    from ..data import load_digits_tensors

    images, labels = load_digits_tensors()
    images01 = ((images[:, 0].numpy() + 1.0) / 2.0)
    edges = edge_map(digit_sources(images01, labels.numpy(), indices, wanted_labels))
    control = torch.from_numpy(edges.astype(np.float32))[:, None]
    control = control.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return control, edges
