"""Tests for diffrepro.adm_metrics (ADM-evaluator metrics on torch-fidelity's TF Inception).

Offline: the Inception weights are random, written with exactly the keys and shapes that
torch-fidelity's inception-v3-compat loads, so the real loading and feature path runs.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from diffrepro import adm_metrics as adm
from diffrepro.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 6  # per set; Inception on one CPU thread takes ~0.3 s per image
BATCH = 4  # < N_IMAGES, so batching is exercised


# ---------------------------------------------------------------------------------------
# random weights and a fake ADM reference batch
# ---------------------------------------------------------------------------------------

def write_random_inception_weights(path: Path, seed: int = 0) -> Path:
    """A state dict with the exact keys/shapes FeatureExtractorInceptionV3 loads.

    Its __init__ builds every layer and then always loads a state dict; a subclass whose
    load_state_dict keeps the fresh initialisation (given an empty placeholder file) yields the
    module's own parameter set, which we re-initialise so activations keep their scale
    through the 90-odd conv-BN-ReLU layers (He-normal convs, near-identity BN statistics).
    """
    class FreshInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            assert state_dict == {}, "only the empty placeholder is expected here"

    placeholder = path.with_name(path.name + ".empty")
    torch.save({}, placeholder)
    gen = torch.Generator().manual_seed(seed)
    model = FreshInception(adm.TORCH_FIDELITY_NAME, ["2048"],
                           feature_extractor_weights_path=str(placeholder))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.05, generator=gen)
                module.bias.normal_(0.0, 1.0, generator=gen)
    torch.save(model.state_dict(), path)
    placeholder.unlink()
    return path


def write_fake_reference(path: Path, images: np.ndarray, feats: dict) -> Path:
    mu, sigma = adm.feature_statistics(feats["pool"])
    mu_s, sigma_s = adm.feature_statistics(feats["spatial"])
    np.savez(path, arr_0=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    return path


class CallCounter:
    """Counts forward calls of the extractor's network while in a `with` block."""

    def __init__(self, extractor: adm.InceptionExtractor):
        self.model, self.calls = extractor.model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_hook(self._count)
        return self

    def _count(self, *_args):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("weights") / "random.pth")


@pytest.fixture(scope="module")
def extractor(weights) -> adm.InceptionExtractor:
    return adm.load_inception(weights)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, size=(N_IMAGES, 256, 256, 3), dtype=np.uint8)
    # a different distribution: darker, blockier images
    blocks = rng.integers(0, 128, size=(N_IMAGES, 32, 32, 3), dtype=np.uint8)
    samples = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)
    return {"reference": reference, "samples": samples}


@pytest.fixture(scope="module")
def reference_features(extractor, images) -> dict[str, np.ndarray]:
    return adm.inception_features(extractor, images["reference"], batch_size=BATCH)


@pytest.fixture(scope="module")
def sample_features(extractor, images) -> dict[str, np.ndarray]:
    return adm.inception_features(extractor, images["samples"], batch_size=BATCH)


@pytest.fixture(scope="module")
def reference_npz(tmp_path_factory, images, reference_features) -> Path:
    return write_fake_reference(tmp_path_factory.mktemp("ref") / "VIRTUAL_fake256.npz",
                                images["reference"], reference_features)


