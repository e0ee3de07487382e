"""Training methods: exact values of SpeeD v1/v3, P2, Min-SNR and logit-normal against numbers
computed from the original code's formulas; Immiscible's assignment and KNN; combination;
every configured method trains a tiny model, and a killed run resumes exactly."""

import itertools

import numpy as np
import pytest
import torch
import yaml

from baselines.logit_normal import logit_normal_probabilities
from baselines.min_snr import min_snr_weights
from baselines.p2_weighting import p2_weights
from diffrepro.checkpoints import load_checkpoint
from diffrepro.diffusion.losses import HybridLoss
from diffrepro.diffusion.schedule import alphas_cumprod
from diffrepro.training import resume_path
from diffrepro.training_methods import build_training_method, check_components
from diffrepro.training_study import snapshot_path, train_run
from methods.immiscible import assign_noise, nearest_of_k
from methods.speed import meaningful_steps, reflection, v1_probabilities, v3_probabilities, v3_weights
from workflow_run import ROOT

ABAR = alphas_cumprod()


# --------------------------------------------------------------------------------------
# SpeeD
# --------------------------------------------------------------------------------------

def test_meaningful_steps_is_642_for_the_linear_schedule():
    assert meaningful_steps(ABAR) == 642


def test_speed_v1_probabilities_match_the_speedit_formula():
    p = v1_probabilities(ABAR)
    # np.gradient(sqrt(1 - abar)), tanh(1e6 (g - 1e-4)) + 1.5, L1-normalised (SpeeDiT speed.py)
    expected = {0: 1.4023644e-3, 640: 1.2641771e-3, 641: 7.454379e-4, 642: 3.557755e-4,
                643: 2.887988e-4, 999: 2.8047287e-4}
    for t, value in expected.items():
        assert p[t] == pytest.approx(value, rel=1e-6), t
    assert p.sum() == pytest.approx(1.0)
    assert p[:642].sum() == pytest.approx(0.89951, abs=1e-5)


def test_reflection_about_meaningful_steps():
    reflect = reflection(642)
    assert reflect(np.array([0, 1, 641, 642, 643, 999])).tolist() == [642, 641, 1, 0, 1, 357]


@pytest.mark.parametrize("n, primaries", [(8, 5), (7, 4), (1, 1)])
def test_dual_sampling_draws_half_and_reflects_the_rest(n, primaries):
    """n // 2 + 1 draws, then their reflections, cut to n (the SpeeDiT code)."""
    sampler = build_training_method(["speed_v1"], ABAR).timesteps
    t = sampler.sample(n, torch.Generator().manual_seed(0)).numpy()
    assert len(t) == n
    drawn, dual = t[:primaries], t[primaries:]
    assert dual.tolist() == reflection(642)(drawn)[:n - primaries].tolist()


def test_speed_v3_probabilities_and_weights():
    p5, p2 = v3_probabilities(1000, 5, 700), v3_probabilities(1000, 2, 700)
    assert p5[0] == pytest.approx(1 / 760) and p5[699] == pytest.approx(1 / 760)
    assert p5[700] == pytest.approx(1 / 3800) and p5[999] == pytest.approx(1 / 3800)
    assert p2[0] == pytest.approx(1 / 850) and p2[700] == pytest.approx(1 / 1700)
    w = v3_weights(ABAR, lam=0.6, tau=700)
    expected = {0: 0.408786, 1: 0.409520, 219: 0.6, 350: 0.548428, 641: 0.414557, 699: 0.407203,
                700: 1.0, 999: 1.0}
    for t, value in expected.items():
        assert w[t] == pytest.approx(value, abs=2e-6), t
    assert w[:700].min() >= 0.4 - 1e-12 and w[:700].max() == pytest.approx(0.6)


def test_speed_v3_reflects_about_642_not_tau():
    sampler = build_training_method([{"speed_v3": {"k": 5, "tau": 700}}], ABAR).timesteps
    assert sampler.reflect(np.array([700])).tolist() == [58]


