"""Respacing, switch counts, and the samplers against an independent ADM-style reference."""

import numpy as np
import pytest
import torch

from diffrepro.diffusion.guidance import GuidedDenoiser
from diffrepro.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverPPSampler
from diffrepro.diffusion.sampling import initial_noise_and_labels, sample_loop
from diffrepro.diffusion.schedule import linear_betas, sampling_timesteps, space_timesteps
from methods.tstitch import uses_small_model

RATIOS = [i / 10 for i in range(11)]
# N = 25, 100, 250: PAPER_NUMBERS.md (T-Stitch algorithm facts). N = 10, 20, 50: derived by
# hand from round(i * 999 / (N - 1)) and t / 1000 >= 1 - r.
SMALL_STEPS = {
    10: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    20: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20],
    25: [0, 3, 5, 8, 10, 13, 15, 17, 20, 22, 25],
    50: [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50],
    100: [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
    250: [0, 25, 50, 75, 100, 125, 150, 175, 200, 225, 250],
}


@pytest.mark.parametrize("steps", sorted(SMALL_STEPS))
def test_small_model_step_counts_match_paper(steps):
    timesteps = sampling_timesteps(steps)
    counts = [sum(uses_small_model(t, r) for t in timesteps) for r in RATIOS]
    assert counts == SMALL_STEPS[steps]


def test_respacing_is_dits_grid():
    assert space_timesteps(1000, 25)[:4] == [0, 42, 83, 125]
    for steps in (10, 20, 25, 50, 100, 250):
        kept = space_timesteps(1000, steps)
        assert kept[0] == 0 and kept[-1] == 999 and len(set(kept)) == steps
        # diffusers' timestep_spacing="linspace" gives the same grid for the paper's N ...
        assert kept == [int(v) for v in np.linspace(0, 999, steps).round()]
    # ... but not for every N: ADM accumulates a float stride, linspace multiplies.
    assert space_timesteps(1000, 21) != [int(v) for v in np.linspace(0, 999, 21).round()]


def test_diffusers_ddim_stride_does_not_walk_the_linspace_grid():
    """Why DDIM is ours: diffusers' DDIMScheduler steps t -> t - 1000 // N."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(timestep_spacing="linspace")
    scheduler.set_timesteps(25)
    first, second = (int(t) for t in scheduler.timesteps[:2])
    assert (first, second) == (999, 957)
    assert first - 1000 // 25 != second  # the stride it uses for the previous timestep


def _respaced_schedule(steps):
    """ADM's SpacedDiffusion, independently: betas recomputed on the kept timesteps."""
    abar_full = np.cumprod(1.0 - linear_betas(1000))
    kept = set(space_timesteps(1000, steps))
    betas, last = [], 1.0
    for t, a in enumerate(abar_full):
        if t in kept:
            betas.append(1 - a / last)
            last = a
    betas = np.array(betas)
    abar = np.cumprod(1.0 - betas)
    return betas, abar, np.append(1.0, abar[:-1])


@torch.no_grad()
def _model_output(denoiser, x, t, y):
    return denoiser(torch.from_numpy(x).float(), t, y).double().numpy()


def test_ddim_matches_independent_reference(tiny_models):
    steps, seed = 12, 3
    denoiser = GuidedDenoiser(tiny_models["large"], cfg_scale=1.5)
    noise, y, _ = initial_noise_and_labels(seed, range(4), (1, 8, 8), 10)
    ours, _ = sample_loop(DDIMSampler(steps), lambda i, t: ("m", denoiser), noise, y)

    _, abar, abar_prev = _respaced_schedule(steps)
    timesteps = sorted(space_timesteps(1000, steps))
    x = noise.double().numpy()
    for i in reversed(range(steps)):  # ADM's ddim_sample, eta = 0
        eps = _model_output(denoiser, x, timesteps[i], y)[:, :1]
        x0 = np.sqrt(1 / abar[i]) * x - np.sqrt(1 / abar[i] - 1) * eps
        eps = (np.sqrt(1 / abar[i]) * x - x0) / np.sqrt(1 / abar[i] - 1)
        x = x0 * np.sqrt(abar_prev[i]) + np.sqrt(1 - abar_prev[i]) * eps
    np.testing.assert_allclose(ours.double().numpy(), x, rtol=0, atol=2e-4)


