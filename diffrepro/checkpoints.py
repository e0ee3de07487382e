"""Checkpoints as safetensors with a sha256 sidecar that is verified on every load."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

from .integrity import ChecksumMismatch, record_sidecar, recorded_sha256, sidecar, verify_sidecar  # noqa: F401
from .io import atomic_path, sha256_file

METADATA_KEY = "diffrepro"


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                    metadata: dict[str, str] | None = None) -> str:
    """Write tensors atomically, then the sha256 sidecar; returns the digest.

    The metadata is stored as one key holding sorted JSON: safetensors writes several keys
    in a random (hash-map) order, so identical weights would get a different sha256 per run."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    packed = None if metadata is None else {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=packed)
    return record_sidecar(path)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata save_checkpoint stored (not checksum-verified; read-only use)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        stored = dict(f.metadata() or {})
    return json.loads(stored[METADATA_KEY]) if METADATA_KEY in stored else stored


def verify(path: str | os.PathLike, expected: str | None = None) -> str:
    """Check the file against `expected` (a lock's or record's pin) or its sidecar; returns the digest."""
    if expected is None:  # a workflow output: the error names the command that rebuilds it
        return verify_sidecar(path)
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"checksum mismatch for {path}: expected sha256 {expected}, found {actual}. "
            f"The file is corrupt or was replaced since its sha256 was pinned.")
    return actual


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """Verify, then load tensors (safetensors never executes code from the file)."""
    verify(path, expected_sha256)
    return load_file(str(path))
