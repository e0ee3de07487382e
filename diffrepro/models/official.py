"""Published DiT checkpoints (.pt) -> our verified safetensors checkpoints.

The DiT release (facebookresearch/DiT) stores a plain state dict; the T-Stitch authors' DiT-S/2
and DiT-B/2 files are training checkpoints ({"model", "ema", "opt", "args"}), from which DiT's own
`find_model` takes the EMA weights. Both are read with `torch.load(weights_only=True)`: only
tensors, containers and argparse.Namespace (the "args" entry) are allowed, never arbitrary code.
"""

from __future__ import annotations

import argparse
import os

import torch

from ..checkpoints import save_checkpoint
from ..io import sha256_file
from .dit import DiTConfig, build_dit


def read_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights a DiT sample script would use: the EMA copy when the file has one."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "ema" in obj:
        obj = obj["ema"]
    elif isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a DiT state dict (nor a training checkpoint with 'ema' or "
                         f"'model'): found {type(obj).__name__}")
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_state_dict(state: dict[str, torch.Tensor], config: DiTConfig | dict, source: str) -> None:
    """Load into a DiT of this config on the meta device: names and shapes must match exactly."""
    config = config if isinstance(config, DiTConfig) else DiTConfig(**config)
    with torch.device("meta"):
        model = build_dit(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{source} does not fit the configured DiT {config.to_dict()}: "
                         f"{err}. Check the model's `config` (hidden_size, depth, num_heads, "
                         f"patch_size, input_size) against the checkpoint.") from None


def convert_official_checkpoint(source_path: str | os.PathLike, config: DiTConfig | dict,
                                output: str | os.PathLike, *, url: str = "",
                                lock_path: str | os.PathLike | None = None, log=print) -> str:
    """Verify an official .pt (against the download lock, then against the config) and write
    it as a checksummed safetensors file with the keys unchanged; returns the new file's sha256.

    The lock check matters for a file placed by hand: Snakemake never reruns the download
    rule for a file that exists, so this is where such a file meets its pinned sha256."""
    if lock_path is not None:
        from ..download import RemoteFile, fetch

        fetch(RemoteFile(os.path.basename(source_path), url), source_path, lock_path,
              allow_downloads=False, log=log)
    state = read_official_state_dict(source_path)
    check_state_dict(state, config, str(source_path))
    metadata = {"source_file": os.path.basename(source_path), "source_url": url,
                "source_sha256": sha256_file(source_path)}
    return save_checkpoint(output, state, metadata=metadata)
