"""Immiscible Diffusion as the Stable Diffusion code does it: float16 distances on 0.1-scaled
latents and noise, linear_sum_assignment over the batch, the noise permuted; the KNN variant;
the exact (float64) optimum against brute force; the agreement between the two."""

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from diffrepro.training_methods import build_training_method, plain_ddpm_part
from diffrepro.diffusion.schedule import alphas_cumprod
from methods.immiscible import assignment, assignment_agreement, assign_noise, nearest_of_k, pairwise_l2

ABAR = alphas_cumprod()


def _batch(seed, n=6, shape=(4, 2, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g) * 2.0, torch.randn(n, *shape, generator=g)


@pytest.mark.parametrize("seed", range(4))
def test_exact_assignment_is_the_brute_force_optimum(seed):
    x0, noise = _batch(seed)
    columns = assignment(x0, noise, distance_dtype="float64").tolist()
    d = x0.double().flatten(1)[:, None].sub(noise.double().flatten(1)[None]).norm(dim=2)  # L2, not squared

    def total(order):
        return sum(d[i, j].item() for i, j in enumerate(order))
    best = min(itertools.permutations(range(len(x0))), key=total)
    assert total(columns) == pytest.approx(total(best), rel=1e-12)
    assert list(columns) == list(best)  # continuous random data: the optimum is unique


def test_float16_distances_follow_the_seed_recipe():
    """0.1 * x.half() - 0.1 * noise.half(), vector norm in float16 (the SD training script)."""
    x0, noise = _batch(7, n=5, shape=(4, 8, 8))
    ours = pairwise_l2(x0, noise, distance_dtype="float16", scale=0.1)
    seed_recipe = torch.linalg.vector_norm(0.10 * x0.to(torch.float16).flatten(1).unsqueeze(1)
                                           - 0.10 * noise.to(torch.float16).flatten(1).unsqueeze(0), dim=2)
    assert ours.dtype == torch.float16 and torch.equal(ours, seed_recipe)
    _, expected = linear_sum_assignment(seed_recipe.float().numpy())
    assert assignment(x0, noise, distance_dtype="float16", scale=0.1).tolist() == expected.tolist()
    # float16 rounds: its distances differ from the exact ones
    assert not torch.equal(ours.double(), pairwise_l2(x0, noise, distance_dtype="float64", scale=0.1))


def test_float16_chunks_give_the_unchunked_distances():
    x0, noise = _batch(8, n=130, shape=(3,))
    whole = torch.linalg.vector_norm(x0.half()[:, None] - noise.half()[None], dim=2)
    assert torch.equal(pairwise_l2(x0, noise, distance_dtype="float16"), whole)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_the_noise_is_only_reordered(dtype):
    x0, noise = _batch(11, n=16, shape=(1, 4, 4))
    paired = assign_noise(x0, noise, distance_dtype=dtype, scale=0.1)
    assert paired.dtype == noise.dtype
    idx = [int(torch.nonzero((noise == r).all(dim=(1, 2, 3)))[0]) for r in paired]
    assert sorted(idx) == list(range(16))  # the same multiset of noise rows, permuted
    assert torch.equal(paired, noise[idx])


def test_component_permutes_its_own_draw_and_leaves_timesteps_alone():
    method = build_training_method([{"immiscible": {"distance_dtype": "float16", "scale": 0.1}}], ABAR)
    x0 = _batch(2, n=8, shape=(1, 4, 4))[0]
    paired = method.pairing.pair(x0, torch.Generator().manual_seed(5))
    drawn = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(paired, assign_noise(x0, drawn, distance_dtype="float16", scale=0.1))
    plain = plain_ddpm_part("timesteps", len(ABAR))
    t = method.timesteps.sample(8, torch.Generator().manual_seed(1))
    assert torch.equal(t, plain.sample(8, torch.Generator().manual_seed(1)))
    assert method.describe()["parts"]["timesteps"] == "plain DDPM"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_knn_keeps_the_nearest_of_k_draws(dtype):
    k = 64
    method = build_training_method([{"immiscible_knn": {"k": k, "distance_dtype": dtype}}], ABAR)
    x0 = _batch(4, n=5, shape=(1, 4, 4))[0]
    chosen = method.pairing.pair(x0, torch.Generator().manual_seed(9))
    candidates = torch.randn((5, k, 1, 4, 4), generator=torch.Generator().manual_seed(9))
    d = (candidates.flatten(2).double() - x0.flatten(1).double()[:, None]).norm(dim=2)
    for i in range(5):
        j = next(j for j in range(k) if torch.equal(chosen[i], candidates[i, j]))  # one of its draws
        assert d[i, j] <= d[i].min() * (1 + 2e-3)  # the nearest, up to float16's rounding


def test_knn_float16_uses_half_distances():
    x0 = torch.zeros(1, 1)
    candidates = torch.tensor([[[1.0], [1.0 + 2 ** -12]]])  # distinct in float32, equal in float16
    assert nearest_of_k(x0, candidates, distance_dtype="float16")[0].item() == 1.0
    assert nearest_of_k(-x0 + 2.0, candidates, distance_dtype="float32")[0].item() == 1.0 + 2 ** -12


def test_agreement_is_one_for_the_exact_dtype_and_measured_for_float16():
    pairs = [_batch(s, n=32, shape=(1, 8, 8)) for s in range(5)]
    batches, noises = [p[0] for p in pairs], [p[1] for p in pairs]
    exact = assignment_agreement(batches, noises, distance_dtype="float64")
    assert exact["same_permutation"] == 1.0 and exact["optimal"] == 1.0 and exact["excess_total_distance"] == 0.0
    half = assignment_agreement(batches, noises, distance_dtype="float16", scale=0.1)
    assert 0.0 <= half["same_permutation"] <= half["optimal"] + 1e-12 <= 1.0 + 1e-12 and half["batches"] == 5
    assert half["excess_total_distance"] >= -1e-12  # never better than the optimum


def test_bad_distance_dtype_is_refused():
    with pytest.raises(ValueError, match="distance_dtype"):
        build_training_method([{"immiscible": {"distance_dtype": "bfloat16"}}], ABAR)