def independent_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID from the features themselves: with centred data A, B the covariances are
    A^T A / (n-1) and B^T B / (m-1), and tr sqrt(S1 S2) is the nuclear norm of A B^T
    divided by sqrt((n-1)(m-1))."""
    a_c, b_c = a - a.mean(axis=0), b - b.mean(axis=0)
    scale = math.sqrt((len(a) - 1) * (len(b) - 1))
    tr_covmean = scipy.linalg.svdvals(a_c @ b_c.T).sum() / scale
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + (a_c ** 2).sum() / (len(a) - 1) + (b_c ** 2).sum() / (len(b) - 1)
                 - 2 * tr_covmean)


# ---------------------------------------------------------------------------------------
# weights and features
# ---------------------------------------------------------------------------------------

def test_load_inception_records_weights(extractor, weights):
    assert extractor.weights_sha256 == sha256_file(weights)
    assert extractor.weights_path == weights.resolve()
    assert tuple(extractor.model.features_list) == adm.FEATURES_LIST
    with pytest.raises(ValueError, match="sha256"):
        adm.load_inception(weights, expected_sha256="0" * 64)


def test_missing_weights_name_the_path_and_the_url(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / adm.WEIGHTS_FILENAME
    with pytest.raises(adm.InceptionWeightsMissing) as err:
        adm.load_inception(missing)
    assert str(missing) in str(err.value) and adm.WEIGHTS_URL in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    # no path: the torch hub cache, where torch-fidelity's own download would have put it
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(adm.InceptionWeightsMissing, match="hub/checkpoints/" + adm.WEIGHTS_FILENAME):
        adm.load_inception(None)


def test_feature_shapes(reference_features):
    assert reference_features["pool"].shape == (N_IMAGES, 2048)
    assert reference_features["spatial"].shape == (N_IMAGES, 2023)
    assert reference_features["logits"].shape == (N_IMAGES, 1008)
    for value in reference_features.values():
        assert value.dtype == np.float64 and np.isfinite(value).all()
    assert reference_features["pool"].std() > 1e-3  # random weights still give real signal


def test_spatial_is_mixed_6d_1x1_branch_first_7_channels_channel_last(extractor, images):
    """TF mixed_6/conv:0[..., :7] flattened NHWC == Mixed_6d output channels [:7] (its
    branch1x1 part), flattened with the channel fastest."""
    captured = {}

    def grab(_module, _inputs, out):
        captured["mixed_6d"] = out.clone()
        captured["tf32"] = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    handle = extractor.model.Mixed_6d.register_forward_hook(grab)
    try:
        feats = adm.inception_features(extractor, images["reference"][:2], batch_size=2)
        after = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    finally:
        handle.remove()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    # full float32 inside the network (as TF), the caller's TF32 settings restored after
    assert captured["tf32"] == (False, False) and after == (True, True)
    block = captured["mixed_6d"]  # (2, 768, 17, 17); branch1x1 is channels [:192]
    assert block.shape == (2, 768, 17, 17)
    first7 = block[:, :7].double()
    channel_last = first7.permute(0, 2, 3, 1).reshape(2, -1).numpy()
    np.testing.assert_array_equal(feats["spatial"], channel_last)
    # spot check of the TF index: (row 1, column 2, channel 3) -> (1 * 17 + 2) * 7 + 3
    assert feats["spatial"][1, (1 * 17 + 2) * 7 + 3] == first7[1, 3, 1, 2].item()
    assert not np.allclose(feats["spatial"], first7.reshape(2, -1).numpy())  # NCHW order


def test_is_logits_are_the_unbiased_1008_way_logits(extractor, reference_features):
    pool, logits = reference_features["pool"], reference_features["logits"]
    np.testing.assert_allclose(logits, adm.softmax_logits(extractor, pool), rtol=1e-4, atol=1e-4)
    bias = extractor.model.fc.bias.detach().double().numpy()
    assert not np.allclose(logits, adm.softmax_logits(extractor, pool) + bias, atol=1e-2)


# ---------------------------------------------------------------------------------------
# reference activations and their cache
# ---------------------------------------------------------------------------------------

def test_reference_activation_cache(tmp_path, reference_npz, extractor, reference_features):
    npz = Path(shutil.copy(reference_npz, tmp_path / reference_npz.name))
    with CallCounter(extractor) as counter:
        first = adm.reference_activations(npz, extractor, batch_size=5)
    assert counter.calls == 2 and not first["from_cache"]  # 6 images in batches of 5 + 1
    cache = adm.reference_cache_path(npz, extractor.weights_sha256)
    assert first["cache_path"] == str(cache) and cache.is_file()
    assert cache.name == f"{npz.name}.{extractor.weights_sha256[:16]}.features.npz"
    # batches of 5 here, of 4 in the fixture: same features
    np.testing.assert_allclose(first["pool"], reference_features["pool"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["spatial"], reference_features["spatial"],
                               rtol=1e-5, atol=1e-6)

    with CallCounter(extractor) as counter:
        second = adm.reference_activations(npz, extractor, batch_size=5)
    assert counter.calls == 0 and second["from_cache"]
    np.testing.assert_array_equal(second["pool"], first["pool"].astype(np.float32))
    np.testing.assert_array_equal(second["spatial"], first["spatial"].astype(np.float32))

    other_weights = dataclasses.replace(extractor, weights_sha256="f" * 64)
    with CallCounter(extractor) as counter:
        third = adm.reference_activations(npz, other_weights, batch_size=6)
    assert counter.calls == 1 and not third["from_cache"]
    assert third["cache_path"] != first["cache_path"] and cache.is_file()

    # a cache written for another reference file (sha256) is not used
    sha = sha256_file(npz)
    assert adm._read_cache(cache, extractor.weights_sha256, sha, N_IMAGES) is not None
    assert adm._read_cache(cache, extractor.weights_sha256, "0" * 64, N_IMAGES) is None
    assert adm._read_cache(cache, "0" * 64, sha, N_IMAGES) is None


def test_iter_npz_batches_streams_arr_0(tmp_path):
    arr = np.arange(7 * 4 * 5 * 3, dtype=np.uint8).reshape(7, 4, 5, 3)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, arr_0=arr, other=np.zeros(2))
        batches = list(adm.iter_npz_batches(path, "arr_0", batch_size=3))
        assert [len(b) for b in batches] == [3, 3, 1]
        np.testing.assert_array_equal(np.concatenate(batches), arr)
        assert adm.npz_array_shape(path) == arr.shape
    with pytest.raises(KeyError, match="mu"):
        adm.npz_array_shape(path, "mu")


def test_reference_statistics_stored_or_computed(tmp_path, reference_npz, reference_features):
    stats = adm.reference_statistics(reference_npz)
    assert stats["mu"].shape == (2048,) and stats["sigma_s"].shape == (2023, 2023)
    bare = tmp_path / "bare.npz"
    np.savez(bare, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no mu/sigma"):
        adm.reference_statistics(bare)
    computed = adm.reference_statistics(bare, reference_features)
    for key in stats:
        np.testing.assert_allclose(computed[key], stats[key])


# ---------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------

def test_scores_of_the_reference_images_themselves(images, reference_npz, extractor):
    scores = adm.adm_scores(images["reference"], reference_npz, extractor, batch_size=BATCH,
                            fid_method="factored")
    assert abs(scores["fid"]) < 1e-6 and abs(scores["sfid"]) < 1e-6
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert scores["num_samples"] == N_IMAGES
    prov = scores["provenance"]
    assert prov["implementation"] == ("torch-fidelity 0.4.0 inception-v3-compat "
                                      "(TF-ported Inception)")
    assert prov["mode"] == "ADM evaluator (guided-diffusion evaluations/evaluator.py)"
    assert prov["weights_sha256"] == extractor.weights_sha256
    assert prov["reference"]["sha256"] == sha256_file(reference_npz)
    assert prov["reference"]["path"] == str(reference_npz.resolve())
    assert prov["reference"]["statistics"] == "stored mu/sigma/mu_s/sigma_s"
    assert prov["num_samples"] == N_IMAGES and prov["samples"] == {"path": None}


def test_scores_of_other_images_match_independent_formulas(
        sample_features, reference_features, reference_npz, extractor):
    scores = adm.scores_from_features(sample_features, reference_npz, extractor,
                                      batch_size=BATCH, fid_method="factored")
    fid = independent_fid(sample_features["pool"], reference_features["pool"])
    sfid = independent_fid(sample_features["spatial"], reference_features["spatial"])
    assert fid > 1e-3 and sfid > 1e-3
    assert scores["fid"] == pytest.approx(fid, rel=1e-8)
    assert scores["sfid"] == pytest.approx(sfid, rel=1e-8)
    assert scores["inception_score"] == pytest.approx(
        adm.inception_score(adm.softmax_logits(extractor, sample_features["pool"])), rel=1e-4)
    assert 0.0 <= scores["precision"] <= 1.0 and 0.0 <= scores["recall"] <= 1.0
    assert (scores["precision"], scores["recall"]) == adm.precision_recall(
        reference_features["pool"], sample_features["pool"])


# ---------------------------------------------------------------------------------------
# FID arithmetic
# ---------------------------------------------------------------------------------------

def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("n", [200, 12])  # full rank and rank-deficient (11 < 40)
def test_frechet_distance_methods_agree(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, 40))
    b = rng.normal(size=(n, 40)) * 1.5 + 0.3
    fid_sqrtm = adm.frechet_distance(*_stats(a), *_stats(b), method="sqrtm")
    fid_factored = adm.frechet_distance(*_stats(a), *_stats(b), method="factored")
    assert fid_sqrtm == pytest.approx(independent_fid(a, b), rel=1e-6)
    assert fid_factored == pytest.approx(independent_fid(a, b), rel=1e-9)
    assert abs(adm.frechet_distance(*_stats(a), *_stats(a), method="factored")) < 1e-9
    assert abs(adm.frechet_distance(*_stats(a), *_stats(a), method="sqrtm")) < 1e-4
    with pytest.raises(ValueError, match="method"):
        adm.frechet_distance(*_stats(a), *_stats(b), method="eig")
    with pytest.raises(ValueError, match="different"):
        adm.frechet_distance(*_stats(a), *_stats(b[:, :30]))


def test_frechet_distance_singular_product_retries_with_eps(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 5)), rng.normal(size=(50, 5))
    (mu1, s1), (mu2, s2) = _stats(a), _stats(b)
    seen = []
    real_sqrtm = adm._sqrtm

    def flaky_sqrtm(m):
        seen.append(m)
        return np.full_like(m, np.nan) if len(seen) == 1 else real_sqrtm(m)

    monkeypatch.setattr(adm, "_sqrtm", flaky_sqrtm)
    with pytest.warns(RuntimeWarning, match="adding 1e-06 to diagonal"):
        fid = adm.frechet_distance(mu1, s1, mu2, s2)
    offset = np.eye(5) * 1e-6
    np.testing.assert_allclose(seen[1], (s1 + offset) @ (s2 + offset))
    covmean = real_sqrtm((s1 + offset) @ (s2 + offset))
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)
    assert fid == pytest.approx(expected, rel=1e-12)

    monkeypatch.setattr(adm, "_sqrtm", lambda m: np.eye(len(m)) * (1 + 0.1j))
    with pytest.raises(ValueError, match="Imaginary component"):
        adm.frechet_distance(mu1, s1, mu2, s2)
    monkeypatch.setattr(adm, "_sqrtm", lambda m: np.eye(len(m)) * (1 + 1e-4j))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adm.frechet_distance(mu1, s1, mu2, s2)  # small imaginary part: dropped


# ---------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------

def test_inception_score_behaviour():
    uniform = np.zeros((10, 1008))
    assert adm.inception_score(uniform) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    uniformish = rng.normal(scale=0.1, size=(10, 1008))
    confident = np.zeros((10, 1008))
    confident[np.arange(10), np.arange(10) * 7] = 60.0  # 10 distinct, certain classes
    assert 1.0 < adm.inception_score(uniformish) < 1.1
    assert adm.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    # splits of 5 consecutive samples, each covering 5 classes
    assert adm.inception_score(confident, split_size=5) == pytest.approx(5.0, rel=1e-6)
    # 12 samples, split_size 5: splits of 5, 5 and 2 are all kept and averaged
    twelve = np.zeros((12, 1008))
    twelve[np.arange(12), np.arange(12)] = 60.0
    assert adm.inception_score(twelve, split_size=5) == pytest.approx((5 + 5 + 2) / 3, rel=1e-6)
    # the evaluator's formula, written out
    p = scipy.special.softmax(uniformish, axis=1)
    kl = (p * (np.log(p) - np.log(p.mean(axis=0, keepdims=True)))).sum(axis=1)
    assert adm.inception_score(uniformish) == pytest.approx(np.exp(kl.mean()), rel=1e-12)


def test_torch_fidelity_inception_score_splits_the_shuffled_samples():
    """BK-SDM's IS (torch-fidelity --isc): N // splits samples per split after a seeded shuffle,
    where the ADM evaluator takes consecutive splits of 5,000."""
    from diffrepro.jobs import torch_fidelity_inception_score

    confident = np.zeros((20, 1008))
    confident[np.arange(20), np.arange(20) * 7] = 60.0  # 20 distinct, certain classes
    scores = torch_fidelity_inception_score(confident, splits=4)
    assert scores["inception_score"] == pytest.approx(5.0, rel=1e-6)  # each split: 5 distinct classes
    assert adm.inception_score(confident) == pytest.approx(20.0, rel=1e-6)
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(30, 1008))
    shuffled = logits[np.random.RandomState(2020).permutation(30)]
    per_split = []
    for part in np.split(shuffled, 3):
        p = scipy.special.softmax(part, axis=1)
        per_split.append(np.exp((p * (np.log(p) - np.log(p.mean(axis=0, keepdims=True)))).sum(axis=1).mean()))
    scores = torch_fidelity_inception_score(logits, splits=3)
    assert scores["inception_score"] == pytest.approx(np.mean(per_split), rel=1e-10)
    assert scores["inception_score_std"] == pytest.approx(np.std(per_split), rel=1e-8)


# ---------------------------------------------------------------------------------------
# precision / recall
# ---------------------------------------------------------------------------------------

def test_pairwise_distances_float16_with_float32_fallback():
    rng = np.random.default_rng(0)
    u, v = rng.random((5, 64)), rng.random((4, 64))
    exact = ((u[:, None] - v[None]) ** 2).sum(-1)
    d = adm.adm_pairwise_distances(u, v)
    assert d.dtype == np.float32 and d.shape == (5, 4)
    np.testing.assert_array_equal(d, d.astype(np.float16).astype(np.float32))  # float16 values
    np.testing.assert_allclose(d, exact, rtol=0, atol=0.05)
    big = u * 100  # squared norms ~ 3e5 overflow float16 (max 65504): float32 instead
    d_big = adm.adm_pairwise_distances(big, v * 100)
    np.testing.assert_allclose(d_big, exact * 1e4, rtol=1e-4)
    with np.errstate(over="ignore"):
        assert not np.array_equal(d_big, d_big.astype(np.float16).astype(np.float32))


def test_precision_recall():
    rng = np.random.default_rng(0)
    ref = rng.random((20, 64))
    assert adm.precision_recall(ref, ref.copy()) == (1.0, 1.0)
    assert adm.precision_recall(ref, ref + 10.0) == (0.0, 0.0)
    # radii: squared distance to the 3rd nearest neighbour (self = 0th)
    exact = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    np.testing.assert_allclose(adm.manifold_radii(ref), np.sort(exact, axis=1)[:, 3], rtol=5e-3)
    # small blocks give the same answer as the evaluator's 10,000 x 10,000 ones
    samples = ref[:15] + rng.normal(scale=0.2, size=(15, 64))
    small = {"row_batch_size": 7, "col_batch_size": 6}
    np.testing.assert_array_equal(adm.manifold_radii(samples, **small),
                                  adm.manifold_radii(samples))
    assert adm.precision_recall(ref, samples, **small) == adm.precision_recall(ref, samples)
    # a brute-force version of ManifoldEstimator.evaluate_pr on the same distances
    radii_ref, radii_s = adm.manifold_radii(ref), adm.manifold_radii(samples)
    d = adm.adm_pairwise_distances(ref, samples)
    precision = (d <= radii_ref[:, None]).any(axis=0).mean()
    recall = (d <= radii_s[None, :]).any(axis=1).mean()
    assert adm.precision_recall(ref, samples) == (precision, recall)
    with pytest.raises(ValueError, match="at least 4"):
        adm.manifold_radii(ref[:3])


# ---------------------------------------------------------------------------------------
# the certification script
# ---------------------------------------------------------------------------------------

def test_certify_script_help():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "certify_adm_fid.py"), "--help"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert "3.9425" in out.stdout and "--tolerance" in out.stdout and "--reference" in out.stdout
