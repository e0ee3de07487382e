"""Formatting shared by every table kind: metric labels, numbers in Markdown cells."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

# The scorer writes what each metric is ("FID (digits-CNN features)", "FID (Inception)"); these
# stand in where a record has none.
DEFAULT_LABELS = {
    "fid": "FID",
    "inception_score": "IS",
    "class_accuracy": "class accuracy",
}


def labels_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The metric labels the scorer wrote; records that disagree are a bug upstream."""
    labels: dict[str, str] = {}
    for record in records:
        for key, label in record.get("labels", {}).items():
            if labels.setdefault(key, label) != label:
                raise ValueError(
                    f"records disagree on the label of {key!r}: {labels[key]!r} vs {label!r}"
                )
    return labels


def label(labels: Mapping[str, str], key: str) -> str:
    return labels.get(key, DEFAULT_LABELS[key])


def fmt(value: Any, spec: str) -> str:
    """A number for a Markdown cell; a missing one (None, NaN, pandas NA) as a dash."""
    if value is None:
        return "—"
    try:
        missing = value != value or (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):  # pandas.NA compares to NA, which has no truth value
        missing = True
    return "—" if missing else format(value, spec)


def images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"
