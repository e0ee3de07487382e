"""The method plugin point: a registry of acceleration methods and baselines.

A method is one module in methods/ or baselines/ that registers a function with
`@register_method`. The function receives already-built guided denoisers (by role, e.g.
"small" and "large"), a sampler, the fixed initial noise, labels and per-image
generators, and a frozen setting; it returns images and what they cost. It never loads
files, picks devices or writes outputs: the harness does, so every method is seeded,
timed and scored the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .catalog import LIST_HINT

if TYPE_CHECKING:  # the workflow imports every plugin to read its config: no torch there
    import torch

    from .diffusion.guidance import GuidedDenoiser
    from .diffusion.samplers import Sampler

PLUGIN_PACKAGES = ("methods", "baselines")


@dataclass
class MethodOutput:
    samples: torch.Tensor                          # model space, (N, C, H, W)
    model_steps: Counter = field(default_factory=Counter)  # denoiser calls per model role
    # Diagnostics, one value per image (e.g. a parallel sampler's iterations) ...
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    # ... and one row per image over iterations, NaN after the image stopped (e.g. residuals).
    traces: dict[str, np.ndarray] = field(default_factory=dict)
    # Every network call ran on the whole batch, so steps x one forward pass is the ideal
    # time; parallel-in-time samplers batch a window of steps and set this False.
    uniform_batch: bool = True
    # Seconds spent on inputs the paper treats as given (ParaTAA's warm-start trajectory);
    # timing subtracts them.
    given_s: float = 0.0

    def steps_by_role(self, roles) -> dict[str, int]:
        """Denoiser calls for every role, 0 for a model the setting never ran."""
        return {role: self.model_steps.get(role, 0) for role in roles}


# (models by role, sampler, noise, labels, per-image generators, setting) -> MethodOutput
MethodFn = Callable[["dict[str, GuidedDenoiser]", "Sampler", "torch.Tensor", "torch.Tensor",
                     "Sequence[torch.Generator]", Any], MethodOutput]


def build_dataclass(cls: type, values: dict, *, owner: str, noun: str) -> Any:
    """cls(**values), refusing names it has no field for (a config typo) with the valid ones,
    and values of the wrong type (a quoted "0.5" would reach a comparison as text)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{owner} has no {noun} {sorted(unknown)}; its {noun}s are {sorted(names)}; {LIST_HINT}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        allowed = _allowed_types(hints.get(name))
        if allowed is not None and not _is_instance(value, allowed):
            raise ValueError(f"{owner} {noun} {name} = {value!r}: must be "
                             f"{' or '.join(sorted(TYPE_WORDS.get(t, t.__name__) for t in allowed))}"
                             + (" (write it without quotes)" if isinstance(value, str) else ""))
    if "steps" in values and values["steps"] is not None and not (1 <= values["steps"] <= 1000):
        # the engines read a setting's `steps` as the sampler's step count
        raise ValueError(f"{owner} {noun} steps = {values['steps']!r}: must be an integer in [1, 1000]")
    return cls(**values)