def test_ddpm_learned_variance_matches_independent_reference(tiny_models):
    """diffusers' DDPMScheduler with DiT's respacing equals ADM's p_sample with learned range."""
    steps, seed = 10, 5
    denoiser = GuidedDenoiser(tiny_models["large"], cfg_scale=1.5)
    noise, y, generators = initial_noise_and_labels(seed, range(3), (1, 8, 8), 10)
    ours, _ = sample_loop(DDPMSampler(steps), lambda i, t: ("m", denoiser), noise, y, generators)

    betas, abar, abar_prev = _respaced_schedule(steps)
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    coef_x0 = betas * np.sqrt(abar_prev) / (1 - abar)
    coef_xt = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    timesteps = sorted(space_timesteps(1000, steps))
    _, _, ref_generators = initial_noise_and_labels(seed, range(3), (1, 8, 8), 10)
    x = noise.double().numpy()
    for i in reversed(range(steps)):
        out = _model_output(denoiser, x, timesteps[i], y)
        eps, v = out[:, :1], out[:, 1:]
        frac = (v + 1) / 2
        log_var = frac * np.log(betas[i]) + (1 - frac) * post_log_var[i]
        x0 = np.sqrt(1 / abar[i]) * x - np.sqrt(1 / abar[i] - 1) * eps
        mean = coef_x0[i] * x0 + coef_xt[i] * x
        if i > 0:
            z = torch.cat([torch.randn((1, 1, 8, 8), generator=g) for g in ref_generators])
            x = mean + np.exp(0.5 * log_var) * z.double().numpy()
        else:
            x = mean
    np.testing.assert_allclose(ours.double().numpy(), x, rtol=0, atol=2e-4)


def test_guidance_only_on_first_channels(tiny_models):
    model = tiny_models["large"]
    x = torch.randn(2, 1, 8, 8)
    y = torch.tensor([3, 4])
    out = GuidedDenoiser(model, cfg_scale=4.0)(x, 500, y)
    cond = model(x, torch.full((2,), 500), y)
    uncond = model(x, torch.full((2,), 500), torch.full((2,), 10))
    torch.testing.assert_close(out[:, :1], uncond[:, :1] + 4.0 * (cond[:, :1] - uncond[:, :1]))
    torch.testing.assert_close(out[:, 1:], cond[:, 1:])  # variance from the conditional half


def test_dpm_solver_pp_2m_matches_independent_reference(tiny_models):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, data prediction) on diffusers' linspace
    timesteps, first order at the first and the last step (the last goes to sigma = 0)."""
    steps, seed = 8, 2
    denoiser = GuidedDenoiser(tiny_models["large"], cfg_scale=1.5)
    noise, y, _ = initial_noise_and_labels(seed, range(3), (1, 8, 8), 10)
    sampler = DPMSolverPPSampler(steps)
    timesteps = [int(t) for t in np.linspace(0, 999, steps + 1).round()[::-1][:-1]]
    assert sampler.timesteps == timesteps
    ours, _ = sample_loop(sampler, lambda i, t: ("m", denoiser), noise, y)

    abar = np.cumprod(1.0 - linear_betas(1000))
    alpha = lambda t: np.sqrt(abar[t])  # noqa: E731
    sigma = lambda t: np.sqrt(1 - abar[t])  # noqa: E731
    lam = lambda t: np.log(alpha(t) / sigma(t))  # noqa: E731
    x = noise.double().numpy()
    previous_x0, previous_h = None, None
    for i, t in enumerate(timesteps):
        eps = _model_output(denoiser, x, t, y)[:, :1]
        x0 = (x - sigma(t) * eps) / alpha(t)
        if i == steps - 1:  # to sigma = 0: the solution is the data prediction itself
            x = x0
            break
        s = timesteps[i + 1]
        h = lam(s) - lam(t)
        if previous_x0 is None:
            d = x0
        else:
            r = previous_h / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous_x0
        x = sigma(s) / sigma(t) * x - alpha(s) * np.expm1(-h) * d
        previous_x0, previous_h = x0, h
    np.testing.assert_allclose(ours.double().numpy(), x, rtol=0, atol=2e-4)


def test_unguided_is_the_conditional_model_alone(tiny_models):
    import torch

    from diffrepro.diffusion.guidance import GuidedDenoiser

    guided = GuidedDenoiser(tiny_models["large"], cfg_scale=1.5)
    x, y = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3])
    plain = guided.unguided()
    assert plain.batch_multiplier == 1 and guided.batch_multiplier == 2
    assert torch.equal(plain(x, 500, y), GuidedDenoiser(tiny_models["large"], cfg_scale=1.0)(x, 500, y))
    assert not torch.equal(plain(x, 500, y), guided(x, 500, y))
