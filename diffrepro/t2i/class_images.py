"""Class-labelled images from a local folder, prepared as the Immiscible Diffusion seed's SD
training script prepares ImageNet (yhli123/Immiscible-Diffusion,
Linear_Assignment-stable_diffusion/conditional_scratch_train_sd.py, `train_transforms` and
`tokenize_captions`): resize the shorter side to the resolution (bilinear), centre crop, random
horizontal flip, to [-1, 1]; the prompt of an image is its class's name (a line of the seed's
imagenet-classes.txt, e.g. "tench, Tinca tinca").

Layout (torchvision's ImageFolder): <root>/<class folder>/<image>; the classes are the folders
in sorted order (ImageNet's synset folders sort into the class index order of
imagenet-classes.txt). The user supplies the folder: nothing here downloads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ClassImagesMissing(FileNotFoundError):
    """The configured image folder (or class-name list) is absent or malformed."""


@dataclass(frozen=True)
class ClassImages:
    root: Path
    classes: list[str]          # folder names, sorted
    prompts: list[str]          # one per class: its name (class_names file) or its folder's name
    files: list[str]            # paths relative to root, class by class, sorted
    labels: np.ndarray          # class index of each file

    def __len__(self) -> int:
        return len(self.files)


def _missing(key: str, value, why: str) -> ClassImagesMissing:
    return ClassImagesMissing(
        f"config key {key}: {value!r} {why}. Put the images there as <folder>/<class>/<image> "
        f"(torchvision's ImageFolder layout, e.g. ImageNet's train/ folder of 1,000 synset folders) "
        f"or set {key} to where they are; nothing downloads them.")


def scan_class_images(root: str | os.PathLike, *, key: str, class_names: str | None = None,
                      class_names_key: str = "class_names") -> ClassImages:
    """The folder's images and their classes; `class_names`: a text file, one prompt per class
    in the folders' sorted order (the seed's imagenet-classes.txt); None: the folder names."""
    root = Path(root)
    if not root.is_dir():
        raise _missing(key, str(root), "is not a folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise _missing(key, str(root), "holds no class folders")
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(entry.name for entry in os.scandir(root / name)
                       if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES))
        if not found:
            raise _missing(key, str(root / name), f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += [f"{name}/{f}" for f in found]
        labels += [index] * len(found)
    prompts = list(classes)
    if class_names is not None:
        path = Path(class_names)
        if not path.is_file():
            raise ClassImagesMissing(f"config key {class_names_key}: {str(path)!r} is not a file; it lists one "
                                     f"prompt per class folder in sorted order (the seed's imagenet-classes.txt); "
                                     f"set it to that file, or to null to use the folder names")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(prompts) != len(classes):
            raise ClassImagesMissing(f"config key {class_names_key}: {str(path)!r} lists {len(prompts)} class names "
                                     f"but {root} has {len(classes)} class folders; give one line per folder")
    return ClassImages(root, classes, prompts, files, np.asarray(labels, dtype=np.int64))


def load_image(path: Path, resolution: int, center_crop: bool = True):
    """uint8 HWC array: the shorter side resized to `resolution` (bilinear, as the seed's
    transforms.Resize), then the centre `resolution` square (the seed runs with --center_crop)."""
    from PIL import Image
    from torchvision.transforms import functional as F
    from torchvision.transforms import InterpolationMode

    if not center_crop:
        raise ValueError("only centre crops are implemented (the seed's runs pass --center_crop)")
    with Image.open(path) as image:
        image = F.resize(image.convert("RGB"), resolution, interpolation=InterpolationMode.BILINEAR)
        return np.asarray(F.center_crop(image, resolution), dtype=np.uint8)


class _Files:
    """A map-style dataset of uint8 images (for a DataLoader's workers: decoding is the cost)."""

    def __init__(self, data: ClassImages, resolution: int, center_crop: bool):
        self.data, self.resolution, self.center_crop = data, resolution, center_crop

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        import torch

        image = load_image(self.data.root / self.data.files[index], self.resolution, self.center_crop)
        return torch.from_numpy(image), int(self.data.labels[index])


def iterate_batches(data: ClassImages, batches, *, resolution: int, center_crop: bool = True, workers: int = 0):
    """(uint8 NHWC images, labels) of each list of indices in `batches`, in order; `workers`
    processes decode them (the order and content do not depend on it)."""
    import torch

    loader = torch.utils.data.DataLoader(_Files(data, resolution, center_crop), batch_sampler=batches,
                                         num_workers=workers, persistent_workers=False)
    yield from loader


@lru_cache(maxsize=2)  # consecutive batches read the same one or two epochs
def epoch_order(n: int, seed: int, epoch: int):
    """The seeded shuffle of epoch `epoch` (a DataLoader with shuffle=True in the seed): a
    function of (seed, epoch) alone, so a resumed run reads the same batches."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(n: int, batch_size: int, seed: int, start: int, stop: int):
    """The indices of training batches start..stop-1: consecutive slices of the epochs'
    shuffles, a batch running over into the next epoch (no partial batches)."""
    import torch

    batches = []
    for b in range(start, stop):
        first, last = b * batch_size, (b + 1) * batch_size
        parts = []
        for epoch in range(first // n, (last - 1) // n + 1):
            order = epoch_order(n, seed, epoch)
            lo, hi = max(first - epoch * n, 0), min(last - epoch * n, n)
            parts.append(order[lo:hi])
        batches.append(torch.cat(parts).tolist())
    return batches


def to_model_input(images, flips):
    """uint8 NHWC -> float NCHW in [-1, 1] (the seed's ToTensor + Normalize([0.5], [0.5])),
    mirrored where `flips` (bool per image) is set (RandomHorizontalFlip)."""
    import torch

    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


def reference_indices(data: ClassImages, count: int | None, seed: int) -> list[int]:
    """All images (count None), or a seeded choice of `count` of them, in file order."""
    if count is None or count >= len(data):
        return list(range(len(data)))
    chosen = np.random.default_rng(seed).choice(len(data), size=count, replace=False)
    return sorted(int(i) for i in chosen)
