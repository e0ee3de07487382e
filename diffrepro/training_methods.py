"""The training-method plugin point: how timesteps are drawn, how noise is paired with
images, and how the per-sample MSE is weighted.

Training-acceleration methods (SpeeD, Immiscible Diffusion) and their baselines (uniform
timesteps, P2, Min-SNR, logit-normal) each change some of these three parts of one DDPM
training step. A *component* is registered by a module in methods/ or baselines/ with
`@register_training_component` and defines the parts it changes; a configured training
method is a list of components, combined part by part (e.g. SpeeD + Immiscible), with
plain DDPM's choice for every part nobody defines. Two components defining the same part
is a config error.

This module imports no torch at the top: the workflow reads it to check the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .catalog import LIST_HINT
from .methods import build_dataclass, load_plugins

if TYPE_CHECKING:
    import torch

PARTS = ("timesteps", "pairing", "weighting")


# ---------------------------------------------------------------------------------------
# The three parts
# ---------------------------------------------------------------------------------------

@dataclass
class TimestepSampler:
    """Draws the batch's timesteps from `probabilities` (one draw, over 0..T-1).

    `reflect` (SpeeD's dual sampling): n // 2 + 1 primary draws, then their reflections,
    cut to n, as the SpeeDiT code does. `draw` overrides how one primary draw is made
    (plain DDPM keeps torch.randint; logit-normal uses diffusers' sampler)."""
    probabilities: np.ndarray
    reflect: Callable[[np.ndarray], np.ndarray] | None = None
    draw: Callable[[int, "torch.Generator"], "torch.Tensor"] | None = None

    def sample(self, n: int, generator: "torch.Generator") -> "torch.Tensor":
        import torch

        primaries = n // 2 + 1 if self.reflect is not None else n
        if self.draw is not None:
            t = self.draw(primaries, generator)
        else:
            p = torch.from_numpy(self.probabilities)
            t = torch.multinomial(p, primaries, replacement=True, generator=generator)
        if self.reflect is not None:
            t = torch.cat([t, torch.from_numpy(self.reflect(t.numpy())).to(t.dtype)])[:n]
        return t

    def marginal(self, batch_size: int | None = None) -> np.ndarray:
        """The distribution of a batch element's t, for figures and tests. With
        reflection, a batch of n holds n // 2 + 1 drawn and the rest reflected timesteps
        (half and half when batch_size is None, the large-batch limit)."""
        if self.reflect is None:
            return self.probabilities
        reflected = np.zeros_like(self.probabilities)
        np.add.at(reflected, self.reflect(np.arange(len(self.probabilities))), self.probabilities)
        drawn = 0.5 if batch_size is None else (batch_size // 2 + 1) / batch_size
        drawn = min(drawn, 1.0)
        return drawn * self.probabilities + (1.0 - drawn) * reflected


@dataclass
class NoisePairing:
    """Returns the noise for a batch of images (plain DDPM: independent Gaussian noise)."""
    pair: Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]
    name: str = "independent Gaussian"


@dataclass
class LossWeighting:
    """Per-timestep weight on the epsilon-MSE term (the learned-variance VLB term is not
    weighted, as in the SpeeDiT and P2 code)."""
    weights: np.ndarray


def gaussian_noise(x0: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
    import torch

    return torch.randn(x0.shape, generator=generator)


def _uniform_draw(num_timesteps: int):
    def draw(n: int, generator):
        import torch

        return torch.randint(num_timesteps, (n,), generator=generator)
    return draw


def plain_ddpm_part(part: str, num_timesteps: int):
    """What plain DDPM (Ho et al. 2020) does for each part."""
    if part == "timesteps":
        return TimestepSampler(np.full(num_timesteps, 1.0 / num_timesteps),
                               draw=_uniform_draw(num_timesteps))
    if part == "pairing":
        return NoisePairing(gaussian_noise)
    return LossWeighting(np.ones(num_timesteps))


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

# (params, alphas_cumprod over 0..T-1) -> {part: TimestepSampler | NoisePairing | LossWeighting}
ComponentBuilder = Callable[[Any, np.ndarray], dict]


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    build: ComponentBuilder
    params_type: type
    parts: tuple[str, ...]
    summary: str

    def make_params(self, values: dict) -> Any:
        return build_dataclass(self.params_type, values, owner=f"training component {self.name!r}",
                               noun="parameter")


@dataclass(frozen=True)
class NoParams:
    pass


_REGISTRY: dict[str, ComponentSpec] = {}


def register_training_component(name: str, *, parts: Sequence[str], params: type = NoParams,
                                summary: str = ""):
    """Decorator: make a training component available to the config under `name`."""
    bad = set(parts) - set(PARTS)
    if bad or not parts:
        raise ValueError(f"training component {name!r}: parts must be among {PARTS}, got {list(parts)}")

    def wrap(fn: ComponentBuilder) -> ComponentBuilder:
        if name in _REGISTRY and _REGISTRY[name].build is not fn:
            raise ValueError(f"training component name {name!r} is registered twice")
        _REGISTRY[name] = ComponentSpec(name, fn, params, tuple(parts),
                                        summary or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


def training_components() -> dict[str, ComponentSpec]:
    load_plugins()
    return dict(_REGISTRY)


def parse_entries(entries: Sequence[str | dict]) -> list[tuple[str, dict]]:
    """Config entries (a name, or {name: {param: value}}) as (name, params) pairs."""
    parsed = []
    for entry in entries:
        if isinstance(entry, str):
            parsed.append((entry, {}))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, values), = entry.items()
            parsed.append((name, dict(values or {})))
        else:
            raise ValueError(f"a training component is a name or {{name: {{params}}}}, got {entry!r}")
    return parsed


@dataclass
class TrainingMethod:
    """A configured combination of components; every part resolved."""
    components: list[tuple[str, dict]]
    timesteps: TimestepSampler
    pairing: NoisePairing
    weighting: LossWeighting
    defined_by: dict[str, str] = field(default_factory=dict)  # part -> component name

    def describe(self) -> dict:
        return {"components": [{"name": n, "params": p} for n, p in self.components],
                "parts": {part: self.defined_by.get(part, "plain DDPM") for part in PARTS}}


def check_components(entries: Sequence[str | dict]) -> list[tuple[str, dict]]:
    """Validate names, parameters and that no part is defined twice (no torch needed)."""
    registry = training_components()
    parsed = parse_entries(entries)
    owner: dict[str, str] = {}
    for name, values in parsed:
        if name not in registry:
            raise ValueError(f"unknown training component {name!r}; available: {sorted(registry)}; {LIST_HINT}")
        spec = registry[name]
        spec.make_params(values)
        for part in spec.parts:
            if part in owner:
                raise ValueError(f"components {owner[part]!r} and {name!r} both define the {part} "
                                 f"part; a training method may combine components that change "
                                 f"different parts only")
            owner[part] = name
    return parsed


def build_training_method(entries: Sequence[str | dict], alphas_cumprod: np.ndarray) -> TrainingMethod:
    parsed = check_components(entries)
    registry = training_components()
    parts: dict[str, Any] = {}
    defined_by: dict[str, str] = {}
    for name, values in parsed:
        spec = registry[name]
        built = spec.build(spec.make_params(values), alphas_cumprod)
        if set(built) != set(spec.parts):
            raise RuntimeError(f"training component {name!r} declared parts {spec.parts} but "
                               f"built {sorted(built)}")
        parts.update(built)
        defined_by.update({part: name for part in built})
    num_timesteps = len(alphas_cumprod)
    for part in PARTS:
        parts.setdefault(part, plain_ddpm_part(part, num_timesteps))
    return TrainingMethod(parsed, parts["timesteps"], parts["pairing"], parts["weighting"], defined_by)


# ---------------------------------------------------------------------------------------
# Schedule quantities the components share
# ---------------------------------------------------------------------------------------

def snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio abar / (1 - abar) of each timestep (float64)."""
    return alphas_cumprod / (1.0 - alphas_cumprod)
