"""The embedded suite's feature network: a small CNN trained on the 8x8 digits.

It plays the role Inception-v3 plays for ImageNet metrics: its penultimate activations
feed the FID and its softmax feeds the Inception Score and class accuracy. The numbers
it yields are only comparable with numbers from the same trained network.

Training is deterministic for a seed: the split, the shuffling, the augmentation and the
weight initialisation all draw from one explicit torch.Generator, never the global RNG.
(Bitwise equality also assumes the same torch build and thread count, since CPU kernels
may sum in a different order with more threads.)
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoints import load_checkpoint, read_metadata, save_checkpoint
from ..data import NUM_CLASSES, uint8_nhwc_to_model
from ..finite import LossGuard

FEATURE_DIM = 64
IMAGE_SIZE = 8


class DigitsCNN(nn.Module):
    """conv 32 -> conv 64 -> 2x2 max-pool -> linear 64 (features) -> linear 10 (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc = nn.Linear(64 * (IMAGE_SIZE // 2) ** 2, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, 64) for float input (B, 1, 8, 8) in [-1, 1]."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10)."""
        return self.head(self.features(x))


def from_uint8(images_u8: np.ndarray) -> torch.Tensor:
    """Stored uint8 NHWC samples (N, 8, 8, 1) to the network's float NCHW input."""
    images_u8 = np.asarray(images_u8)
    if images_u8.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {images_u8.dtype}")
    if images_u8.ndim != 4 or images_u8.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ValueError(f"expected images of shape (N, 8, 8, 1), got {images_u8.shape}")
    return uint8_nhwc_to_model(images_u8)


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Conv/Linear initialisation, but drawn from `generator`."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel per axis, filling with background (-1)."""
    batch = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (batch,), generator=generator)
    dx = torch.randint(0, 3, (batch,), generator=generator)
    offsets = torch.arange(IMAGE_SIZE)
    rows = (dy[:, None] + offsets)[:, :, None]  # (B, 8, 1)
    cols = (dx[:, None] + offsets)[:, None, :]  # (B, 1, 8)
    index = torch.arange(batch)[:, None, None]
    return padded[index, 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of `x` whose argmax logit equals `y` (model put in eval mode)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    return correct / max(len(x), 1)


def split_indices(n: int, holdout_fraction: float, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (train, heldout) split of range(n)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    perm = torch.randperm(n, generator=generator)
    num_heldout = int(round(n * holdout_fraction))
    return perm[num_heldout:], perm[:num_heldout]


def train_digits_classifier(images_u8: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                            epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                            holdout_fraction: float = 0.2, augment: bool = True
                            ) -> tuple[DigitsCNN, dict]:
    """Train the feature network with Adam; returns (model in eval mode, info).

    info holds heldout_accuracy, train_accuracy (un-augmented train images), num_train,
    num_heldout, epochs, seed, augment and train_seconds.
    """
    started = time.perf_counter()
    x = from_uint8(images_u8)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")

    generator = torch.Generator().manual_seed(seed)
    train_idx, heldout_idx = split_indices(len(x), holdout_fraction, generator)
    model = DigitsCNN()
    init_weights(model, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    x_train, y_train = x[train_idx], y[train_idx]
    guard, iteration = LossGuard("the digits classifier"), 0  # stops at a NaN loss
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            xb = random_shift(x_train[batch], generator) if augment else x_train[batch]
            loss = F.cross_entropy(model(xb), y_train[batch])
            iteration += 1
            guard.check(loss, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    info = {
        "heldout_accuracy": accuracy(model, x[heldout_idx], y[heldout_idx]),
        "train_accuracy": accuracy(model, x_train, y_train),
        "num_train": len(train_idx),
        "num_heldout": len(heldout_idx),
        "epochs": epochs,
        "seed": seed,
        "augment": augment,
        "train_seconds": time.perf_counter() - started,
    }
    model.eval()
    return model, info


# What a run measured, not what made the weights: kept out of the checkpoint, whose bytes
# must be the same for every identical run (train_classifier_job writes it to a run record).
RUN_KEYS = ("train_seconds",)


def save_classifier(model: DigitsCNN, path: str | os.PathLike, info: dict) -> str:
    """Save weights with `info` (less RUN_KEYS) as string metadata (safetensors allows only strings)."""
    metadata = {str(k): str(v) for k, v in info.items() if k not in RUN_KEYS}
    metadata["feature_dim"] = str(FEATURE_DIM)
    return save_checkpoint(path, model.state_dict(), metadata)


def load_classifier(path: str | os.PathLike) -> DigitsCNN:
    """Verify the checksum, then load weights into a fresh DigitsCNN in eval mode."""
    model = DigitsCNN()
    model.load_state_dict(load_checkpoint(path), strict=True)
    return model.eval()


def read_classifier_info(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata saved with the classifier (not checksum-verified; read-only use)."""
    return read_metadata(path)
