"""Sample-quality metrics computed with the embedded suite's digits CNN.

These are FID / IS / accuracy *in the digits-CNN feature space*: they follow the usual
protocols (pytorch-fid / ADM evaluator statistics, Improved-GAN Inception Score splits)
but are not Inception-v3 numbers and must never be reported as such. Use the labels below.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .io import write_npz
from .models.classifier import FEATURE_DIM, DigitsCNN, from_uint8

FID_LABEL = "FID (digits-CNN features)"
IS_LABEL = "IS (digits-CNN softmax)"
ACC_LABEL = "class accuracy (digits-CNN)"
FEATURE_NAME = "digits-CNN penultimate features, 64-d"
FID_IMPLEMENTATION = "diffrepro.metrics.frechet_distance (float64, symmetric eigendecomposition)"

LOG_EPS = 1e-12  # keeps log(0) finite for exactly-zero probabilities


def metric_labels() -> dict[str, str]:
    """Human-readable names for reports, so the numbers are never mistaken for Inception ones."""
    return {
        "fid": FID_LABEL,
        "inception_score": IS_LABEL,
        "class_accuracy": ACC_LABEL,
        "features": FEATURE_NAME,
        "fid_implementation": FID_IMPLEMENTATION,
    }


# ---------------------------------------------------------------------------------------
# Network outputs and Gaussian statistics
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def classifier_outputs(model: DigitsCNN, images_u8: np.ndarray, batch_size: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 64), softmax probabilities (N, 10)), both float64."""
    model.eval()
    x = from_uint8(images_u8)
    features, probs = [], []
    for start in range(0, len(x), batch_size):
        feats = model.features(x[start:start + batch_size])
        features.append(feats.double())
        # softmax in float64 so tiny probabilities survive for the IS logs
        probs.append(torch.softmax(model.head(feats).double(), dim=1))
    if not features:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0, model.head.out_features))
    return torch.cat(features).numpy(), torch.cat(probs).numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1, as pytorch-fid and the ADM evaluator) in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


# ---------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------

