"""Which GPU a job uses when several are visible (no torch here: tests spawn it cheaply)."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

_CLAIMED: list = []  # (index, open lock file), held for the life of the job's process


def claim_gpu(count: int, lock_dir: str | os.PathLike | None = None, poll_s: float = 5.0) -> int:
    """The index of a visible GPU that no other diffrepro job on this machine holds.

    A SLURM job sees only its own GPU (index 0); a local run with `--resources gpu=N` and N
    GPUs would otherwise put every job on GPU 0. The claim is an exclusive lock on a per-GPU
    file, released when the process exits (also when it is killed). More GPU jobs than GPUs:
    wait for one to finish.
    """
    if _CLAIMED:
        return _CLAIMED[0][0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "-")
    directory = Path(lock_dir or tempfile.gettempdir())
    while True:
        for index in range(count):
            handle = open(directory / f"diffrepro-gpu-{visible}-{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _CLAIMED.append((index, handle))
            return index
        time.sleep(poll_s)
