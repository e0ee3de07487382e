"""What every result file records about how it was made."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from .io import sha256_file

PACKAGES = ("torch", "torchvision", "diffusers", "timm", "numpy", "scipy", "scikit-learn",
            "safetensors", "snakemake", "pandas", "matplotlib")
REPO_ROOT = Path(__file__).resolve().parents[1]


def config_hash(config: dict) -> str:
    """sha256 of the resolved config, key order normalised (a job's sections carry the whole
    config's, see job_config)."""
    if CONFIG_SHA256 in config:
        return config[CONFIG_SHA256]
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


CONFIG_SHA256 = "config_sha256"


def job_config(config: dict, *sections: str) -> dict:
    """What a job is handed of the workflow's config: the sections it reads, and the whole
    resolved config's sha256, which its result records as provenance."""
    return {**{name: config[name] for name in sections if name in config}, CONFIG_SHA256: config_hash(config)}


def git_state(root: Path = REPO_ROOT) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=20).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_state(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    state = {"device": str(device), "torch_threads": torch.get_num_threads(),
             "dtype": str(torch.get_default_dtype()),
             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
             "tf32_cudnn": torch.backends.cudnn.allow_tf32,
             "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        state["gpu"] = torch.cuda.get_device_name(device)
    return state


def provenance(config: dict, *, seeds: dict, files: dict[str, str], device="cpu",
               extra: dict | None = None) -> dict:
    """The provenance block for a result: code, config, seeds, versions, device, checksums."""
    return {
        "git": git_state(),
        "config_sha256": config_hash(config),
        "seeds": seeds,
        "python": sys.version.split()[0],
        "packages": package_versions(),
        **device_state(device),
        "file_sha256": {name: sha256_file(path) for name, path in sorted(files.items())},
        **(extra or {}),
    }