def check_int(owner: str, name: str, value: Any, low: int, high: int = 1000, *, optional: bool = False) -> None:
    """A setting's integer knob in [low, high] (None allowed if `optional`): the check every setting
    class makes in __post_init__, for settings built in code as well as from the config."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not (isinstance(value, int) and low <= value <= high):
        raise ValueError(f"{owner} {name} must be an integer in [{low}, {high}], got {value!r}")


class PlainPipelineReference:
    """Mixin of a text-to-image baseline's setting: measured against the plain pipeline with the
    same steps (sd_scheduler's `pipeline` setting), one reference run shared by every baseline."""

    def reference(self) -> tuple[str, dict]:
        return "sd_scheduler", {"scheduler": "pipeline", "steps": self.steps}


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text", type(None): "null"}


def _allowed_types(hint: Any) -> tuple[type, ...] | None:
    """The plain types a field accepts (None: not checked, e.g. Any or a container)."""
    if hint in (int, float, bool, str, type(None)):
        return (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_allowed_types(arg) for arg in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if typing.get_origin(hint) is typing.Literal:
        return tuple({type(arg) for arg in typing.get_args(hint)})
    return None


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # YAML's true is not the integer 1
        return bool in allowed
    if isinstance(value, int) and float in allowed:  # 1 is a fine float
        return True
    return isinstance(value, allowed)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    run: MethodFn
    setting_type: type
    roles: tuple[str, ...]
    summary: str  # one line (the docstring's first by default), for `python -m diffrepro list`
    samplers: tuple[str, ...] | None = None  # samplers the method supports (None: any)
    # "denoiser": run(denoisers, sampler, noise, labels, generators, setting) over the suite's
    # own sampling loop; "pipeline": run(pipeline, unets, call, setting) over a diffusers
    # text-to-image pipeline (diffrepro.t2i), `call(**kwargs)` running it on the fixed inputs.
    family: str = "denoiser"

    def make_setting(self, values: dict) -> Any:
        """Build the frozen setting; its __post_init__ rejects out-of-range values."""
        return build_dataclass(self.setting_type, values, owner=f"method {self.name!r}", noun="setting")

    def setting_id(self, setting: Any) -> str:
        return setting.id() if hasattr(setting, "id") else "-".join(
            f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
            for k, v in dataclasses.asdict(setting).items())


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, *, setting: type, roles: Sequence[str], summary: str = "",
                    samplers: Sequence[str] | None = None, family: str = "denoiser"):
    """Decorator: make a method available to the workflow under `name`.

    A setting may define `steps` (it then fixes the sampler's step count, overriding
    sampling.steps) and `reference()` -> (method, setting values): the run it is measured
    against (e.g. a parallel sampler against the sequential one with the same steps).
    """
    def wrap(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ValueError(f"method name {name!r} is registered twice")
        _REGISTRY[name] = MethodSpec(name, fn, setting, tuple(roles), summary or (fn.__doc__ or "").strip().split("\n")[0],
                                     tuple(samplers) if samplers is not None else None, family)
        return fn
    return wrap


_SCANNED_FROM: list[Path] = []  # the working directory the plugin folders were last scanned from


def load_plugins() -> dict[str, MethodSpec]:
    """Import every module in methods/ and baselines/ so their registrations run: the installed
    packages' and those of the working directory (the workflow's), where a user adds a file.
    Scanned once per working directory: planning a DAG asks for methods thousands of times."""
    if _SCANNED_FROM == [Path.cwd()]:
        return dict(_REGISTRY)
    for package_name in PLUGIN_PACKAGES:
        package = importlib.import_module(package_name)
        local = Path.cwd() / package_name
        if local.is_dir() and all(Path(p).resolve() != local.resolve() for p in package.__path__):
            package.__path__.append(str(local))
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{info.name}")
    _SCANNED_FROM[:] = [Path.cwd()]
    return dict(_REGISTRY)


def register_aliases(methods_config: dict) -> None:
    """Config entries with `plugin: <method>` run that method under their own name, e.g.
    T-Stitch once per model pair. Called before any config lookup, in the workflow and in
    every job (snakejob.job), since each job is a fresh process."""
    registry = load_plugins()
    for name, entry in methods_config.items():
        plugin = entry.get("plugin")
        if plugin is None or plugin == name:
            continue
        if plugin not in registry:
            raise KeyError(f"config key methods.{name}.plugin: unknown method {plugin!r}; available "
                           f"methods: {sorted(registry)}; {LIST_HINT}")
        if name in registry and registry[name].run is not registry[plugin].run:
            raise ValueError(f"config key methods.{name}: {name!r} is already a method of its own; "
                             f"choose another name for this {plugin} entry")
        _REGISTRY[name] = dataclasses.replace(registry[plugin], name=name)


def get_method(name: str) -> MethodSpec:
    registry = load_plugins()
    if name not in registry:
        raise KeyError(f"unknown method {name!r}; available methods: {sorted(registry)}; {LIST_HINT}")
    return registry[name]


def reference_run(method: str, setting_values: dict, baseline_values: dict | None) -> dict:
    """{"method", "params"} of the run a setting is measured against: the one its setting
    names (a parallel sampler: the sequential sampler with its steps), else the setting with
    the method's configured baseline values put over it (T-Stitch's {ratio: 0.0}: the large
    model alone, with the setting's own sampler and steps)."""
    setting = get_method(method).make_setting(setting_values)
    if hasattr(setting, "reference"):
        ref_method, ref_values = setting.reference()
        return {"method": ref_method, "params": ref_values}
    if baseline_values is None:
        raise ValueError(f"method {method!r} has no baseline: set methods.{method}.baseline")
    return {"method": method, "params": {**setting_values, **baseline_values}}
