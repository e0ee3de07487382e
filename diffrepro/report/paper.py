"""Published numbers as data: read the tables in reports/paper/*.yaml.

Each YAML file holds `tables: {name: {description, source, exact, setting, columns, rows}}`, so
every generated report can print the paper's number beside ours without retyping it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# reports/paper/ at the repository root (this file is diffrepro/report/paper.py).
PAPER_DIR = Path(__file__).resolve().parents[2] / "reports" / "paper"
TSTITCH_YAML = PAPER_DIR / "tstitch.yaml"


def _load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'tables' mapping")
    return doc


def paper_short_name(path: str | os.PathLike) -> str:
    """The paper's name as the report groups by it: its title up to the colon ("T-Stitch")."""
    return _load_yaml(path)["paper"].split(":")[0].strip()


def _table_entry(path: str | os.PathLike, name: str) -> dict[str, Any]:
    tables = _load_yaml(path)["tables"]
    if name not in tables:
        available = ", ".join(sorted(tables))
        raise KeyError(f"no table {name!r} in {path}; available tables: {available}")
    return tables[name]


def load_paper_table(path: str | os.PathLike, name: str) -> pd.DataFrame:
    """The rows of table `name` as a DataFrame with the YAML's column names."""
    entry = _table_entry(path, name)
    columns = list(entry["columns"])
    rows = entry["rows"]
    # A row with the wrong length is a transcription slip: fail loudly rather than pad.
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(
                f"{path}: table {name!r} row {i} has {len(row)} values for {len(columns)} columns"
            )
    return pd.DataFrame(rows, columns=columns)


def paper_source(path: str | os.PathLike, name: str) -> dict[str, Any]:
    """Where table `name` was read: description, source, exact flag and setting."""
    entry = _table_entry(path, name)
    return {
        "description": entry.get("description", ""),
        "source": entry.get("source", ""),
        "exact": bool(entry.get("exact", False)),
        "setting": dict(entry.get("setting", {})),
    }


def paper_timing_batch(path: str | os.PathLike, name: str, default: int = 8) -> int:
    """How many images the published times are for (`setting.timing_batch`; the DiT figures: 8)."""
    return int(_table_entry(path, name).get("setting", {}).get("timing_batch", default))