def test_marginal_matches_the_sampled_frequencies():
    sampler = build_training_method(["speed_v1"], ABAR).timesteps
    t = sampler.sample(400_000, torch.Generator().manual_seed(1)).numpy()
    bins = np.arange(0, 1001, 100)
    observed = np.histogram(t, bins)[0] / len(t)
    expected = np.add.reduceat(sampler.marginal(), bins[:-1])
    assert np.abs(observed - expected).max() < 0.004
    assert sampler.marginal().sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------

def test_p2_weights():
    w = p2_weights(ABAR, k=1, gamma=1)
    assert w[0] == pytest.approx(1.0e-4, rel=1e-6)
    assert w[999] == pytest.approx(0.99995964, rel=1e-7)
    np.testing.assert_allclose(w, 1 - ABAR, rtol=1e-10)  # k = gamma = 1: 1 / (1 + SNR) = 1 - abar
    assert np.all(p2_weights(ABAR, k=1, gamma=0) == 1)  # gamma = 0 is plain DDPM


def test_min_snr_weights():
    w = min_snr_weights(ABAR, gamma=5)
    assert w[0] == pytest.approx(5.0005e-4, rel=1e-4)
    assert w[100] == pytest.approx(0.585709, abs=1e-6)
    snr = ABAR / (1 - ABAR)
    first_clipped = int(np.argmax(snr < 5))
    assert first_clipped == 130 and w[129] < 1 and np.all(w[130:] == 1)


def test_logit_normal_probabilities_and_sampler():
    p = logit_normal_probabilities(1000)
    assert p.sum() == pytest.approx(1.0)
    assert p[499] == pytest.approx(1.5957670e-3, rel=1e-6) and p[500] == pytest.approx(p[499])
    assert p[0] == pytest.approx(2.4793e-12, rel=1e-3)
    sampler = build_training_method(["logit_normal"], ABAR).timesteps
    t = sampler.sample(200_000, torch.Generator().manual_seed(2)).numpy()
    bins = np.arange(0, 1001, 100)
    observed = np.histogram(t, bins)[0] / len(t)
    assert np.abs(observed - np.add.reduceat(p, bins[:-1])).max() < 0.004


def test_uniform_is_plain_ddpm_draw_for_draw():
    """The plain-DDPM default keeps the pre-existing random stream: torch.randint then randn."""
    method = build_training_method([], ABAR)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x0 = torch.zeros(4, 1, 8, 8)
    t, noise = method.timesteps.sample(4, g1), method.pairing.pair(x0, g1)
    assert torch.equal(t, torch.randint(1000, (4,), generator=g2))
    assert torch.equal(noise, torch.randn(4, 1, 8, 8, generator=g2))
    assert np.all(method.weighting.weights == 1)


# --------------------------------------------------------------------------------------
# Immiscible Diffusion
# --------------------------------------------------------------------------------------

def test_assignment_is_an_optimal_permutation():
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    paired = assign_noise(x0, noise)
    rows = [int(torch.nonzero((noise == r).all(dim=(1, 2, 3)))[0]) for r in paired]
    assert sorted(rows) == list(range(6))  # a permutation of the same noise

    def total(order):
        return sum(torch.dist(x0[i], noise[j]).item() for i, j in enumerate(order))
    best = min(total(perm) for perm in itertools.permutations(range(6)))
    assert total(rows) == pytest.approx(best)
    assert total(rows) <= total(range(6))


def test_knn_keeps_the_nearest_candidate():
    x0 = torch.zeros(2, 1, 2, 2)
    candidates = torch.stack([torch.full((2, 1, 2, 2), v) for v in (3.0, -0.5, 2.0)], dim=1)
    candidates[1, 2] = 0.1  # image 1's nearest is its third candidate
    chosen = nearest_of_k(x0, candidates)
    assert torch.equal(chosen[0], candidates[0, 1]) and torch.equal(chosen[1], candidates[1, 2])


# --------------------------------------------------------------------------------------
# Combination and loss weighting
# --------------------------------------------------------------------------------------

def test_components_combine_part_by_part():
    method = build_training_method(["speed_v3", "immiscible"], ABAR)
    assert method.describe()["parts"] == {"timesteps": "speed_v3", "pairing": "immiscible",
                                          "weighting": "speed_v3"}


