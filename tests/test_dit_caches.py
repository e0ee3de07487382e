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
         "taylorseer_dit": {"cache_interval": 3, "max_order": 1, "warmup_steps": 2},
         "magcache_dit": {"threshold": 0.5, "max_skip_steps": 2, "retention_ratio": 0.25}}


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
    ("magcache_dit", {"threshold": float("nan")}, r"magcache_dit threshold must be a finite number >= 0, got nan"),
    ("magcache_dit", {"threshold": -0.1}, "threshold must be a finite number >= 0"),
    ("magcache_dit", {"retention_ratio": 1.5}, r"retention_ratio must be in \[0, 1\], got 1.5"),
    ("magcache_dit", {"max_skip_steps": 0}, r"max_skip_steps must be an integer in \[1, 1000\], got 0"),
])
def test_bad_knobs_are_refused_naming_them(method, values, message):
    load_plugins()
    with pytest.raises(ValueError, match=message):
        get_method(method).make_setting(values)


def _magcache_decisions(setup, values) -> list[bool]:
    """Which steps ran the transformer blocks (a forward pre-hook inside the second block: the
    block itself is called on skipped steps too, its hook returning the cached residual)."""
    dit, *_ = setup
    from diffrepro.dit_caches import _converted

    computed = []
    block = _converted[dit].transformer.transformer_blocks[1].attn1
    handle = block.register_forward_pre_hook(lambda *a: computed.append(True))
    try:
        run("magcache_dit", values, setup)
    finally:
        handle.remove()
    return computed


def test_magcache_calibrates_once_per_model_and_sampler_and_skips_by_the_step_alone(setup):
    import diffrepro.dit_caches as dc

    dit, denoiser, noise, labels = setup
    dc._mag_ratios.pop(dit, None)
    first = run("magcache_dit", CASES["magcache_dit"], setup)
    ratios = dc._mag_ratios[dit]
    assert len(ratios) == 1 and first.given_s > 0  # calibration time is reported as given
    (key, values), = ratios.items()
    assert len(values) == 12 and values[0] == 1.0 and all(v > 0 for v in values)
    again = run("magcache_dit", CASES["magcache_dit"], setup)
    assert again.given_s == 0.0 and torch.equal(again.samples, first.samples)
    # the calibration is diffusers' formula on the residual over the blocks: recomputed here
    from diffrepro.dit_caches import diffusers_denoiser

    guided = diffusers_denoiser(denoiser)
    blocks = guided.model.transformer.transformer_blocks
    seen = {}
    h1 = blocks[0].register_forward_pre_hook(lambda m, a, k: seen.__setitem__("in", a[0] if a else k["hidden_states"]),
                                             with_kwargs=True)
    residuals = []
    h2 = blocks[-1].register_forward_hook(lambda m, a, out: residuals.append((out - seen["in"]).float()))
    try:
        g = torch.Generator().manual_seed(dc.MAGCACHE_CALIBRATION["seed"])
        n = dc.MAGCACHE_CALIBRATION["images"]
        cal_noise = torch.randn((n, *noise.shape[1:]), generator=g)
        cal_labels = torch.randint(dit.num_classes, (n,), generator=g)
        with torch.no_grad():
            sample_loop(make_sampler("ddim", 12), lambda i, t: ("model", guided), cal_noise, cal_labels,
                        [torch.Generator().manual_seed(dc.MAGCACHE_CALIBRATION["seed"] - 1 - i) for i in range(n)])
    finally:
        h1.remove(), h2.remove()
    expected = [1.0] + [float((torch.linalg.norm(b, dim=-1) / (torch.linalg.norm(a, dim=-1) + 1e-8)).mean())
                        for a, b in zip(residuals, residuals[1:])]
    assert values == pytest.approx(expected, rel=1e-5)
    # decisions: the retained first quarter (3 of 12 steps) always computes; a higher
    # threshold skips at least as many steps; with the batch cut in two, the same steps skipped
    # and the same samples up to the float rounding of other batch sizes
    on = _magcache_decisions(setup, CASES["magcache_dit"])
    looser = _magcache_decisions(setup, {**CASES["magcache_dit"], "threshold": 5.0})
    assert 3 <= len(looser) <= len(on) < 12
    spec, setting = get_method("magcache_dit"), get_method("magcache_dit").make_setting(CASES["magcache_dit"])
    with torch.no_grad():
        halves = [spec.run({"model": denoiser}, make_sampler("ddim", 12), noise[part], labels[part],
                           [torch.Generator().manual_seed(i) for i in range(3)][part], setting).samples
                  for part in (slice(0, 1), slice(1, 3))]
    torch.testing.assert_close(torch.cat(halves), first.samples, rtol=1e-5, atol=1e-4)
    for part in (slice(0, 1), slice(1, 3)):
        assert len(_magcache_decisions((dit, denoiser, noise[part], labels[part]), CASES["magcache_dit"])) == len(on)


def test_magcache_ratios_are_per_sampler(setup):
    import diffrepro.dit_caches as dc

    dit, denoiser, noise, _ = setup
    a, _ = dc.magcache_ratios(denoiser, make_sampler("ddim", 12), tuple(noise.shape[1:]))
    b, _ = dc.magcache_ratios(denoiser, make_sampler("ddim", 8), tuple(noise.shape[1:]))
    assert len(a) == 12 and len(b) == 8


def test_faster_cache_fails_on_the_dit_as_on_the_unet(setup):
    """FasterCache's denoiser hook treats the guidance difference as 5-D video latents."""
    from diffusers.hooks import FasterCacheConfig, apply_faster_cache

    from diffrepro.dit_caches import diffusers_denoiser
    from diffrepro.t2i.caches import remove_hook_everywhere

    dit, denoiser, noise, labels = setup
    guided = diffusers_denoiser(denoiser)
    transformer = guided.model.transformer
    apply_faster_cache(transformer, FasterCacheConfig(spatial_attention_block_skip_range=2,
                                                      spatial_attention_timestep_skip_range=(-1, 1001),
                                                      current_timestep_callback=lambda: 500,
                                                      attention_weight_callback=lambda _: 0.5,
                                                      is_guidance_distilled=False))
    try:
        with pytest.raises(RuntimeError, match="dimensions"), torch.no_grad():
            from diffrepro.t2i.caches import cache_context

            with cache_context(transformer, "cond_uncond"):
                sample_loop(make_sampler("ddim", 4), lambda i, t: ("model", guided), noise, labels,
                            [torch.Generator().manual_seed(i) for i in range(3)])
    finally:
        from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK

        remove_hook_everywhere(transformer, _FASTER_CACHE_BLOCK_HOOK)
        remove_hook_everywhere(transformer, _FASTER_CACHE_DENOISER_HOOK)
