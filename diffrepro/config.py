"""Checks of the workflow config that a JSON schema cannot express, and grid expansion.

The schema (workflow/schemas/config.schema.yaml, applied by snakemake.utils.validate)
checks types, ranges and required keys; this module checks the parts that depend on
the code: that every method is registered, its model roles are mapped to configured
models, and every point of its grid is a valid setting.
"""

from __future__ import annotations

import itertools

from .methods import MethodSpec, load_plugins
from .report.paper import TSTITCH_YAML, load_paper_table


class ConfigError(ValueError):
    pass


def method_settings(config: dict, method: str) -> dict[str, dict]:
    """setting id -> setting values, for every point of the method's grid (cartesian product)."""
    spec = load_plugins()[method]
    grid = config["methods"][method]["grid"]
    keys = list(grid)
    settings = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        setting_id = spec.setting_id(spec.make_setting(values))
        if setting_id in settings:
            raise ConfigError(f"config key methods.{method}.grid: settings {settings[setting_id]} "
                              f"and {values} both map to {setting_id!r}; remove the duplicate")
        settings[setting_id] = values
    return settings


def check_config(config: dict) -> None:
    """Raise ConfigError naming the key and the allowed values; run before any job."""
    registry = load_plugins()
    for method, entry in config["methods"].items():
        where = f"methods.{method}"
        if method not in registry:
            raise ConfigError(f"config key {where}: unknown method {method!r}; available methods: "
                              f"{sorted(registry)} (add a module to methods/ to define a new one)")
        _check_roles(registry[method], entry, config, where)
        try:
            settings = method_settings(config, method)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key {where}.grid: {err}") from err
        if entry["baseline"] not in settings.values():
            raise ConfigError(f"config key {where}.baseline: {entry['baseline']} is not a point of "
                              f"the grid; choose one of {list(settings.values())}")
    for table, entry in config["tables"].items():
        if entry["method"] not in config["methods"]:
            raise ConfigError(f"config key tables.{table}.method: {entry['method']!r} is not "
                              f"configured under methods; configured: {sorted(config['methods'])}")
        try:
            load_paper_table(TSTITCH_YAML, entry["paper"])
        except KeyError as err:
            raise ConfigError(f"config key tables.{table}.paper: {err.args[0]}") from err


def _check_roles(spec: MethodSpec, entry: dict, config: dict, where: str) -> None:
    roles = set(entry["models"])
    if roles != set(spec.roles):
        raise ConfigError(f"config key {where}.models: method {spec.name!r} needs models for roles "
                          f"{sorted(spec.roles)}, got {sorted(roles)}")
    for role, model in entry["models"].items():
        if model not in config["models"]:
            raise ConfigError(f"config key {where}.models.{role}: model {model!r} is not defined "
                              f"under models; defined: {sorted(config['models'])}")
