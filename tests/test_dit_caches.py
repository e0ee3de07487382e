"""diffusers' cache hooks on the DiT (diffrepro/dit_caches.py, baselines/dit_caches.py): off is the
plain DiTTransformer2DModel run bit for bit (and our DiT up to float rounding), on changes the
samples and lowers the counted FLOPs, every call starts from a fresh cache, the hooks are gone
after it, and bad knob values are refused naming them."""

import pytest
import torch

from diffrepro.diffusion.guidance import GuidedDenoiser
from diffrepro.diffusion.samplers import make_sampler
from diffrepro.diffusion.sampling import sample_loop
from diffrepro.engines.flops import count_call
from diffrepro.methods import get_method, load_plugins
from conftest import tiny_dit

CASES = {"pab_dit": {"skip": 3, "timestep_low": -1, "timestep_high": 1001},
         "taylorseer_dit": {"cache_interval": 3, "max_order": 1, "warmup_steps": 2}}


@pytest.fixture(scope="module")
def setup():
    load_plugins()
    dit = tiny_dit(3, hidden=32, depth=4)  # random non-zero weights, the fixed position embedding kept
    denoiser = GuidedDenoiser(dit, cfg_scale=1.5)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 4, 7])
    return dit, denoiser, noise, labels


def run(method, values, setup):
    dit, denoiser, noise, labels = setup
    spec = get_method(method)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    with torch.no_grad():
        return spec.run({"model": denoiser}, make_sampler("ddim", 12), noise, labels, generators, spec.make_setting(values))


@pytest.mark.parametrize("method", list(CASES))
def test_off_is_the_plain_diffusers_dit_and_ours_up_to_rounding(method, setup):
    dit, denoiser, noise, labels = setup
    from diffrepro.dit_caches import diffusers_denoiser

    off = run(method, {}, setup)
    with torch.no_grad():
        plain, _ = sample_loop(make_sampler("ddim", 12), lambda i, t: ("model", diffusers_denoiser(denoiser)), noise,
                               labels, [torch.Generator().manual_seed(i) for i in range(3)])
        ours, _ = sample_loop(make_sampler("ddim", 12), lambda i, t: ("model", denoiser), noise, labels,
                              [torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(off.samples, plain)
    torch.testing.assert_close(off.samples, ours, rtol=1e-4, atol=1e-4)
    assert dict(off.model_steps) == {"model": 12}


@pytest.mark.parametrize("method", list(CASES))
def test_on_changes_the_samples_and_counts_fewer_flops_afresh_each_call(method, setup):
    dit, denoiser, *_ = setup
    off, on, again = run(method, {}, setup), run(method, CASES[method], setup), run(method, CASES[method], setup)
    assert not torch.allclose(on.samples, off.samples, atol=1e-6) and torch.isfinite(on.samples).all()
    assert torch.equal(on.samples, again.samples)  # a fresh cache per call
    flops = {name: count_call(lambda v=values: run(method, v, setup), {"model": dit}).total
             for name, values in (("off", {}), ("on", CASES[method]))}
    assert 0 < flops["on"] < flops["off"], flops
    from diffrepro.dit_caches import _converted

    registry = getattr(_converted[dit].transformer, "_diffusers_hook", None)
    assert registry is None or not any(registry.hooks for m in [registry])  # no hook left on the model
    assert all(not getattr(getattr(m, "_diffusers_hook", None), "hooks", {}) for m in _converted[dit].transformer.modules())


def test_the_timing_stand_in_runs_the_loop_alone(setup):
    *_, noise, labels = setup

    class Constant:
        def __call__(self, x, t, y):
            return torch.zeros_like(x).repeat(1, 2, 1, 1)

    spec = get_method("pab_dit")
    out = spec.run({"model": Constant()}, make_sampler("ddim", 4), noise, labels,
                   [torch.Generator().manual_seed(i) for i in range(3)], spec.make_setting(CASES["pab_dit"]))
    assert dict(out.model_steps) == {"model": 4}


@pytest.mark.parametrize("method, values, message", [
    ("pab_dit", {"skip": 0}, r"pab_dit skip must be an integer in \[1, 1000\], got 0"),
    ("taylorseer_dit", {"cache_interval": 2, "warmup_steps": 0}, "warmup_steps must be >= 1"),
])
def test_bad_knobs_are_refused_naming_them(method, values, message):
    load_plugins()
    with pytest.raises(ValueError, match=message):
        get_method(method).make_setting(values)
