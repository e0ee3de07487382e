"""Wall-clock of one call with the device synchronised before and after (CUDA runs
asynchronously: without the sync a timer measures the kernel launches, not the work)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    """Seconds `fn()` takes on `device`."""
    sync(device)
    began = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - began
