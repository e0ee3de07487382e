"""The table-kind plugin point: a registry of the reports a config's `tables` can ask for.

A table kind is one module in this package that calls `register_table_kind`: its name, the
config keys a table entry of that kind reads, the published numbers it prints beside ours
(reports/paper/<paper>.yaml), how it builds the table and its claims, and which figures it
draws. The workflow's `reproduce_*` targets, the check of `tables:` and the table and figure
rules all come from this registry, so adding a kind is one file here (plus its published
numbers as data, if any).

Kind modules stay light (no matplotlib, no torch at import): the Snakefile loads them all to
plan the DAG; their build and draw functions import the report code they need when called.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ...catalog import LIST_HINT

# Sampling tables report method settings (samples -> scores + timing); training tables report
# training runs (snapshots -> scores against iterations): the DiT study's (training) or the
# class-prompt U-Net's (unet_training).
STAGES = ("sampling", "training", "unet_training")


@dataclass(frozen=True)
class TableKind:
    name: str
    summary: str                                      # one line, for listings and the docs
    build: Callable[[Any], None]    # (report.tables.TableJob) writes the table's CSV, Markdown, claims
    figures: Mapping[str, Callable[[Any], None]]  # figure -> draw(report.tables.FigureJob): <table>_<figure>.{png,svg}
    paper: str | None = None        # reports/paper/<paper>.yaml holds its published tables (None: none)
    stage: str = "sampling"
    one_method: bool = False        # the entry names one `method` (its grid is the table) or `methods`
    # Group targets beyond the per-table `reproduce_<table>_table`: target -> which of this
    # kind's tables (by table name) it builds.
    targets: Mapping[str, Callable[[str], bool]] = field(default_factory=dict)
    # Extra config check (config, table name, entry) -> raise ConfigError, beyond the common ones.
    check: Callable[[dict, str, dict], None] | None = None
    # What the table's jobs need from the config beyond their inputs (config, entry) -> JSON-able
    # dict; a param, so a change reruns the table.
    context: Callable[[dict, dict], dict] | None = None
    # figure -> its caption in the HTML report ("{table}" stands for the table's name)
    captions: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)  # figure -> its group in the HTML report

    def caption(self, figure: str, table: str) -> str:
        return self.captions.get(figure, PARETO_CAPTION).replace("{table}", table)

    def group(self, figure: str) -> str:
        return self.groups.get(figure, "Pareto plots" if figure == "pareto" else figure)

    def methods(self, entry: Mapping[str, Any]) -> list[str]:
        """The methods (sampling) or training methods a table entry of this kind reports."""
        return [entry["method"]] if self.one_method else list(entry["methods"])


PARETO_CAPTION = ("Pareto plot of ``{table}``: quality against cost for every setting of the table, "
                  "ours beside the paper's where it publishes them.")

_REGISTRY: dict[str, TableKind] = {}


def register_table_kind(name: str, **fields: Any) -> TableKind:
    """Make a table kind available to configs under `name` (see TableKind for the fields)."""
    kind = TableKind(name=name, **fields)
    if kind.stage not in STAGES:
        raise ValueError(f"table kind {name!r}: stage must be one of {STAGES}, got {kind.stage!r}")
    if name in _REGISTRY and _REGISTRY[name] != kind:
        raise ValueError(f"table kind {name!r} is registered twice")
    _REGISTRY[name] = kind
    return kind


_LOADED: list[bool] = []


def load_table_kinds() -> dict[str, TableKind]:
    """Import every module of this package so their registrations run (once per process)."""
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _LOADED.append(True)
    return dict(_REGISTRY)


def get_table_kind(name: str) -> TableKind:
    kinds = load_table_kinds()
    if name not in kinds:
        raise KeyError(f"unknown table kind {name!r}; available kinds: {sorted(kinds)}; {LIST_HINT}")
    return kinds[name]


# A table entry without `kind` is T-Stitch's main table kind (the configs written before kinds).
def default_kind() -> str:
    """A table entry's kind when it names none (the schema's default)."""
    from ...validation import schema_defaults

    return schema_defaults("tables", "*")["kind"]


def kind_of(entry: Mapping[str, Any]) -> TableKind:
    return get_table_kind(entry.get("kind") or default_kind())


def table_targets(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """reproduce_* target -> the configured tables it builds: one per table, then the kinds'
    group targets (which take the name where the two meet, e.g. reproduce_tstitch_sd_table
    builds every tstitch_sd table of a config that has several)."""
    targets = {f"reproduce_{name}_table": [name] for name in tables}
    for kind in load_table_kinds().values():
        for target, selects in kind.targets.items():
            targets[target] = [name for name, entry in tables.items()
                               if kind_of(entry).name == kind.name and selects(name)]
    return targets
