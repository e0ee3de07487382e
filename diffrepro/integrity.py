"""Result files that carry their own sha256, and readers that refuse a damaged one.

JSON results hold a top-level "content_sha256" of the canonical JSON of the rest; .npz
results an array "content_sha256" over their other arrays; a table CSV (and a checkpoint)
a `<file>.sha256` sidecar. A reader that finds a file truncated, unparseable, edited or
without its hash raises DamagedResult naming the file and the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .io import _json_default, sha256_file, write_npz, write_text

HASH_KEY = "content_sha256"
# Set by the workflow (workflow/rules/common.smk): the --configfile(s) of the run, so the
# rebuild command plans the same paths as the run that made the file.
CONFIGFILES_ENV = "DIFFREPRO_CONFIGFILES"


class DamagedResult(RuntimeError):
    """A result file that is truncated, unparseable, edited or lacks its recorded hash."""


class ChecksumMismatch(DamagedResult):
    """A file whose sha256 is not the one recorded for it (sidecar, lock or record)."""


def rebuild_command(path: str | os.PathLike) -> str:
    """The command that remakes `path` from its rule. --force: a deleted file alone is not
    rebuilt while the outputs made from it are newer ("Nothing to be done")."""
    configfiles = os.environ.get(CONFIGFILES_ENV, "").split()
    config = f" --configfile {' '.join(map(shlex.quote, configfiles))}" if configfiles else ""
    return f"snakemake --cores all{config} --force {shlex.quote(str(path))}"


def damaged(path: str | os.PathLike, problem: str) -> DamagedResult:
    return DamagedResult(f"{path} is damaged: {problem}. Rebuild it with `{rebuild_command(path)}`, "
                         f"then rerun your snakemake command.")


# --------------------------------------------------------------------------------------
# JSON: the hash inside the file
# --------------------------------------------------------------------------------------

def _json_sha256(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_hashed_json(path: str | os.PathLike, obj: dict) -> None:
    """io.write_json's text with one key more: the hash of the object as it reads back
    (numpy scalars, tuples and int keys become JSON's own)."""
    digest = _json_sha256(json.loads(json.dumps(obj, default=_json_default)))
    write_text(path, json.dumps({**obj, HASH_KEY: digest}, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_verified_json(path: str | os.PathLike) -> dict:
    """The JSON object without its hash; DamagedResult if it does not match it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise damaged(path, "not valid JSON (truncated or corrupted)") from None
    if not isinstance(obj, dict) or HASH_KEY not in obj:
        raise damaged(path, f"it records no {HASH_KEY}")
    recorded = obj.pop(HASH_KEY)
    if _json_sha256(obj) != recorded:
        raise damaged(path, "its content does not match its recorded sha256 (edited or corrupted)")
    return obj


# --------------------------------------------------------------------------------------
# .npz: the hash as one more array
# --------------------------------------------------------------------------------------

def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_hashed_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    write_npz(path, **arrays, **{HASH_KEY: np.asarray(_arrays_sha256(arrays))})


def read_verified_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array but the hash, loaded; DamagedResult if they do not match it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError):  # zip, .npy header, short data
        raise damaged(path, "not a readable .npz (truncated or corrupted)") from None
    if HASH_KEY not in arrays:
        raise damaged(path, f"it records no {HASH_KEY}")
    recorded = str(arrays.pop(HASH_KEY))
    if _arrays_sha256(arrays) != recorded:
        raise damaged(path, "its arrays do not match their recorded sha256 (edited or corrupted)")
    return arrays


# --------------------------------------------------------------------------------------
# Any other file (table CSVs, checkpoints): a `<file>.sha256` sidecar
# --------------------------------------------------------------------------------------

def sidecar(path: str | os.PathLike) -> Path:
    return Path(f"{path}.sha256")


def record_sidecar(path: str | os.PathLike) -> str:
    """Write `<path>.sha256` for the file as it is now; returns the digest."""
    digest = sha256_file(path)
    write_text(sidecar(path), f"{digest}  {Path(path).name}\n")
    return digest


def verify_sidecar(path: str | os.PathLike, expected: str | None = None) -> str:
    """The file's sha256, checked against `expected` (or its sidecar)."""
    if expected is None:
        expected = recorded_sha256(path)
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatch(str(damaged(path, f"its sha256 {actual[:12]}... is not the recorded "
                                                f"{expected[:12]}... (corrupted or replaced)")))
    return actual


def recorded_sha256(path: str | os.PathLike) -> str:
    if not sidecar(path).exists():
        raise damaged(path, f"its checksum file {sidecar(path)} is missing")
    return sidecar(path).read_text().split()[0]


def read_verified_csv(path: str | os.PathLike):
    """The CSV as a DataFrame, after checking it against its sidecar."""
    import pandas as pd

    verify_sidecar(path)
    return pd.read_csv(path)
