"""`python -m diffrepro list`: the registered methods, training components and table kinds, and
the reproduce_* targets of a config, one line each.

Reads the plugin registries and the config only: no Snakemake, no torch, so it answers in about
a second. Error messages about unknown names point here (LIST_HINT).
"""

from __future__ import annotations

import collections.abc
import dataclasses
from pathlib import Path

import yaml

LIST_HINT = "see `python -m diffrepro list`"
DEFAULT_CONFIG = "config/default.yaml"
ROOT = Path(__file__).resolve().parents[1]  # the repository (the package is installed editable)
# Targets the Snakefile defines beside the per-table ones (Snakefile, workflow/rules/report.smk).
FIXED_TARGETS = {"reproduce_all": "every table of the config (the default target)",
                 "reproducibility": "REPRODUCIBILITY.md from the tables' results, claims and provenance"}


def load_config(path: str | None = None) -> dict:
    """The config a Snakemake run would use: config/default.yaml with `path` merged into it key
    by key (as Snakemake merges a --configfile), or `path` alone if it says `standalone: true`."""
    default = Path(DEFAULT_CONFIG) if Path(DEFAULT_CONFIG).is_file() else ROOT / DEFAULT_CONFIG
    config = yaml.safe_load(default.read_text())
    if path is None:
        return config
    given = yaml.safe_load(Path(path).read_text()) or {}
    return given if given.get("standalone") else _merge(config, given)


def _merge(base: dict, update: collections.abc.Mapping) -> dict:
    """snakemake.utils.update_config: mappings merge recursively, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, collections.abc.Mapping):
            base[key] = _merge(base.get(key) if isinstance(base.get(key), dict) else {}, value)
        else:
            base[key] = value
    return base


def first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def _with_fields(summary: str, noun: str, cls: type) -> str:
    """The summary and the names a config entry may set (what an unknown-setting error refers to)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return f"{first_line(summary)} ({noun}: {', '.join(names)})" if names else first_line(summary)


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max((len(name) for name, _ in rows), default=0)
    return [title, *(f"  {name.ljust(width)}  {text}" for name, text in rows), ""]


def listing(config_path: str | None = None) -> str:
    from .methods import load_plugins
    from .report.kinds import kind_of, load_table_kinds, table_targets
    from .training_methods import training_components

    methods = load_plugins()
    lines = _section("Methods (config `methods:`; modules in methods/ and baselines/):",
                     [(name, _with_fields(spec.summary, "settings", spec.setting_type))
                      for name, spec in sorted(methods.items())])
    lines += _section("Training components (config `training.methods:`):",
                      [(name, _with_fields(spec.summary, "params", spec.params_type))
                       for name, spec in sorted(training_components().items())])
    kinds = load_table_kinds()
    lines += _section("Table kinds (config `tables: {NAME: {kind: ...}}`; diffrepro/report/kinds/):",
                      [(name, kind.summary) for name, kind in sorted(kinds.items())])
    config = load_config(config_path)
    tables = config.get("tables") or {}
    rows = list(FIXED_TARGETS.items())
    for target, names in table_targets(tables).items():
        if names:  # a kind's group target with none of its tables in this config builds nothing
            kind = kind_of(tables[names[0]])
            rows.append((target, f"{', '.join(names)} ({kind.name}): {kind.summary}"))
    source = config_path or DEFAULT_CONFIG
    lines += _section(f"Targets of {source} (snakemake --cores all TARGET"
                      + (f" --configfile {config_path}):" if config_path else "):"), rows)
    return "\n".join(lines).rstrip() + "\n"