@pytest.mark.parametrize("entries, message", [
    (["speed_v1", "p2"], "'speed_v1' and 'p2' both define the weighting part"),
    (["immiscible", "immiscible_knn"], "both define the pairing part"),
    (["nope"], "unknown training component 'nope'; available: .*uniform"),
    ([{"p2": {"kk": 1}}], "has no parameter \\['kk'\\]"),
    ([{"speed_v3": {"lam": 0.3}}], "0.5 <= lam <= 1"),
])
def test_bad_combinations_are_refused(entries, message):
    with pytest.raises(ValueError, match=message):
        check_components(entries)


def test_weights_apply_to_the_mse_term_only():
    loss_fn = HybridLoss()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([5, 400, 900])
    x_t = loss_fn.q_sample(x0, t, noise)
    out = torch.randn(3, 2, 8, 8, generator=g)
    plain, parts = loss_fn(out, x0, x_t, t, noise)
    w = torch.tensor([0.0, 2.0, 0.5])
    weighted, _ = loss_fn(out, x0, x_t, t, noise, w)
    mse = ((out[:, :1] - noise) ** 2).mean(dim=(1, 2, 3))
    assert weighted.item() == pytest.approx(plain.item() + ((w - 1) * mse).mean().item(), rel=1e-5)


# --------------------------------------------------------------------------------------
# Every configured method trains; a killed run resumes to the same weights
# --------------------------------------------------------------------------------------

MODEL = {"input_size": 8, "patch_size": 2, "in_channels": 1, "hidden_size": 16, "depth": 1,
         "num_heads": 2, "mlp_ratio": 2.0, "class_dropout_prob": 0.1, "num_classes": 10,
         "learn_sigma": True}
TRAIN = {"iterations": 4, "batch_size": 16, "lr": 1e-3, "warmup": 1, "ema_decay": 0.9,
         "checkpoint_every": 1, "log_every": 2}
VALIDATION = {"fraction": 0.2, "split_seed": 0, "bins": 4, "noise_seed": 0}
DEFAULT_METHODS = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())["training"]["methods"]


@pytest.mark.parametrize("name", sorted(DEFAULT_METHODS))
def test_each_configured_method_trains_a_tiny_model(tmp_path, name):
    summary = train_run(components=DEFAULT_METHODS[name], model_config=MODEL, train=TRAIN, seed=0,
                        snapshots=[2, 4], validation=VALIDATION, directory=str(tmp_path),
                        log=lambda m: None)
    assert np.isfinite(summary["final_loss"])
    first, last = load_checkpoint(snapshot_path(tmp_path, 2)), load_checkpoint(snapshot_path(tmp_path, 4))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # it learned between snapshots


def test_killed_run_resumes_to_identical_snapshots(tmp_path):
    """SpeeD v3 + Immiscible: the generator state covers the reflection and the assignment."""
    components = ["speed_v3", "immiscible"]
    kwargs = dict(components=components, model_config=MODEL, train=TRAIN, seed=1, snapshots=[2, 4],
                  validation=VALIDATION, log=lambda m: None)
    train_run(**kwargs, directory=str(tmp_path / "straight"))
    resumed = tmp_path / "resumed"
    train_run(**kwargs, directory=str(resumed), stop_after=3)
    assert resume_path(snapshot_path(resumed, 4)).exists() and not snapshot_path(resumed, 4).exists()
    train_run(**kwargs, directory=str(resumed))
    for it in (2, 4):
        a = load_checkpoint(snapshot_path(tmp_path / "straight", it))
        b = load_checkpoint(snapshot_path(resumed, it))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_marginal_of_small_batches_counts_the_uneven_split():
    """A batch of 8 holds 5 drawn and 3 reflected timesteps: the marginal says so."""
    sampler = build_training_method(["speed_v1"], ABAR).timesteps
    g = torch.Generator().manual_seed(4)
    t = torch.cat([sampler.sample(8, g) for _ in range(30_000)]).numpy()
    late = np.mean(t >= 643)  # only drawn timesteps land here: reflections stay <= 642
    assert late == pytest.approx(sampler.marginal(8)[643:].sum(), abs=0.002)
    assert abs(late - sampler.marginal()[643:].sum()) > 0.01  # a 50/50 mix would be visibly off
