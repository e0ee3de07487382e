"""NaN and inf are never sampled into a shard, scored or trained on without an error.

A NaN image becomes black after the uint8 cast and still gets an FID; a NaN loss silently
turns every weight to NaN. These helpers only inspect values (no computation or random draw
changes), and raise NonFiniteError with what was not finite and where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch


class NonFiniteError(RuntimeError):
    """A NaN or inf where a result must be finite."""


def nonfinite_rows(values) -> np.ndarray:
    """Positions along the first axis (images, rows) whose values hold a NaN or inf."""
    if isinstance(values, torch.Tensor):
        if not values.is_floating_point() or values.numel() == 0:
            return np.zeros(0, dtype=np.int64)
        bad = ~torch.isfinite(values.detach().reshape(len(values), -1)).all(dim=1)
        return bad.nonzero().flatten().cpu().numpy()
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.inexact) or values.size == 0:  # integers are always finite
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))


def describe_positions(positions: Sequence[int], total: int, noun: str = "images", shown: int = 5) -> str:
    """'3 of 8 images (indices 1, 4, 7)', the first `shown` indices only."""
    positions = [int(p) for p in positions]
    listed = ", ".join(map(str, positions[:shown])) + (", ..." if len(positions) > shown else "")
    return f"{len(positions)} of {total} {noun} (indices {listed})"


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of a state dict's floating-point tensors that hold a NaN or inf."""
    return [name for name, tensor in state.items()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor.detach()).all())]


def nonfinite_numbers(record: Mapping[str, Any]) -> list[str]:
    """Keys of a record (a score file's metrics) whose number is NaN or inf; None, strings and
    nested values are not numbers and pass."""
    return [key for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value)]


def refuse_nonfinite_metrics(values: Mapping[str, Any], what: str, then: str) -> None:
    """Raise NonFiniteError if a metric among `values` is NaN or inf: a table would print it
    as a number, or a gap, and claims would be checked against it."""
    bad = nonfinite_numbers(values)
    if bad:
        listed = ", ".join(f"{key} = {values[key]}" for key in bad)
        raise NonFiniteError(f"{what}: metric {listed} is not finite; {then}")


# what to do about a NaN or inf metric computed from finite samples
METRIC_ADVICE = ("The samples were finite: check the metric network's weights and the reference "
                 "statistics, then rerun.")
# what to do about a run whose loss or weights went NaN or inf
TRAINING_ADVICE = "Lower the learning rate or check the training data, then rerun."


@dataclass
class LossGuard:
    """Stops a training run at a NaN or inf loss, before that iteration's update (which would
    make every weight NaN), naming the run, the iteration and what is left on disk. `resume`:
    the run's resume file (None: it has none); `saved_at`: the iteration saved in it."""

    run: str
    resume: Path | None = None
    saved_at: int | None = None

    def check(self, loss: torch.Tensor, iteration: int) -> None:
        """`iteration`: 1-based, as the training log counts."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        if self.resume is not None and self.saved_at is not None and self.resume.exists():
            kept = f"{self.resume} keeps the last finite state (iteration {self.saved_at})."
        else:
            kept = "Nothing was saved."
        raise NonFiniteError(f"training {self.run}: the loss is {float(loss.detach())} at iteration "
                             f"{iteration}; stopped before its update. {kept}\n{TRAINING_ADVICE}")


def refuse_nonfinite_weights(path, iteration: int, **states: Mapping[str, torch.Tensor]) -> None:
    """Weights are never saved with a NaN or inf in them (a finite loss can still come with an
    inf gradient): `path` keeps what it held. `states`: state dicts by model (model, ema)."""
    bad = [f"{model}.{name}" for model, state in states.items() for name in nonfinite_tensors(state)]
    if bad:
        listed = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise NonFiniteError(f"{path}: not saved at iteration {iteration}, weights {listed} hold NaN or inf "
                             f"(the file keeps what it held).\n{TRAINING_ADVICE}")
