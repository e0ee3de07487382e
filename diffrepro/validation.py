"""The config against workflow/schemas/config.schema.yaml: defaults set, errors made short.

The schema is the one place a default is written: validation fills every key a user left
out from the schema's `default`, so the code reads `config[key]` and never a second default.
Snakemake's own validate() prints the whole schema section and the whole config beside an
error (about 1,600 lines for a typo); a person needs the key, its value, what is allowed and
where they wrote it, so errors are formatted here.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .configfile import Locations, locate

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
MAX_LINES = 20


class ConfigError(ValueError):
    """A config the workflow refuses, with the key it is about (a tuple path) when known."""

    def __init__(self, message: str, key: tuple | None = None):
        super().__init__(message)
        self.key = key


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(validator_class):
    """A validator that sets a property's schema default where the instance lacks it, before
    validating it (so the defaults inside a defaulted section are set too)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = _copy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value)) if isinstance(value, (dict, list)) else value


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def apply_schema(config: dict, locations: Locations | None = None) -> dict:
    """Validate in place (filling defaults); raise ConfigError for the most relevant error."""
    error = jsonschema.exceptions.best_match(_Validator(schema()).iter_errors(config))
    if error is not None:
        text, key = describe(error)
        raise ConfigError(text, key)
    return config


def key_name(path) -> str:
    return ".".join(str(k) for k in path) or "(top level)"


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + " ...}"


def _allowed_and_fix(error) -> tuple[str, str, tuple]:
    """(what is allowed, the fix, the key the error is about) for one schema error."""
    v, expected, instance = error.validator, error.validator_value, error.instance
    path = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:  # the key itself is wrong: point at it
        path = (*path, instance)
    name = str(path[-1]) if path else "it"
    if v == "additionalProperties" and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = [k for k in instance if k not in known]
        key = (*path, unknown[0]) if unknown else path
        close = difflib.get_close_matches(str(unknown[0]), known, n=1) if unknown and known else []
        fix = f"did you mean {close[0]!r}? rename it" if close else "remove it, or check its section"
        allowed = f"the keys of {key_name(path)}: {', '.join(known)}" if known else "no other keys"
        return allowed, fix, key
    if v == "required":
        missing = [k for k in expected if k not in instance]
        key = (*path, missing[0]) if missing else path
        return (f"{key_name(path)} needs {', '.join(expected)}",
                f"add {missing[0] if missing else 'it'}: (see config/default.yaml for an example)", key)
    if v == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        numeric = any(k in ("integer", "number") for k in kinds)
        fix = (f"write {name}: {instance} without quotes" if numeric and isinstance(instance, str)
               and isinstance(yaml.safe_load(instance), (int, float)) else
               f"give {name} a number, e.g. {name}: 1" if numeric else f"give {name} a value of that type")
        return f"a value of type {' or '.join(kinds)}", fix, path
    if v == "enum":
        close = difflib.get_close_matches(str(instance), [str(e) for e in expected], n=1)
        return (f"one of {', '.join(map(str, expected))}",
                f"did you mean {close[0]}?" if close else "use one of those", path)
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if v in bounds:
        return f"a number {bounds[v]} {expected}", f"set {name} {bounds[v]} {expected}", path
    if v == "const":
        return f"only {expected!r}", f"set {name}: {expected!r} or remove it", path
    if v == "pattern":
        described = error.schema.get("description")
        return (f"text matching {expected}" + (f" ({described})" if described else ""),
                "rename it: letters, digits and _ only" if expected == "^[A-Za-z0-9_]+$" else "rename it to match", path)
    if v in ("minItems", "maxItems", "minProperties", "maxProperties"):
        return f"{v} {expected}", "add or remove entries", path
    if v == "uniqueItems":
        return "no repeated entries", "remove the repeats", path
    if v == "multipleOf":
        return f"a multiple of {expected}", f"round {name} to a multiple of {expected}", path
    if v == "propertyNames":
        return "the names the schema lists", "rename it", path
    if v in ("oneOf", "anyOf"):
        options = [o.get("description") or _short(o.get("required") or o, 60) for o in expected]
        return "exactly one of: " + "; ".join(map(str, options)), "keep the keys of one form only", path
    return error.message, "see workflow/schemas/config.schema.yaml", path


def describe(error) -> tuple[str, tuple]:
    """The message for one schema error, and the key it is about."""
    allowed, fix, key = _allowed_and_fix(error)
    value = error.instance
    if error.validator in ("additionalProperties", "required") and len(key) > len(error.absolute_path):
        value = error.instance.get(key[-1], "(missing)")
    return f"{key_name(key)} = {_short(value)}\n  allowed: {allowed}\n  fix: {fix}", key


def format_error(err: Exception, locations: Locations | None = None) -> str:
    """The message a person sees: at most MAX_LINES lines, naming the key, the file and line
    that set it (when known), the value, what is allowed and the fix."""
    text = str(err).strip()
    if text.startswith("config error:"):
        text = text[len("config error:"):].strip()
    key = getattr(err, "key", None)
    if key is None and text.startswith("config key "):
        name, _, rest = text[len("config key "):].partition(": ")
        key, text = tuple(_path_of(name)), f"{name}: {rest}"
    lines = f"config error: {text}".splitlines()
    where = locate(locations or {}, key) if key else None
    if where:
        lines.insert(1, f"  in: {where}")
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES - 1] + [f"  ... ({len(lines) - MAX_LINES + 1} more lines)"]
    return "\n".join(lines)


def _path_of(name: str) -> list:
    """'methods.tstitch.grid' -> ['methods', 'tstitch', 'grid']; digits become list indices."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def schema_defaults(*path: str) -> dict:
    """The schema's defaults of one section's keys, e.g. schema_defaults("compute"); "*" steps
    into a mapping's entries (schema_defaults("models", "*", "hub")). For library functions
    handed a section directly (not through the workflow's validated config): the default is
    still written only in the schema."""
    node = schema()
    for part in path:
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return {name: _copy(sub["default"]) for name, sub in node.get("properties", {}).items()
            if isinstance(sub, dict) and "default" in sub}
