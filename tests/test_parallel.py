"""ParaTAA and Picard (ParaDiGMS): exactness at zero tolerance, iteration bounds, seeding."""

import contextlib

import pytest
import torch

from diffrepro.diffusion.parallel import (ParaTAASolver, Trajectory,
                                          sequential_trajectories, solve_in_lockstep)
from diffrepro.diffusion.samplers import DDIMSampler, DDPMSampler
from diffrepro.diffusion.sampling import initial_noise_and_labels, sample_loop
from diffrepro.methods import get_method

STEPS = 12
EXACT = {"tolerance": 0.0, "relative_tolerance": 0.0}


@pytest.fixture(scope="module")
def denoiser(tiny_denoisers):
    return tiny_denoisers["large"]


def run(method, denoiser, values, n=3, seed=0, sampler=None, indices=None):
    spec = get_method(method)
    setting = spec.make_setting(values)
    noise, y, generators = initial_noise_and_labels(seed, indices or range(n), (1, 8, 8), 10)
    return spec.run({"model": denoiser}, sampler or DDIMSampler(setting.steps), noise, y, generators,
                    setting)


def sequential(denoiser, steps=STEPS, n=3, seed=0, sampler=None):
    noise, y, generators = initial_noise_and_labels(seed, range(n), (1, 8, 8), 10)
    x, _ = sample_loop(sampler or DDIMSampler(steps), lambda i, t: ("m", denoiser), noise, y, generators)
    return x


@pytest.mark.parametrize("values", [
    dict(window=STEPS, order=1, memory=1),
    dict(window=STEPS, order=STEPS, memory=2),
    dict(window=5, order=3, memory=3),
    dict(window=4, order=4, memory=2, warm_start=True),
])
def test_parataa_at_zero_tolerance_is_the_sequential_sample(denoiser, values):
    out = run("parataa", denoiser, {"steps": STEPS, **values, **EXACT})
    assert out.per_image["converged"].all()
    # float64 states vs the sequential sampler's float32 arithmetic: rounding only
    torch.testing.assert_close(out.samples, sequential(denoiser), atol=2e-4, rtol=0)


@pytest.mark.parametrize("window", [1, 5, STEPS])
def test_picard_at_zero_tolerance_is_the_sequential_sample(denoiser, window):
    out = run("picard", denoiser, {"steps": STEPS, "window": window, "tolerance": 0.0})
    torch.testing.assert_close(out.samples, sequential(denoiser), atol=2e-4, rtol=0)
    if window == 1:  # a window of one step is the sequential sampler
        assert out.per_image["parallel_iterations"].tolist() == [STEPS] * 3


