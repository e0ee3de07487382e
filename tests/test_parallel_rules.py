"""ParaTAA's options for the released code's rules (window entry, TAA history) and the
trajectory-initialised variation (parallel_sd_winit.py), on a toy problem and the tiny DiT."""

from pathlib import Path

import pytest
import torch
import yaml

from diffrepro.config import ConfigError
from diffrepro.diffusion import parallel
from diffrepro.diffusion.parallel import ParaTAASolver, Trajectory, sequential_trajectories
from diffrepro.diffusion.samplers import DDIMSampler
from diffrepro.diffusion.sampling import initial_noise_and_labels, sample_loop
from diffrepro.methods import get_method
from methods.parataa import TAA_HISTORY_RULES, WINDOW_INIT_RULES

STEPS = 16
SHAPE = (2, 3)  # a toy state: 6 numbers


# --------------------------------------------------------------------------------------
# A toy problem: eps(x, step) = tanh(x A + bias_step), DDIM coefficients of 16 steps
# --------------------------------------------------------------------------------------

class Toy:
    def __init__(self, steps=STEPS, seed=0, scale=1.5):
        g = torch.Generator().manual_seed(seed)
        self.traj = Trajectory.from_sampler(DDIMSampler(steps))
        self.A = torch.randn(6, 6, generator=g) * scale / 6 ** 0.5
        self.bias = torch.randn(steps, 6, generator=g)
        self.step_of = {int(t): i for i, t in enumerate(self.traj.timesteps)}
        self.x_T = torch.randn(SHAPE, generator=g)

    def eps(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """float32 in, float32 out, like the network."""
        steps = torch.tensor([self.step_of[int(t)] for t in timesteps])
        return torch.tanh(x.flatten(1) @ self.A + self.bias[steps]).view_as(x)

    def solver(self, **options) -> ParaTAASolver:
        values = dict(window=5, order=3, memory=3, tolerance=1e-4, relative_tolerance=0.0,
                      max_iterations=self.traj.steps) | options
        return ParaTAASolver(self.traj, self.x_T, torch.zeros(self.traj.steps, *SHAPE,
                                                              dtype=torch.float64), **values)

    def solve(self, solver: ParaTAASolver, trace: list | None = None) -> ParaTAASolver:
        while not solver.done:
            x, t = solver.window()
            solver.update(self.eps(x, t))
            if trace is not None:
                trace.append(solver.X.clone())
        return solver

    def sequential(self, x: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        """States start..N of the sequential recursion, from X[start] = x (x_T by default)."""
        X = [(self.x_T if x is None else x).double()]
        for i in range(start, self.traj.steps):
            e = self.eps(X[-1].float()[None], self.traj.timesteps[i:i + 1])[0].double()
            X.append(self.traj.a[i] * X[-1] + self.traj.b[i] * e)
        return torch.stack(X)


def released_solver(toy: Toy, *, window, order, memory, tolerance, ridge=1e-3,
                    keep_final=True) -> tuple[list[torch.Tensor], int]:
    """The released ParaTAA iteration (TZW1998/ParaTAA-Diffusion, parallel_sd.py,
    ParallelDDIM: initialize_samples, prepare_model_kwargs, step, compute_ho_residual,
    taa_step), re-written here as plain loops in ITS indexing: S[N] = x_T, S[0] = x_0, output
    S[j] computed from S[j + 1]. An independent statement of what the release does, to
    check the solver's "release" options against. `keep_final`: skip the release's overwrite
    of a finalised state (the solver's one documented departure). Returns the states after
    every iteration, in OUR order (X[i] = S[N - i]), and the iteration count."""
    traj, n = toy.traj, toy.traj.steps
    step = lambda j: n - 1 - j  # our step index of the output S[j]
    S = torch.zeros(n + 1, 6, dtype=torch.float64)
    S[n] = toy.x_T.double().flatten()
    finished, uninit = n, n - 1
    rows_x, rows_r, count = [], [], torch.zeros(n + 1, dtype=torch.long)
    history = []
    while finished > 0:
        # initialize_samples
        if uninit >= 0 and finished - uninit < window:
            end_index = max(-1, finished - window)
            source = min(uninit + 1, finished) if keep_final else uninit + 1
            for j in range(end_index + 1, source):
                S[j] = S[source]
            uninit = end_index
        # prepare_model_kwargs: inputs S[t_start..finished], outputs t = inputs - 1
        t_start = max(finished - window + 1, 1)
        t = list(range(t_start - 1, finished))
        x = S[[j + 1 for j in t]].float().view(len(t), *SHAPE)
        eps = toy.eps(x, traj.timesteps[[step(j) for j in t]]).double().flatten(1)
        # step: first-order residual, stopping, the k-th order residual by unrolling
        first = torch.stack([traj.a[step(j)] * S[j + 1] + traj.b[step(j)] * eps[q] - S[j]
                             for q, j in enumerate(t)])
        unfinished = [q for q in range(len(t)) if first[q].pow(2).mean().sqrt() > tolerance]
        finished = t[max(unfinished)] if unfinished else t[0]
        k = min(order, len(t))
        ho = torch.zeros(len(t), 6, dtype=torch.float64)
        for q, j in enumerate(t):
            top = min(j + k, t[-1] + 1)
            y = S[top].clone()
            for p in range(top - 1, j - 1, -1):  # unroll from S[top] down to S[j]
                y = traj.a[step(p)] * y + traj.b[step(p)] * eps[t.index(p)]
            ho[q] = y - S[j]
        # taa_step: a zero-padded buffer of the last m iterations, oldest row first
        row_x, row_r = torch.zeros(n + 1, 6, dtype=torch.float64), torch.zeros(n + 1, 6, dtype=torch.float64)
        row_x[t], row_r[t] = S[t], ho
        rows_x, rows_r = (rows_x + [row_x])[-memory:], (rows_r + [row_r])[-memory:]
        count[t] = torch.clamp(count[t] + 1, max=memory)
        G = torch.zeros_like(ho)
        limit = max(unfinished) if unfinished else 0
        for i in range(limit):  # outputs less noisy than the first unfinished one
            use = int(count[t[i]]) - 1
            if use < 1:
                continue
            dR = [rows_r[r + 1] - rows_r[r] for r in range(use)]
            dX = [rows_x[r + 1] - rows_x[r] for r in range(use)]
            B = torch.zeros(use, use, dtype=torch.float64)
            d = torch.zeros(use, dtype=torch.float64)
            for q in range(i, len(t)):  # this step and every noisier one in the window
                for r in range(use):
                    d[r] += dR[r][t[q]] @ ho[q]
                    for s in range(use):
                        B[r, s] += dR[r][t[q]] @ dR[s][t[q]]
            gamma = torch.linalg.solve(B + ridge * torch.eye(use, dtype=torch.float64), d)
            G[i] = sum(gamma[r] * (dX[r][t[i]] + dR[r][t[i]]) for r in range(use))
        S[t] = S[t] + ho - G
        uninit = min(uninit, t[0])
        history.append(S.flip(0).clone())
    return history, len(history)


RELEASE = dict(window_init="release", taa_history="release")


@pytest.mark.parametrize("window, order, memory", [(5, 3, 3), (4, 4, 4), (7, 2, 3), (1, 1, 3)])
def test_the_release_options_follow_the_released_iteration_step_by_step(window, order, memory):
    toy = Toy()
    expected, count = released_solver(toy, window=window, order=order, memory=memory, tolerance=1e-4)
    ours: list = []
    solver = toy.solve(toy.solver(window=window, order=order, memory=memory, **RELEASE), ours)
    assert solver.iterations == count and solver.converged
    for k, (a, b) in enumerate(zip(ours, expected)):
        torch.testing.assert_close(a.flatten(1), b, atol=1e-10, rtol=1e-9,
                                   msg=lambda m: f"iteration {k + 1}: {m}")


def test_our_default_rules_are_not_the_released_ones_when_the_window_slides():
    toy = Toy()
    expected, _ = released_solver(toy, window=5, order=3, memory=3, tolerance=1e-4)
    ours: list = []
    toy.solve(toy.solver(), ours)
    assert not torch.allclose(ours[1].flatten(1), expected[1], atol=1e-6)


def test_the_release_overwrites_a_finalised_state_and_we_do_not():
    """Window 1: every iteration finalises its one state, which the release's next
    initialize_samples overwrites with the state before it; its 'sequential' limit is wrong."""
    toy = Toy()
    exact = toy.sequential()
    raw, _ = released_solver(toy, window=1, order=1, memory=2, tolerance=1e-4, keep_final=False)
    assert (raw[-1][-1] - exact[-1].flatten()).abs().max() > 1e-2
    ours = toy.solve(toy.solver(window=1, order=1, memory=2, **RELEASE))
    torch.testing.assert_close(ours.X, exact, atol=1e-12, rtol=0)


def test_release_entry_rule_leaves_the_newest_output_and_recopies_it_on_a_slide():
    toy = Toy()
    ours, release = toy.solver(), toy.solver(window_init="release")
    for s in (ours, release):
        s.window()
    x_T = toy.x_T.double()
    assert all(torch.equal(ours.X[i], x_T) for i in range(1, 6))          # inputs and output
    assert all(torch.equal(release.X[i], x_T) for i in range(1, 5))       # inputs only
    assert torch.equal(release.X[5], torch.zeros(SHAPE, dtype=torch.float64))
    # after one update the window slides by one: the release recopies X[4] over the
    # computed X[5] and into the new input X[5]; ours copies the computed X[5] into X[6]
    for s in (ours, release):
        s.update(toy.eps(*s.window()))
    assert ours.final == release.final == 1
    computed_5, computed_4 = ours.X[5].clone(), release.X[4].clone()
    ours.window(), release.window()
    assert torch.equal(ours.X[6], computed_5)
    assert torch.equal(release.X[5], computed_4) and torch.equal(release.X[6], torch.zeros(SHAPE, dtype=torch.float64))


@pytest.mark.parametrize("window, memory, differs", [(5, 3, True), (STEPS, 3, False), (5, 2, False)])
def test_the_history_rule_matters_only_for_memory_3_and_a_sliding_window(window, memory, differs):
    toy = Toy()
    traces = {}
    for rule in ("newest", "release"):
        traces[rule] = []
        solver = toy.solve(toy.solver(window=window, order=3, memory=memory, taa_history=rule,
                                      tolerance=0.0), traces[rule])
        assert solver.converged
        torch.testing.assert_close(solver.X, toy.sequential(), atol=1e-10, rtol=0)
    # (the same rows in another order when every step has all of them: equal up to rounding)
    gap = max((a - b).abs().max().item() for a, b in zip(traces["newest"], traces["release"]))
    if differs:
        assert gap > 1e-6
    else:
        assert gap < 1e-12 and len(traces["newest"]) == len(traces["release"])


@pytest.mark.parametrize("options", [RELEASE, {"window_init": "release"}, {"taa_history": "release"}])
def test_release_rules_reach_the_sequential_sample_at_zero_tolerance(tiny_denoisers, options):
    from test_parallel import EXACT, run, sequential

    out = run("parataa", tiny_denoisers["large"], {"steps": 12, "window": 5, "order": 3, "memory": 3,
                                                    **EXACT, **options})
    assert out.per_image["converged"].all()
    torch.testing.assert_close(out.samples, sequential(tiny_denoisers["large"], steps=12), atol=2e-4, rtol=0)


# --------------------------------------------------------------------------------------
# Variation: start from another class's trajectory, solve the last k steps
# --------------------------------------------------------------------------------------

def test_variation_solves_only_the_last_steps_from_the_other_trajectory():
    toy = Toy()
    other = toy.sequential() + 0.3  # some other converged trajectory
    solver = toy.solve(ParaTAASolver(toy.traj, toy.x_T, torch.zeros(STEPS, *SHAPE, dtype=torch.float64),
                                     window=5, order=3, memory=2, tolerance=0.0, relative_tolerance=0.0,
                                     max_iterations=STEPS, initial=other, solve_from=STEPS - 6))
    assert torch.equal(solver.X[1:STEPS - 5], other[1:STEPS - 5])  # kept as given
    assert solver.iterations <= 6 and solver.evaluations <= 6 * 5
    torch.testing.assert_close(solver.X[STEPS - 6:], toy.sequential(other[STEPS - 6], STEPS - 6),
                               atol=1e-10, rtol=0)


def test_variation_equals_the_sequential_run_from_the_other_classes_state(tiny_denoisers):
    from test_parallel import EXACT, run

    denoiser, steps, k = tiny_denoisers["large"], 12, 4
    out = run("parataa", denoiser, {"steps": steps, "window": steps, "order": steps, "memory": 2,
                                    "variation_steps": k, **EXACT})
    assert out.per_image["converged"].all() and out.given_s > 0
    iterations, nfe = out.per_image["parallel_iterations"], out.per_image["network_evaluations"]
    assert (iterations <= k).all() and (nfe <= k * (k + 1) // 2).all()
    # the reference: class A's (label + 1) sequential trajectory to step n - k, then the
    # sequential sampler with the image's own label B for the last k steps
    noise, y, _ = initial_noise_and_labels(0, range(3), (1, 8, 8), 10)
    trajectory = Trajectory.from_sampler(DDIMSampler(steps))
    zeros = torch.zeros(3, steps, 1, 8, 8, dtype=torch.float64)
    x = sequential_trajectories(trajectory, denoiser, noise, (y + 1) % denoiser.null_label, zeros)[:, steps - k].float()
    sampler = DDIMSampler(steps)
    for i in range(steps - k, steps):
        x = sampler.step(i, denoiser(x, int(sampler.timesteps[i]), y), x)
    torch.testing.assert_close(out.samples, x, atol=2e-4, rtol=0)
    # a variation, not B's sequential sample
    noise, y, generators = initial_noise_and_labels(0, range(3), (1, 8, 8), 10)
    own, _ = sample_loop(DDIMSampler(steps), lambda i, t: ("m", denoiser), noise, y, generators)
    assert (out.samples - own).abs().max() > 1e-2


# --------------------------------------------------------------------------------------
# Settings: names, ids, errors
# --------------------------------------------------------------------------------------

def test_rule_names_agree_with_the_solver():
    assert WINDOW_INIT_RULES == parallel.ENTRY_RULES
    assert TAA_HISTORY_RULES == parallel.HISTORY_RULES
    assert WINDOW_INIT_RULES[0] == "paradigms" and TAA_HISTORY_RULES[0] == "newest"  # the defaults


def test_new_fields_at_their_defaults_keep_the_ids_and_otherwise_name_themselves():
    spec = get_method("parataa")
    base = {"steps": 100, "window": 25, "order": 25, "memory": 3}
    old = "n100-w25-k25-m3-tol0.001-rtol0.001-it100"
    assert spec.setting_id(spec.make_setting(base)) == old
    assert spec.setting_id(spec.make_setting({**base, "window_init": "paradigms",
                                              "taa_history": "newest", "variation_steps": 0})) == old
    assert spec.setting_id(spec.make_setting({**base, **RELEASE})) == old + "-initrelease-histrelease"
    assert spec.setting_id(spec.make_setting({**base, "variation_steps": 30})) == old + "-var30"


@pytest.mark.parametrize("values, message", [
    ({"variation_steps": 13}, r"variation_steps must be in 0..steps-1 = 0..11 .*got 13"),
    ({"variation_steps": 12}, r"variation_steps must be in .*which is warm_start: true\), got 12"),
    ({"variation_steps": -1}, r"variation_steps must be in 0..steps-1"),
    ({"variation_steps": 4, "warm_start": True}, r"warm_start and variation_steps .* set one"),
    ({"window_init": "zeros"}, r"window_init must be one of paradigms, release, got 'zeros'"),
    ({"taa_history": "oldest"}, r"taa_history must be one of newest, release, got 'oldest'"),
])
def test_bad_values_are_refused_with_the_reason(values, message):
    with pytest.raises(ValueError, match=message):
        get_method("parataa").make_setting({"steps": 12, "window": 4, **values})


def test_bad_values_in_the_config_name_the_key():
    from diffrepro.config import check_config
    from diffrepro.validation import apply_schema

    def full_check(config):
        apply_schema(config)
        check_config(config)

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/default.yaml").read_text())
    config["methods"]["parataa"]["grid"] = [{"steps": [25], "window": [25], "variation_steps": [30]}]
    with pytest.raises(ConfigError, match=r"methods.parataa.*variation_steps must be in 0..steps-1 = 0..24"):
        full_check(config)
    config["methods"]["parataa"]["grid"] = [{"steps": [25], "window": [5], "window_init": ["release2"]}]
    with pytest.raises(ConfigError, match=r"methods.parataa.*window_init must be one of"):
        full_check(config)


def test_the_solver_refuses_unknown_rules_and_a_variation_without_a_trajectory():
    toy = Toy()
    with pytest.raises(ValueError, match="window_init must be one of"):
        toy.solver(window_init="zeros")
    with pytest.raises(ValueError, match="taa_history must be one of"):
        toy.solver(taa_history="oldest")
    with pytest.raises(ValueError, match="needs an initial trajectory"):
        toy.solver(solve_from=4)
