"""Forward FLOPs of the denoiser calls a method actually makes, counted with torch's
FlopCounterMode (torch.utils.flop_counter) rather than from a formula, so a method that calls
a model on a window of steps, skips guidance or swaps models is counted as it ran.

Only the denoisers are counted: a counter is entered when one of the given modules starts a
forward call and left when that call returns (forward hooks), so the text encoder, the VAE
and the sampler's arithmetic between calls stay outside it.

What torch counts: the ops with a registered FLOP formula, i.e. matrix products (mm, addmm,
bmm, baddbmm), convolutions and scaled-dot-product attention (2 FLOPs per multiply-add).
What it does not: elementwise ops, normalisations, activations, softmax outside fused
attention, embeddings, and everything outside the denoiser calls.
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Callable, Mapping

import torch

# module -> modules that run in its place (diffrepro.dit_caches: our DiT as diffusers'
# DiTTransformer2DModel): their calls are counted under the module's role
_ALIASES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register_alias(module: torch.nn.Module, alias: torch.nn.Module) -> None:
    """Count `alias`'s forward calls as `module`'s (a converted copy that a method runs instead)."""
    aliases = _ALIASES.setdefault(module, [])
    if all(a is not alias for a in aliases):
        aliases.append(alias)

COUNTED = ("forward FLOPs of the denoiser calls the method made, as torch.utils.flop_counter.FlopCounterMode "
           "counts them: matrix products, convolutions and scaled-dot-product attention (2 per multiply-add)")
NOT_COUNTED = ("elementwise ops, normalisations, activations, embeddings, the sampler's arithmetic, and the "
               "text encoder and VAE of a pipeline")


class DenoiserFlops:
    """Context manager: forward FLOPs and calls of `modules` (role -> nn.Module), by role.

    A module shared by several roles is counted once, under its first role. A call nested in
    another counted call (one hooked module inside another) counts in the outer one only."""

    def __init__(self, modules: Mapping[str, torch.nn.Module]):
        self.role_of: dict[int, str] = {}
        self.modules = []
        for role, module in modules.items():
            for counted in (module, *_ALIASES.get(module, [])):
                if id(counted) not in self.role_of:
                    self.role_of[id(counted)] = role
                    self.modules.append(counted)
        self.flops: Counter = Counter({role: 0 for role in modules})
        self.calls: Counter = Counter({role: 0 for role in modules})
        self.by_op: Counter = Counter()
        self.given_inputs = False  # set by the caller: the calls include some on inputs the paper treats as given
        self._active: list = []  # (module, FlopCounterMode) of the call being counted
        self._handles: list = []

    def _pre(self, module, args, kwargs=None):
        if self._active:  # already inside a counted call
            return
        from torch.utils.flop_counter import FlopCounterMode

        mode = FlopCounterMode(display=False)
        mode.__enter__()
        self._active.append((module, mode))

    def _post(self, module, args, output):
        if not self._active or self._active[-1][0] is not module:
            return
        _, mode = self._active.pop()
        mode.__exit__(None, None, None)
        role = self.role_of[id(module)]
        self.flops[role] += mode.get_total_flops()
        self.calls[role] += 1
        for op, flops in mode.get_flop_counts().get("Global", {}).items():
            self.by_op[str(op)] += flops

    def __enter__(self) -> "DenoiserFlops":
        for module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        while self._active:  # an exception inside a call: leave its counter
            self._active.pop()[1].__exit__(None, None, None)

    @property
    def total(self) -> int:
        return int(sum(self.flops.values()))


def count_call(fn: Callable[[], object], modules: Mapping[str, torch.nn.Module]) -> DenoiserFlops:
    """Run `fn()` once and return what its calls of `modules` cost."""
    with torch.no_grad(), DenoiserFlops(modules) as counter:
        fn()
    return counter


def flops_record(run: DenoiserFlops, images: int, per_forward: Mapping[str, float]) -> dict:
    """A timing record's `flops` entry: per image, by model, per op, and one forward pass of
    each model per image (its unit cost, from `forward_pass`)."""
    return {
        "per_image": run.total / images,
        "by_model_per_image": {role: flops / images for role, flops in sorted(run.flops.items())},
        "calls_by_model": dict(sorted(run.calls.items())),
        "by_op_per_image": {op: flops / images for op, flops in sorted(run.by_op.items())},
        "per_forward_per_image": dict(sorted(per_forward.items())),
        "counted_images": images,
        "counter": f"torch.utils.flop_counter.FlopCounterMode (torch {torch.__version__})",
        "counted": COUNTED,
        "not_counted": NOT_COUNTED,
        # ParaTAA's warm start: its trajectory's calls are counted, its time is not
        "includes_given_inputs": bool(run.given_inputs),
    }
