"""Tests for the digits-CNN feature network and the metrics built on it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from diffrepro import metrics
from diffrepro.checkpoints import ChecksumMismatch
from diffrepro.data import real_digits_uint8
from diffrepro.models.classifier import (
    FEATURE_DIM, load_classifier, read_classifier_info, save_classifier, train_digits_classifier)

torch.set_num_threads(1)  # shared 2-core machine; also keeps training bitwise reproducible
# Multi-threaded OpenBLAS next to torch's OpenMP pool slowed 64x64 eigh ~50x here; the
# metric linear algebra is tiny, so one BLAS thread is also the fastest.
threadpool_limits(1, user_api="blas")


# ---------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------

def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A well-conditioned random symmetric positive-definite matrix."""
    a = rng.normal(size=(dim, 2 * dim))
    return a @ a.T / (2 * dim) + 0.1 * np.eye(dim)


def reference_fid(mu1, sigma1, mu2, sigma2) -> float:
    """Independent textbook FID via scipy's general matrix square root (test-only)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@pytest.fixture(scope="module")
def digits():
    return real_digits_uint8()


@pytest.fixture(scope="module")
def trained(digits):
    """Train the classifier once with the production defaults (about 10 s on one thread)."""
    images, labels = digits
    return train_digits_classifier(images, labels, seed=0)


# ---------------------------------------------------------------------------------------
# frechet_distance
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [5, 64])
def test_frechet_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = random_spd(rng, dim), random_spd(rng, dim)
    ours = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(reference_fid(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, size=7), rng.uniform(0.1, 3.0, size=7)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(2)
    mu, s = rng.normal(size=64), random_spd(rng, 64)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    mu2, s2 = rng.normal(size=64), random_spd(rng, 64)
    forward = metrics.frechet_distance(mu, s, mu2, s2)
    assert forward > 1.0
    assert metrics.frechet_distance(mu2, s2, mu, s) == pytest.approx(forward, rel=1e-10)


def test_frechet_rank_deficient_covariances():
    rng = np.random.default_rng(3)
    # 10 samples in 64 dimensions: covariances of rank 9
    f1, f2 = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 0.5
    mu1, s1 = metrics.feature_statistics(f1)
    mu2, s2 = metrics.feature_statistics(f2)
    assert np.linalg.matrix_rank(s1) < 64
    d = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(d) and d > 0.0
    same = metrics.frechet_distance(mu1, s1, mu1, s1)
    assert np.isfinite(same) and 0.0 <= same < 1e-6 * np.trace(s1)


def test_frechet_rejects_mismatched_shapes():
    mu, s = np.zeros(5), np.eye(5)
    with pytest.raises(ValueError, match="different dimensions"):
        metrics.frechet_distance(mu, s, np.zeros(6), np.eye(6))
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        metrics.frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(ValueError, match="mu1 must be a 1-D"):
        metrics.frechet_distance(np.zeros((5, 1)), s, mu, s)


def test_feature_statistics_uses_unbiased_covariance():
    f = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = metrics.feature_statistics(f)
    np.testing.assert_allclose(mu, [2.0, 4.0])
    assert sigma[0, 0] == pytest.approx(4.0)  # ddof=1: (4 + 0 + 4) / 2


def test_bootstrap_se_is_seeded_and_positive():
    rng = np.random.default_rng(4)
    ref_mu, ref_sigma = metrics.feature_statistics(rng.normal(size=(500, 8)))
    feats = rng.normal(size=(200, 8)) + 0.3
    se = metrics.fid_bootstrap_se(feats, ref_mu, ref_sigma, reps=20, seed=7)
    assert se > 0.0
    assert se == metrics.fid_bootstrap_se(feats, ref_mu, ref_sigma, reps=20, seed=7)


# ---------------------------------------------------------------------------------------
# inception_score and class_accuracy
# ---------------------------------------------------------------------------------------

def test_inception_score_uniform_one_hot_is_ten():
    probs = np.eye(10)[np.arange(1000) % 10]  # every contiguous split covers all classes
    mean, std = metrics.inception_score(probs, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_single_class_is_one():
    probs = np.tile(np.eye(10)[3], (500, 1))
    mean, _ = metrics.inception_score(probs, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-6)


def test_inception_score_rejects_logits():
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.inception_score(np.full((20, 10), 3.0), splits=2)


def test_class_accuracy_hand_example():
    probs = np.array([[0.9, 0.1, 0.0],
                      [0.2, 0.7, 0.1],
                      [0.1, 0.1, 0.8],
                      [0.6, 0.3, 0.1]])
    assert metrics.class_accuracy(probs, np.array([0, 1, 2, 1])) == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------
# classifier
# ---------------------------------------------------------------------------------------

def test_classifier_training_is_deterministic(digits):
    images, labels = digits
    subset = slice(0, 600)  # a short run is enough to expose nondeterminism
    a, _ = train_digits_classifier(images[subset], labels[subset], seed=5, epochs=2)
    b, _ = train_digits_classifier(images[subset], labels[subset], seed=5, epochs=2)
    c, _ = train_digits_classifier(images[subset], labels[subset], seed=6, epochs=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_classifier_accuracy_and_feature_shape(trained, digits):
    model, info = trained
    print(f"classifier: {info}")
    assert info["heldout_accuracy"] >= 0.95
    assert info["num_train"] + info["num_heldout"] == len(digits[0])
    assert info["epochs"] == 30 and info["seed"] == 0
    feats, probs = metrics.classifier_outputs(model, digits[0][:100])
    assert feats.shape == (100, FEATURE_DIM) and feats.dtype == np.float64
    assert probs.shape == (100, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_classifier_save_load_round_trip_and_corruption(trained, digits, tmp_path):
    model, info = trained
    path = tmp_path / "classifier.safetensors"
    save_classifier(model, path, info)
    loaded = load_classifier(path)
    x = digits[0][:64]
    assert all(np.array_equal(u, v) for u, v in zip(metrics.classifier_outputs(model, x),
                                                     metrics.classifier_outputs(loaded, x)))
    assert read_classifier_info(path)["heldout_accuracy"] == str(info["heldout_accuracy"])

    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatch):
        load_classifier(path)


# ---------------------------------------------------------------------------------------
# real-data sanity and the end-to-end scorer
# ---------------------------------------------------------------------------------------

def test_real_halves_much_closer_than_noise(trained, digits, tmp_path):
    model, _ = trained
    images, labels = digits
    order = np.random.default_rng(0).permutation(len(images))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]

    ref = metrics.reference_statistics(model, images[half_a])
    path = tmp_path / "ref.npz"
    metrics.save_reference_statistics(path, ref)
    ref = metrics.load_reference_statistics(path)
    assert ref["num_images"] == len(half_a)

    real = metrics.score_samples(model, images[half_b], labels[half_b], ref, bootstrap_reps=10)
    noise_u8 = np.random.default_rng(1).integers(0, 256, size=(len(half_b), 8, 8, 1), dtype=np.uint8)
    noise = metrics.score_samples(model, noise_u8, labels[half_b], ref, bootstrap_reps=10)
    print(f"real halves: {real}\nnoise vs real: {noise}")

    assert real["fid"] < 0.05 * noise["fid"]
    assert real["fid_bootstrap_se"] < real["fid"]
    assert real["class_accuracy"] > 0.95 and noise["class_accuracy"] < 0.5
    assert real["inception_score"] > 5.0
    assert real["num_samples"] == len(half_b)
    assert metrics.metric_labels()["fid"] == metrics.FID_LABEL
    assert "Inception" not in metrics.FID_LABEL


def test_paired_difference_se_is_far_below_unpaired_for_shared_noise():
    """Two settings that differ by a small shift of shared samples: the paired SE of the
    FID difference must be much smaller than the unpaired SEs, and zero for identical sets."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 8))
    ref_mu, ref_sigma = metrics.feature_statistics(ref)
    base = rng.normal(size=(400, 8)) + 0.5
    shifted = base + 0.05 * rng.normal(size=base.shape)
    paired = metrics.paired_fid_difference_se(shifted, base, ref_mu, ref_sigma, reps=40, seed=1)
    unpaired = metrics.fid_bootstrap_se(shifted, ref_mu, ref_sigma, reps=40, seed=1)
    assert paired < 0.25 * unpaired
    assert metrics.paired_fid_difference_se(base, base, ref_mu, ref_sigma, reps=5) == 0.0
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.paired_fid_difference_se(base[:10], base, ref_mu, ref_sigma)
