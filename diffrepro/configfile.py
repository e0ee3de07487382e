"""Reading config files strictly, with the line of every key.

PyYAML keeps the last of two equal keys without a word and reports a syntax error without
naming the file; Snakemake's loader adds neither. A config is what a paper's numbers hang on,
so a duplicate key is an error here, and every later message can say "file, line N".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

# key path (a tuple of keys and list indices) -> "file, line N"
Locations = dict[tuple, str]
COMMAND_LINE = "--config on the command line"


class ConfigFileError(ValueError):
    """A config file that cannot be read as a config: syntax, duplicate keys, not a mapping."""


def shown(path: str | os.PathLike) -> str:
    """A path as a person finds it: relative to here when below here, else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return relative if not relative.startswith("..") else os.path.abspath(path)


def _where(path: str | os.PathLike, line: int) -> str:
    return f"{shown(path)}, line {line}"


def _walk(node: yaml.Node, key: tuple, path, out: Locations) -> None:
    """Record the line of every key under `node`; refuse a key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if name == "<<":  # a YAML merge key may repeat; its keys are the anchor's
                continue
            line = key_node.start_mark.line + 1
            if name in first_line:
                raise ConfigFileError(
                    f"config error: key {'.'.join(map(str, (*key, name)))} is given twice\n"
                    f"  in: {_where(path, line)} (first at line {first_line[name]})\n"
                    f"  fix: keep one of them (YAML would silently keep the last)")
            first_line[name] = line
            out[(*key, _typed_key(key_node))] = _where(path, line)
            _walk(value_node, (*key, _typed_key(key_node)), path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*key, i)] = _where(path, item.start_mark.line + 1)
            _walk(item, (*key, i), path, out)


def _typed_key(node: yaml.Node) -> Any:
    """The key as safe_load builds it (an unquoted 1 is the integer 1)."""
    return yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else node.value


def read_config_file(path: str | os.PathLike) -> tuple[dict, Locations]:
    """The file's mapping and the line of each key; ConfigFileError names file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigFileError(f"config error: cannot read {path}: {err.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(filter(None, (err.context, err.problem)))
        raise ConfigFileError(f"config error: {shown(path)} is not valid YAML\n  in: {shown(path)}{line}: {problem}\n"
                              f"  fix: correct the YAML there (indent with spaces; quote values "
                              f"holding ': ' or '#')") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config error: {path} must hold a mapping of keys at the top level, "
                              f"not a {type(data).__name__}")
    locations: Locations = {}
    if node is not None:
        _walk(node, (), path, locations)
    return data, locations


def merged_locations(files: list[str | os.PathLike], command_line: dict | None = None) -> Locations:
    """Where each key of the merged config was last set: files in merge order (a later file
    overrides an earlier one, as Snakemake merges them), then the --config values."""
    out: Locations = {}
    for path in files:
        out.update(read_config_file(path)[1])
    _mark(command_line or {}, (), out)
    return out


def _mark(value: Any, key: tuple, out: Locations) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out[(*key, k)] = COMMAND_LINE
            _mark(v, (*key, k), out)


def locate(locations: Locations, key: tuple) -> str | None:
    """The line that set `key`, or else its nearest parent's."""
    for n in range(len(key), 0, -1):
        if key[:n] in locations:
            return locations[key[:n]]
    return None


def typed_command_line(values: dict) -> dict:
    """--config values with YAML's types: Snakemake parses a nested value (`--config
    'sampling={num_samples: 16}'`) with YAML's BaseLoader, which leaves every scalar a
    string; read each such scalar as YAML would in a file (numbers, booleans, null)."""
    def typed(value: Any, nested: bool) -> Any:
        if isinstance(value, dict):
            return {k: typed(v, True) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v, True) for v in value]
        if isinstance(value, str) and nested:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
        return value
    return {k: typed(v, False) for k, v in values.items()}