def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (mu, sigma) pair; returns float64 copies, sigma symmetrised."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a 1-D vector, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{name} must have shape {(mu.shape[0], mu.shape[0])} to match "
                         f"mu{name} of length {mu.shape[0]}, got {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"mu{name}/sigma{name} contain NaN or inf")
    # eigh reads one triangle only; averaging removes float asymmetry from np.cov etc.
    return mu, 0.5 * (sigma + sigma.T)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; roundoff-negative eigenvalues become 0."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    root = (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
    return 0.5 * (root + root.T)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2), via the PSD matrix sqrt(S1) S2 sqrt(S1), which has the same eigenvalues."""
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). Works for singular
    (rank-deficient) covariances without the offset hack sqrtm-based code needs.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "1")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians have different dimensions: "
                         f"{mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    distance = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                - 2.0 * _trace_sqrt_product(sigma1, sigma2))
    # the exact value is >= 0 (a squared Bures-Wasserstein distance); below 0 is roundoff
    return float(max(distance, 0.0))


def fid_of_features(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                    distance=None) -> float:
    """`distance`: a Frechet distance function (default ours; the ADM backend passes a faster
    exact one for 2048-d bootstraps)."""
    return (distance or frechet_distance)(*feature_statistics(features), ref_mu, ref_sigma)


def _bootstrap_std(num_rows: int, statistic, *, reps: int, seed: int) -> float:
    """Standard deviation of statistic(rows) over `reps` resamplings of rows with replacement."""
    if reps < 2:
        raise ValueError(f"need at least 2 bootstrap replicates, got {reps}")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, num_rows, size=num_rows)) for _ in range(reps)]
    return float(np.std(values, ddof=1))


def fid_bootstrap_se(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, *,
                     reps: int = 50, seed: int = 0, distance=None) -> float:
    """Bootstrap standard error of the FID: resample generated features with replacement.

    The reference statistics are held fixed, so this measures sampling noise from the
    finite generated set only.
    """
    features = np.asarray(features, dtype=np.float64)
    return _bootstrap_std(len(features),
                          lambda rows: fid_of_features(features[rows], ref_mu, ref_sigma, distance),
                          reps=reps, seed=seed)


def paired_fid_difference_se(features: np.ndarray, baseline: np.ndarray, ref_mu: np.ndarray,
                             ref_sigma: np.ndarray, *, reps: int = 50, seed: int = 0,
                             distance=None) -> float:
    """Bootstrap standard error of FID(features) - FID(baseline) for paired samples.

    Row i of both arrays must come from the same noise and label (as every setting of a
    method does here), so each replicate resamples the same rows from both: the shared
    noise cancels, and the error of the difference is far smaller than the two unpaired
    errors combined.
    """
    features = np.asarray(features, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if features.shape != baseline.shape:
        raise ValueError(f"paired features need equal shapes, got {features.shape} and {baseline.shape}")
    return _bootstrap_std(
        len(features),
        lambda rows: (fid_of_features(features[rows], ref_mu, ref_sigma, distance)
                      - fid_of_features(baseline[rows], ref_mu, ref_sigma, distance)),
        reps=reps, seed=seed)


# ---------------------------------------------------------------------------------------
# Inception Score and accuracy
# ---------------------------------------------------------------------------------------

def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, classes), got shape {probs.shape}")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probs must sum to 1 (pass softmax outputs, not logits)")
    return probs


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std over splits) of exp(E_x KL(p(y|x) || p(y))), Improved-GAN protocol.

    Splits are contiguous, with boundaries floor(k N / splits) so every sample is used;
    p(y) is the marginal within each split; std is the population std (ddof=0).
    """
    probs = _check_probs(probs)
    n = probs.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    scores = []
    for k in range(splits):
        part = probs[k * n // splits:(k + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + LOG_EPS) - np.log(marginal + LOG_EPS))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def class_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax class equals the class they were conditioned on."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need probs (N, classes) and labels (N,), got {probs.shape} and {labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("class_accuracy of zero samples is undefined")
    return float(np.mean(probs.argmax(axis=1) == labels))


# ---------------------------------------------------------------------------------------
# Reference statistics and one-call scoring
# ---------------------------------------------------------------------------------------

def reference_statistics(model: DigitsCNN, images_u8: np.ndarray) -> dict:
    """Feature mean/covariance of the reference (real) images."""
    features, _ = classifier_outputs(model, images_u8)
    mu, sigma = feature_statistics(features)
    return {"mu": mu, "sigma": sigma, "num_images": int(features.shape[0])}


def save_reference_statistics(path: str | os.PathLike, stats: dict) -> None:
    """Atomically write mu, sigma and num_images as an .npz."""
    write_npz(path, mu=np.asarray(stats["mu"], dtype=np.float64),
              sigma=np.asarray(stats["sigma"], dtype=np.float64),
              num_images=np.asarray(stats["num_images"], dtype=np.int64))


def load_reference_statistics(path: str | os.PathLike) -> dict:
    """Read statistics written by save_reference_statistics (no pickle allowed)."""
    with np.load(path, allow_pickle=False) as data:
        # ADM reference batches store mu/sigma (and the images) but no count
        count = int(data["num_images"]) if "num_images" in data.files else None
        stats = {"mu": data["mu"], "sigma": data["sigma"], "num_images": count}
    _check_gaussian(stats["mu"], stats["sigma"], "")
    return stats


def score_samples(model: DigitsCNN, images_u8: np.ndarray, labels: np.ndarray, ref_stats: dict,
                  *, is_splits: int = 10, bootstrap_reps: int = 50, seed: int = 0) -> dict:
    """All metrics for one set of class-conditional samples against reference statistics."""
    labels = np.asarray(labels)
    if labels.shape != (len(images_u8),):
        raise ValueError(f"need one label per image: {len(images_u8)} images, labels {labels.shape}")
    features, probs = classifier_outputs(model, images_u8)
    return score_features(features, probs, labels, ref_stats, is_splits=is_splits,
                          bootstrap_reps=bootstrap_reps, seed=seed)


def score_features(features: np.ndarray, probs: np.ndarray, labels: np.ndarray, ref_stats: dict,
                   *, is_splits: int = 10, bootstrap_reps: int = 50, seed: int = 0) -> dict:
    """All metrics from precomputed classifier features and softmax outputs."""
    mu, sigma = feature_statistics(features)
    is_mean, is_std = inception_score(probs, splits=is_splits)
    return {
        "fid": frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"]),
        "fid_bootstrap_se": fid_bootstrap_se(features, ref_stats["mu"], ref_stats["sigma"],
                                             reps=bootstrap_reps, seed=seed),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "class_accuracy": class_accuracy(probs, labels),
        "num_samples": int(features.shape[0]),
    }
