"""Tolerance bands: how far our number may sit from a published one and still count as the same.

Trusted benchmarks judge a reproduction against a stated two-sided band rather than "close
enough": MLPerf Inference accepts an SDXL submission whose FID is within ±2 % and CLIP score
within ±0.2 % of the reference (mlcommons/inference, text_to_image). Here a band is data beside
the paper's numbers, in reports/paper/<paper>.yaml, set before a run with its reason:

    bands:                      # per metric, for every table of the file
      speedup: {relative: 0.05, reason: "..."}
    tables:
      some_table:
        bands:                  # optional: overrides for one table (e.g. coarser printed times)
          speedup: {relative: 0.09, reason: "..."}

A claim that compares one of our numbers with a published one reads "within band", "better" or
"worse" (outside the band on the good / bad side). A compared metric with no band is an error
naming the file and the metric: a default band would be one nobody chose for that number.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import yaml

WITHIN = "within band"
BETTER = "better"
WORSE = "worse"
NOT_MEASURED = "not measured"
KINDS = ("relative", "absolute")
# Float slack at the edge, so a number exactly on it (ours = paper × 1.05) counts as inside.
_EDGE_SLACK = 1e-9


@dataclass(frozen=True)
class Band:
    """A two-sided band around a published number: ±width, relative (a fraction) or absolute."""

    metric: str
    kind: str       # "relative" | "absolute"
    width: float
    reason: str
    source: str     # the file (and table) it was read from

    def half_width(self, paper: float) -> float:
        return self.width * abs(paper) if self.kind == "relative" else self.width

    def limits(self, paper: float) -> tuple[float, float]:
        half = self.half_width(paper)
        return paper - half, paper + half

    def text(self) -> str:
        """'±5 %' or '±0.1', then the reason: what the claims table prints in its band column."""
        width = f"±{self.width * 100:g} %" if self.kind == "relative" else f"±{self.width:g}"
        return f"{width}: {self.reason}"


def verdict(ours: float | None, paper: float | None, band: Band, higher_is_better: bool) -> str:
    """'within band' iff |ours - paper| <= the band's half-width; else 'better' or 'worse'."""
    if ours is None or paper is None or any(isinstance(v, float) and math.isnan(v) for v in (ours, paper)):
        return NOT_MEASURED
    low, high = band.limits(paper)
    slack = _EDGE_SLACK * max(1.0, abs(paper))
    if low - slack <= ours <= high + slack:
        return WITHIN
    return BETTER if (ours > high) == higher_is_better else WORSE


def combined(verdicts: Iterable[str]) -> str:
    """One verdict for a claim made of several comparisons: any 'worse' wins, then 'better'."""
    found = list(verdicts)
    for word in (NOT_MEASURED, WORSE, BETTER):
        if word in found:
            return word
    return WITHIN


def _parse(metric: str, spec: Any, source: str) -> Band:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: band {metric!r} must be a mapping like {{relative: 0.02, reason: ...}}")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise ValueError(f"{source}: band {metric!r} needs exactly one of {KINDS}, got {sorted(spec)}")
    width = float(spec[kinds[0]])
    if not width >= 0:
        raise ValueError(f"{source}: band {metric!r} has a negative width {width}")
    reason = spec.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"{source}: band {metric!r} states no reason")
    return Band(metric, kinds[0], width, reason.strip(), source)


def load_bands(path: str | os.PathLike, table: str | None = None) -> dict[str, Band]:
    """The file's bands, with `table`'s own overrides (tables.<table>.bands) applied."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    bands = {m: _parse(m, s, str(path)) for m, s in (doc.get("bands") or {}).items()}
    if table is not None:
        own = (doc.get("tables", {}).get(table) or {}).get("bands") or {}
        bands.update({m: _parse(m, s, f"{path} (table {table})") for m, s in own.items()})
    return bands


def band_for(path: str | os.PathLike, metric: str, table: str | None = None) -> Band:
    """The band of `metric`; a compared metric without one is an error naming file and metric."""
    bands = load_bands(path, table)
    if metric not in bands:
        where = f"{path}" + (f" (table {table})" if table else "")
        raise KeyError(f"{where}: no band for metric {metric!r}; add `bands: {{{metric}: "
                       f"{{relative: ..., reason: ...}}}}` (bands: {', '.join(sorted(bands)) or 'none'})")
    return bands[metric]