def test_plain_fixed_point_converges_within_the_number_of_steps(denoiser):
    out = run("parataa", denoiser, {"steps": STEPS, "window": STEPS, "order": 1, "memory": 1, **EXACT})
    iterations = out.per_image["parallel_iterations"]
    assert (iterations <= STEPS).all() and out.per_image["converged"].all()
    # each iteration evaluates every step not yet final: at most N + (N - 1) + ... + 1
    assert (out.per_image["network_evaluations"] <= STEPS * (STEPS + 1) // 2).all()
    assert dict(out.model_steps) == {"model": int(iterations.max())}


def test_a_loose_tolerance_needs_fewer_iterations_and_stays_close(denoiser):
    exact = run("parataa", denoiser, {"steps": STEPS, "window": STEPS, "order": STEPS, "memory": 2, **EXACT})
    loose = run("parataa", denoiser, {"steps": STEPS, "window": STEPS, "order": STEPS, "memory": 2,
                                      "tolerance": 1e-2, "relative_tolerance": 0.0})
    assert loose.per_image["parallel_iterations"].sum() < exact.per_image["parallel_iterations"].sum()
    assert (loose.samples - exact.samples).abs().max() < 0.5


def test_the_exact_trajectory_as_warm_start_converges_in_one_iteration(denoiser):
    trajectory = Trajectory.from_sampler(DDIMSampler(STEPS))
    noise, y, _ = initial_noise_and_labels(0, range(2), (1, 8, 8), 10)
    zeros = torch.zeros(2, STEPS, 1, 8, 8, dtype=torch.float64)
    exact = sequential_trajectories(trajectory, denoiser, noise, y, zeros)
    solvers = [ParaTAASolver(trajectory, noise[k], zeros[k], window=STEPS, order=STEPS, memory=2,
                             tolerance=1e-6, relative_tolerance=0.0, max_iterations=STEPS,
                             initial=exact[k]) for k in range(2)]
    assert solve_in_lockstep(solvers, denoiser, y) == 1
    assert all(s.converged for s in solvers)


def test_stochastic_ddim_solves_the_same_equations_as_the_sequential_sampler(denoiser):
    sampler = DDIMSampler(STEPS, eta=0.7)
    out = run("parataa", denoiser, {"steps": STEPS, "window": STEPS, "order": 4, "memory": 2, **EXACT},
              sampler=DDIMSampler(STEPS, eta=0.7))
    # (the random tiny model drives these samples to |x| ~ 300: compare relatively too)
    torch.testing.assert_close(out.samples, sequential(denoiser, sampler=sampler), atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("method, values", [
    ("parataa", dict(steps=STEPS, window=6, order=3, memory=3)),
    ("picard", dict(steps=STEPS, window=6, tolerance=0.05)),
])
def test_deterministic_and_independent_of_the_batch(denoiser, method, values):
    together = run(method, denoiser, values, n=4)
    again = run(method, denoiser, values, n=4)
    assert torch.equal(together.samples, again.samples)
    for k in range(4):
        alone = run(method, denoiser, values, indices=[k])
        assert torch.equal(alone.samples[0], together.samples[k])
        assert alone.per_image["parallel_iterations"][0] == together.per_image["parallel_iterations"][k]


def test_parallel_methods_need_ddim_and_valid_settings(denoiser):
    with pytest.raises(ValueError, match="sampling.sampler: ddim"):
        run("parataa", denoiser, {"steps": STEPS, "window": 4}, sampler=DDPMSampler(STEPS))
    with pytest.raises(ValueError, match="order must be in 1..window"):
        get_method("parataa").make_setting({"steps": STEPS, "window": 4, "order": 5})
    with pytest.raises(ValueError, match="memory must be >= 1"):
        get_method("parataa").make_setting({"steps": STEPS, "window": 4, "memory": 0})
    assert get_method("parataa").samplers == ("ddim",)


def test_setting_ids_and_references_name_the_sequential_run():
    spec = get_method("parataa")
    setting = spec.make_setting({"steps": 25, "window": 25, "order": 25, "memory": 2})
    assert spec.setting_id(setting) == "n25-w25-k25-m2-tol0.001-rtol0.001-it25"
    assert setting.reference() == ("sequential", {"steps": 25})
    picard = get_method("picard").make_setting({"steps": 25, "window": 10})
    assert picard.reference() == ("sequential", {"steps": 25})
    assert get_method("sequential").setting_id(get_method("sequential").make_setting({"steps": 25})) == "n25"


def test_warm_start_reports_the_given_trajectory_time_so_timing_excludes_it(denoiser):
    base = {"steps": STEPS, "window": STEPS, "order": STEPS, "memory": 2}
    assert run("parataa", denoiser, base).given_s == 0.0
    assert run("parataa", denoiser, {**base, "warm_start": True}).given_s > 0.0


@pytest.mark.parametrize("method, values", [
    ("parataa", dict(steps=STEPS, window=5, order=3, memory=3, warm_start=True)),
    ("parataa", dict(steps=STEPS, window=5, order=3, memory=3, taa_history="release", window_init="release")),
    ("picard", dict(steps=STEPS, window=5, tolerance=0.05)),
])
def test_the_solvers_keep_their_state_on_the_inputs_device(denoiser, method, values):
    """Solved on a GPU when the model runs there (a solver on the CPU fed a CUDA model half
    tensors under the CPU's autocast). With the default device set to `meta`, any tensor a
    solver makes without naming the inputs' device lands on meta and cannot meet them."""
    spec = get_method(method)
    setting = spec.make_setting(values)
    sampler = DDIMSampler(STEPS, eta=1.0)  # stochastic: the per-step noise is drawn too

    class ModelOnItsDevice:  # the network itself may make tensors where it likes
        null_label = denoiser.null_label

        def __call__(self, *args):
            with torch.device("cpu"):
                return denoiser(*args)

    def solve(default_device):
        noise, y, generators = initial_noise_and_labels(0, range(3), (1, 8, 8), 10)
        with default_device:
            return spec.run({"model": ModelOnItsDevice()}, sampler, noise, y, generators, setting)

    plain = solve(contextlib.nullcontext())
    on_meta_default = solve(torch.device("meta"))
    assert on_meta_default.samples.device.type == "cpu"
    assert torch.equal(on_meta_default.samples, plain.samples)
