"""T-Stitch: exact endpoints, seeding, batch-size invariance."""

import numpy as np
import pytest
import torch

from diffrepro.diffusion.samplers import DDIMSampler, DDPMSampler
from diffrepro.diffusion.sampling import initial_noise_and_labels, sample_loop
from diffrepro.engines.denoiser import DenoiserEngine
from diffrepro.jobs import generate
from diffrepro.methods import get_method, load_plugins


def run_tstitch(denoisers, sampler, ratio, seed=0, n=4):
    noise, y, generators = initial_noise_and_labels(seed, range(n), (1, 8, 8), 10)
    return get_method("tstitch").run(denoisers, sampler, noise, y, generators,
                                     get_method("tstitch").make_setting({"ratio": ratio}))


def single_model(denoiser, sampler, seed=0, n=4):
    noise, y, generators = initial_noise_and_labels(seed, range(n), (1, 8, 8), 10)
    x, _ = sample_loop(sampler, lambda i, t: ("only", denoiser), noise, y, generators)
    return x


@pytest.mark.parametrize("make_sampler", [lambda: DDIMSampler(20), lambda: DDPMSampler(20)])
def test_endpoints_equal_single_model_sampling_bitwise(tiny_denoisers, make_sampler):
    sampler = make_sampler()
    r0 = run_tstitch(tiny_denoisers, sampler, 0.0)
    r1 = run_tstitch(tiny_denoisers, sampler, 1.0)
    assert dict(r0.model_steps) == {"large": 20}
    assert dict(r1.model_steps) == {"small": 20}
    assert torch.equal(r0.samples, single_model(tiny_denoisers["large"], sampler))
    assert torch.equal(r1.samples, single_model(tiny_denoisers["small"], sampler))


def test_intermediate_ratio_uses_both_models(tiny_denoisers):
    sampler = DDIMSampler(20)
    mid = run_tstitch(tiny_denoisers, sampler, 0.4)
    assert dict(mid.model_steps) == {"small": 8, "large": 12}
    assert not torch.equal(mid.samples, run_tstitch(tiny_denoisers, sampler, 0.0).samples)
    assert not torch.equal(mid.samples, run_tstitch(tiny_denoisers, sampler, 1.0).samples)


def test_ratio_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        get_method("tstitch").make_setting({"ratio": 1.2})


def test_noise_and_labels_depend_only_on_seed_and_index():
    a, ya, _ = initial_noise_and_labels(7, [0, 1, 2, 3], (1, 8, 8), 10)
    b, yb, _ = initial_noise_and_labels(7, [2, 3], (1, 8, 8), 10)
    assert torch.equal(a[2:], b) and torch.equal(ya[2:], yb)
    c, _, _ = initial_noise_and_labels(8, [0], (1, 8, 8), 10)
    assert not torch.equal(a[:1], c)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++"])
def test_samples_do_not_depend_on_batch_size(tiny_denoisers, sampler):
    engine = DenoiserEngine(tiny_denoisers, (1, 8, 8), 10, {"sampler": sampler, "steps": 10})
    args = (engine, "tstitch", {"ratio": 0.5}, 11, range(6))
    one_batch, labels_a, _, _ = generate(*args, batch_size=6, log=lambda m: None)
    small_batches, labels_b, _, _ = generate(*args, batch_size=2, log=lambda m: None)
    assert np.array_equal(labels_a, labels_b)
    assert np.array_equal(one_batch, small_batches)


def test_registry_lists_tstitch_and_unknown_method_is_explained():
    assert "tstitch" in load_plugins()
    with pytest.raises(KeyError, match="available methods"):
        get_method("no_such_method")
