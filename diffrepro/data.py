"""The embedded suite's data: scikit-learn's bundled 8x8 digits (no download).

Images live in two forms: model space, float in [-1, 1], shape (N, 1, 8, 8); and stored
samples, uint8 NHWC like ADM's sample batches. Real digits go through the same uint8
quantisation as generated samples, so the metrics compare like with like.
"""

from __future__ import annotations

import numpy as np
import torch

DIGITS_MAX = 16.0  # load_digits pixel values are integers 0..16
NUM_CLASSES = 10


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (images in [-1, 1] of shape (N, 1, 8, 8), int64 labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / DIGITS_MAX * 2.0 - 1.0)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images.unsqueeze(1), labels


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Model-space images to uint8 NHWC with DiT's rounding: clamp(127.5 * x + 128)."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()


def uint8_nhwc_to_model(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC back to float NCHW in [-1, 1] (the metric networks' input)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def real_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The real digits quantised exactly like generated samples: (uint8 NHWC, labels)."""
    images, labels = load_digits_tensors()
    return to_uint8_nhwc(images), labels.numpy()
