"""ImageNet sample metrics as the ADM evaluator computes them, without TensorFlow.

The ADM evaluator (openai/guided-diffusion, evaluations/evaluator.py, "the evaluator" below)
scores a batch of uint8 NHWC images against a reference batch .npz (e.g.
VIRTUAL_imagenet256_labeled.npz: arr_0 = 10,000 uint8 images, mu/sigma = pool_3 statistics,
mu_s/sigma_s = spatial statistics) with FID, sFID, Inception Score, precision and recall, all
from the TF graph classify_image_graph_def.pb (inception-2015-12-05).

Here the network is torch-fidelity's TF port of that graph
(torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3, registered as
"inception-v3-compat"; weights converted from the same 2015-12-05 GraphDef by its
utils/util_convert_inception_weights.py). Everything after the network follows the evaluator
line by line; each detail names the evaluator code it mirrors.

Preprocessing (evaluator: Evaluator.compute_activations + _create_feature_graph): the images
go in as float32 copies of the uint8 values, NHWC, any size, fed at the graph's
"ExpandDims:0"; the graph then resizes them to 299x299 with TF1 ResizeBilinear
(align_corners=False, no half-pixel centres) and maps x -> (x - 128) / 128. torch-fidelity's
forward() does exactly this on uint8 NCHW input (interpolate_bilinear_2d_like_tensorflow1x,
align_corners=False, documented bit-exact on CPU, then (x - 128) / 128), so we only transpose
NHWC -> NCHW and pass the uint8 values unchanged.

Which tensors:
- pool_3 (FID, precision/recall, IS input): the evaluator's FID_POOL_NAME = "pool_3:0",
  (N, 1, 1, 2048) reshaped to (N, 2048). torch-fidelity feature "2048" (AvgPool output).
- spatial (sFID): the evaluator's FID_SPATIAL_NAME = "mixed_6/conv:0" and
  `spatial = spatial[..., :7]`, then `reshape([N, -1])` of the NHWC tensor (N, 17, 17, 7).
  * mixed_6 is the 7th Inception block of the 2015 graph: mixed, mixed_1, mixed_2 are
    Mixed_5b/5c/5d, mixed_3 = Mixed_6a, mixed_4..mixed_7 = Mixed_6b..6e. torch-fidelity's
    weight converter maps "mixed_6/conv/conv2d_params" and "mixed_6/conv/batchnorm" to
    Mixed_6d.branch1x1.conv / .bn, so "mixed_6/conv" is Mixed_6d.branch1x1, the 1x1 branch
    (768 -> 192 channels, 17x17).
  * ":0" of the op named "mixed_6/conv" is the block's output after its ReLU: in that graph
    the Conv2D and the BatchNorm are the sub-ops "mixed_6/conv/Conv2D" and
    "mixed_6/conv/batchnorm", and the op carrying the scope's own name is the ReLU that
    follows them (the same way "conv:0", "pool_3:0" are the outputs of their layers).
    BasicConv2d.forward in torch-fidelity ends with that ReLU, so the forward hook on
    Mixed_6d.branch1x1 gives the same tensor. It is also the first 192 channels of Mixed_6d's
    concatenated output (guided-diffusion issue #109 found the match there), which the tests
    check.
  * Flattening: TF tensors are NHWC, so the 2023 = 17*17*7 values are ordered
    (row, column, channel) with the channel fastest. We take channels [:7] of the NCHW hook
    output and permute to NHWC before flattening; the reference mu_s / sigma_s are in that
    order.
- Inception Score logits: the evaluator's _create_softmax_graph takes the weight input of
  "softmax/logits/MatMul" (the 2048 x 1008 softmax/weights) and computes
  softmax(pool_3 @ W) itself: the graph's 1008-way softmax (ImageNet 1000 + 8 unused), with
  no bias. torch-fidelity's "logits_unbiased" is `pool.mm(fc.weight.T)` with fc = the
  converted softmax/weights (and the bias left out): the same 1008 logits.

Numerical details we do not copy bit for bit (each changes the scores by far less than the
certification tolerance in scripts/certify_adm_fid.py):
- mu: the evaluator's np.mean over float32 activations stays float32; we average in float64.
  sigma: np.cov promotes to float64 in both.
- IS: the evaluator's softmax and logs run in float32; we use a float64 log-softmax.
- precision/recall: the evaluator's pairwise distances run in float16 on the GPU (DistanceBlock);
  we emulate the float16 rounding of each op in NumPy (see adm_pairwise_distances), but the
  GPU's summation order inside the matmul cannot be reproduced, so a distance within one
  float16 step of a radius can compare differently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from scipy import linalg
from scipy.linalg import lapack

from .io import sha256_file, write_npz

# --- the network ---------------------------------------------------------------------------
TORCH_FIDELITY_NAME = "inception-v3-compat"
WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (torch-fidelity 0.4.0)
WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               + WEIGHTS_FILENAME)
FEATURES_LIST = ("2048", "logits_unbiased")  # torch-fidelity feature names we read
SPATIAL_MODULE = "Mixed_6d.branch1x1"  # TF "mixed_6/conv" (see the module docstring)
SPATIAL_CHANNELS = 7  # evaluator: _create_feature_graph, `spatial = spatial[..., :7]`
SPATIAL_SIZE = 17
POOL_DIM = 2048
SPATIAL_DIM = SPATIAL_SIZE * SPATIAL_SIZE * SPATIAL_CHANNELS  # 2023
NUM_LOGITS = 1008

# --- the evaluator's settings ----------------------------------------------------------------
FID_EPS = 1e-6  # FIDStatistics.frechet_distance(eps=1e-6)
IS_SPLIT_SIZE = 5000  # Evaluator.compute_inception_score(split_size=5000)
PR_NHOOD_SIZE = 3  # ManifoldEstimator(nhood_sizes=(3,))
PR_ROW_BATCH_SIZE = 10000  # ManifoldEstimator(row_batch_size=10000)
PR_COL_BATCH_SIZE = 10000  # ManifoldEstimator(col_batch_size=10000)
PR_CLAMP_TO_PERCENTILE = None  # ManifoldEstimator(clamp_to_percentile=None)
# ManifoldEstimator(eps=1e-5) only enters its realism score, which ADM does not report.

MODE = "ADM evaluator (guided-diffusion evaluations/evaluator.py)"
SPATIAL_DESCRIPTION = ("TF mixed_6/conv:0[..., :7] = torch-fidelity Mixed_6d.branch1x1 output "
                       "(after ReLU), channels [:7], flattened NHWC (channel fastest)")
IS_DESCRIPTION = ("softmax(pool_3 @ softmax/weights), 1008 classes, no bias "
                  "(torch-fidelity logits_unbiased)")
FID_METHODS = ("sqrtm", "factored")
CACHE_FORMAT_VERSION = 1


class InceptionWeightsMissing(FileNotFoundError):
    """The converted Inception weights file is not where we looked."""


def _torch_fidelity_version() -> str:
    import torch_fidelity

    return str(torch_fidelity.__version__)


def implementation() -> str:
    return (f"torch-fidelity {_torch_fidelity_version()} {TORCH_FIDELITY_NAME} "
            "(TF-ported Inception)")


# ---------------------------------------------------------------------------------------
# Loading the network
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InceptionExtractor:
    """torch-fidelity's FeatureExtractorInceptionV3 plus where its weights came from."""

    model: torch.nn.Module
    weights_path: Path
    weights_sha256: str
    device: torch.device


def default_weights_path() -> Path:
    """Where torch-fidelity's own download would have put the weights (torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _missing_weights_message(path: Path) -> str:
    return (
        f"Inception weights not found at {path}. We never download them silently. Get the "
        f"torch-fidelity conversion of the TF inception-2015-12-05 graph from\n  {WEIGHTS_URL}\n"
        f"and either put it at {default_weights_path()} (torch hub cache, where torch-fidelity "
        f"looks) or pass its path, e.g.\n"
        f"  curl -L -o {default_weights_path()} {WEIGHTS_URL}")


def load_inception(weights_path: str | Path | None = None, device: str | torch.device = "cpu",
                   expected_sha256: str | None = None) -> InceptionExtractor:
    """torch-fidelity's inception-v3-compat with the weights at `weights_path`.

    `weights_path=None` uses the torch hub cache file (default_weights_path()). A missing file
    raises InceptionWeightsMissing (naming the path and the release URL); nothing is
    downloaded. `expected_sha256`, if given, must match the file.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(weights_path).expanduser() if weights_path is not None else default_weights_path()
    if not path.is_file():
        raise InceptionWeightsMissing(_missing_weights_message(path))
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ValueError(f"Inception weights {path} have sha256 {digest}, "
                         f"expected {expected_sha256}")
    # torch-fidelity reads the file with torch.load(weights_only=False). Loading it first with
    # weights_only=True refuses any file that would run code on unpickling; one that passes
    # holds only tensors and containers, so the second, unrestricted read is the same.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"Inception weights {path} are not a plain state dict of tensors "
                         f"({type(err).__name__}: {err}); {_missing_weights_message(path)}") from None
    # Internal dtype float32, as the TF graph computes.
    model = FeatureExtractorInceptionV3(TORCH_FIDELITY_NAME, list(FEATURES_LIST),
                                        feature_extractor_weights_path=str(path))
    device = torch.device(device)
    model = model.to(device).eval()
    return InceptionExtractor(model=model, weights_path=path.resolve(), weights_sha256=digest,
                              device=device)


# ---------------------------------------------------------------------------------------
# Images in, features out
# ---------------------------------------------------------------------------------------

def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 in [0, 255] (as the ADM sample batches), "
                        f"got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC with 3 channels, got shape {images.shape}")
    return images


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """TF32 off while the network runs: the TF graph computes in full float32, and PyTorch's
    cuDNN convolutions default to TF32 on Ampere and later GPUs (~1e-3 relative error)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def inception_features(extractor: InceptionExtractor,
                       images: np.ndarray | Iterable[np.ndarray],
                       batch_size: int = 100) -> dict[str, np.ndarray]:
    """pool_3, spatial and IS logits of uint8 NHWC images (one array or an iterable of arrays).

    Returns float64 arrays: "pool" (N, 2048), "spatial" (N, 2023, TF NHWC order),
    "logits" (N, 1008, no bias). The network itself runs in float32 (TF32 disabled).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    model = extractor.model
    chunks = [images] if isinstance(images, np.ndarray) else images
    captured: list[torch.Tensor] = []

    def grab_spatial(_module, _inputs, output):
        # (N, 192, 17, 17) -> channels [:7] -> NHWC -> (N, 2023), TF's reshape order
        spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)
        captured.append(spatial.reshape(output.shape[0], -1).to(torch.float32).cpu())

    pools, spatials, logits = [], [], []
    hook = model.get_submodule(SPATIAL_MODULE).register_forward_hook(grab_spatial)
    try:
        with torch.inference_mode(), _full_float32():
            for chunk in chunks:
                chunk = _check_images(chunk)
                for start in range(0, len(chunk), batch_size):
                    batch = torch.tensor(chunk[start:start + batch_size])  # copy: may be read-only
                    x = batch.permute(0, 3, 1, 2).contiguous().to(extractor.device)
                    out = dict(zip(model.features_list, model(x)))
                    pools.append(out["2048"].cpu())
                    logits.append(out["logits_unbiased"].cpu())
                    spatials.append(captured.pop())
    finally:
        hook.remove()
    if not pools:
        return {"pool": np.zeros((0, POOL_DIM)), "spatial": np.zeros((0, SPATIAL_DIM)),
                "logits": np.zeros((0, NUM_LOGITS))}
    return {"pool": torch.cat(pools).double().numpy(),
            "spatial": torch.cat(spatials).double().numpy(),
            "logits": torch.cat(logits).double().numpy()}


# ---------------------------------------------------------------------------------------
# Streaming arrays out of (large) .npz batches, as the evaluator's open_npz_array does
# ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _npz_member(path: str | Path, key: str):
    with zipfile.ZipFile(path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            raise KeyError(f"{path} has no array {key!r}")
        with zf.open(name) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"{path}:{key} has unsupported .npy version {version}")
            if fortran or dtype.hasobject:
                raise ValueError(f"{path}:{key} must be a C-ordered plain array")
            yield fp, tuple(shape), dtype


def npz_array_shape(path: str | Path, key: str = "arr_0") -> tuple[int, ...]:
    with _npz_member(path, key) as (_fp, shape, _dtype):
        return shape


def iter_npz_batches(path: str | Path, key: str = "arr_0",
                     batch_size: int = 100) -> Iterator[np.ndarray]:
    """Batches of the array `key` of an .npz, read without loading the whole array."""
    with _npz_member(path, key) as (fp, shape, dtype):
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            want = count * row_bytes
            data = bytearray()
            while len(data) < want:
                block = fp.read(want - len(data))
                if not block:
                    raise ValueError(f"{path}:{key} ends early (truncated file?)")
                data += block
            yield np.frombuffer(bytes(data), dtype=dtype).reshape((count, *shape[1:]))


# ---------------------------------------------------------------------------------------
# Reference batch: statistics and (cached) activations
# ---------------------------------------------------------------------------------------

def reference_statistics(npz_path: str | Path,
                         activations: dict[str, np.ndarray] | None = None
                         ) -> dict[str, np.ndarray]:
    """mu, sigma (pool_3) and mu_s, sigma_s (spatial) of a reference batch, float64.

    Evaluator.read_statistics: the stored mu/sigma/mu_s/sigma_s when the .npz has "mu";
    otherwise computed from the batch's activations (pass them as `activations`).
    """
    with np.load(npz_path, allow_pickle=False) as data:
        if "mu" in data.files:
            return {k: np.asarray(data[k], dtype=np.float64)
                    for k in ("mu", "sigma", "mu_s", "sigma_s")}
    if activations is None:
        raise ValueError(f"{npz_path} stores no mu/sigma; pass its activations to compute them")
    mu, sigma = feature_statistics(activations["pool"])
    mu_s, sigma_s = feature_statistics(activations["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def reference_cache_path(npz_path: str | Path, weights_sha256: str) -> Path:
    """`<npz>.<first 16 hex digits of the weights' sha256>.features.npz`, beside the npz."""
    npz_path = Path(npz_path)
    return npz_path.with_name(f"{npz_path.name}.{weights_sha256[:16]}.features.npz")


def _read_cache(path: Path, weights_sha256: str, reference_sha256: str, count: int
                ) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if (int(data["format_version"]) != CACHE_FORMAT_VERSION
                    or str(data["weights_sha256"]) != weights_sha256
                    or str(data["reference_sha256"]) != reference_sha256):
                return None
            pool, spatial = data["pool"], data["spatial"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if pool.shape != (count, POOL_DIM) or spatial.shape != (count, SPATIAL_DIM):
        return None
    return {"pool": pool.astype(np.float64), "spatial": spatial.astype(np.float64)}


def reference_activations(npz_path: str | Path, extractor: InceptionExtractor, *,
                          batch_size: int = 100, cache: bool = True,
                          reference_sha256: str | None = None) -> dict[str, Any]:
    """pool_3 and spatial activations of the reference batch's arr_0 images.

    Evaluator.read_activations(ref_batch) runs the network over all 10,000 reference images;
    that is slow, so the result is cached beside the .npz (reference_cache_path) for this
    weights file. The cache is used only if it records the same weights sha256 and reference
    sha256; otherwise it is recomputed and replaced atomically.
    Returns {"pool", "spatial" (float64), "cache_path", "from_cache"}.
    """
    npz_path = Path(npz_path)
    reference_sha256 = reference_sha256 or sha256_file(npz_path)
    count = npz_array_shape(npz_path, "arr_0")[0]
    cache_path = reference_cache_path(npz_path, extractor.weights_sha256)
    if cache:
        cached = _read_cache(cache_path, extractor.weights_sha256, reference_sha256, count)
        if cached is not None:
            return {**cached, "cache_path": str(cache_path), "from_cache": True}
    feats = inception_features(extractor, iter_npz_batches(npz_path, "arr_0", batch_size),
                               batch_size=batch_size)
    if cache:
        # float32, as the network produced them (lossless round trip to float64)
        write_npz(cache_path, pool=feats["pool"].astype(np.float32),
                  spatial=feats["spatial"].astype(np.float32),
                  weights_sha256=np.array(extractor.weights_sha256),
                  reference_sha256=np.array(reference_sha256),
                  format_version=np.array(CACHE_FORMAT_VERSION),
                  implementation=np.array(implementation()))
    return {"pool": feats["pool"], "spatial": feats["spatial"],
            "cache_path": str(cache_path) if cache else None, "from_cache": False}


# ---------------------------------------------------------------------------------------
# FID / sFID
# ---------------------------------------------------------------------------------------

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluator.compute_statistics: mean and np.cov(rowvar=False) (ddof=1), here float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # The evaluator calls linalg.sqrtm(..., disp=False), which only silences scipy's
    # "singular matrix" message; scipy >= 1.16 deprecates disp and warns instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """tr sqrtm(sigma1 sigma2) exactly as FIDStatistics.frechet_distance computes it."""
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal "
                      "of cov estimates", RuntimeWarning, stacklevel=3)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(np.trace(covmean))


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F (rank x n) with sigma = F^T F, by LAPACK's pivoted Cholesky (dpstrf), which accepts
    positive semi-definite input and stops at the numerical rank."""
    c, piv, rank, info = lapack.dpstrf(sigma, lower=0)
    if info < 0:
        raise ValueError(f"dpstrf: illegal argument {-info}")
    permuted = np.triu(c[:rank])  # P^T sigma P = U^T U, U's rows past the rank are unset
    factor = np.empty_like(permuted)
    factor[:, piv - 1] = permuted
    return factor


def _trace_sqrt_product_factored(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(sigma1 sigma2) for PSD matrices without a general matrix square root.

    With sigma1 = F^T F, the non-zero eigenvalues of sigma1 sigma2 = F^T (F sigma2) are those
    of F sigma2 F^T (rank x rank, symmetric PSD), and tr sqrtm is the sum of their square
    roots. Exact for covariance matrices; fast when the rank is small (few samples).
    """
    factor = _psd_factor(sigma1)
    if factor.shape[0] == 0:
        return 0.0
    inner = factor @ sigma2 @ factor.T
    eigenvalues = linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     *, eps: float = FID_EPS, method: str = "sqrtm") -> float:
    """FIDStatistics.frechet_distance of the evaluator, in float64.

    method "sqrtm" (default) is the evaluator's computation: scipy sqrtm of sigma1 @ sigma2;
    if that is not finite, warn and retry with `eps` added to both diagonals; an imaginary
    part is an error above 1e-3 on the diagonal and dropped otherwise. It takes ~15-25 s per
    2048-d matrix on a CPU. "factored" gives the same quantity for covariance (PSD) matrices
    through a pivoted Cholesky factor and a symmetric eigendecomposition (fast for low rank,
    ~2 s at full rank); it is there for checks, not for reported numbers.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape}, {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different dimensions: {sigma1.shape}, {sigma2.shape}")
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "factored":
        tr_covmean = _trace_sqrt_product_factored(sigma1, sigma2)
    else:
        raise ValueError(f"method must be one of {FID_METHODS}, got {method!r}")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# ---------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------

def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """Evaluator.compute_inception_score from the 1008 unbiased logits.

    p(y|x) = softmax(logits); consecutive splits of `split_size` samples (the last one may be
    shorter, none is dropped); per split exp(mean_x KL(p(y|x) || mean_x p(y|x))); the mean
    over splits (the evaluator reports no std). Float64 log-softmax instead of float32 logs;
    0 * log 0 terms count as 0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be (N > 0, classes), got shape {logits.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for start in range(0, len(p), split_size):
        part, log_part = p[start:start + split_size], log_p[start:start + split_size]
        with np.errstate(divide="ignore"):
            log_marginal = np.log(part.mean(axis=0, keepdims=True))
        kl = np.where(part > 0, part * (log_part - log_marginal), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def softmax_logits(extractor: InceptionExtractor, pool: np.ndarray) -> np.ndarray:
    """The IS logits from pool_3 features: pool @ softmax/weights (no bias), float64."""
    weight = extractor.model.fc.weight.detach().double().cpu().numpy()  # (1008, 2048)
    return np.asarray(pool, dtype=np.float64) @ weight.T


# ---------------------------------------------------------------------------------------
# Precision and recall (ManifoldEstimator, k = 3)
# ---------------------------------------------------------------------------------------

def _squared_distances_float32(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    norm_u = np.square(u).sum(axis=1, dtype=np.float32)[:, None]
    norm_v = np.square(v).sum(axis=1, dtype=np.float32)[None, :]
    return np.maximum(norm_u - np.float32(2) * (u @ v.T) + norm_v, np.float32(0))


def _squared_distances_float16(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """_batch_pairwise_distances on float16 inputs, each TF op's result rounded to float16.

    tf.square and the elementwise ops are float16 in and out (NumPy float16 arithmetic rounds
    each result the same way); reduce_sum and matmul accumulate in float32 on the GPU and
    round once. Overflow gives inf, which sends the caller to the float32 path as in TF.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        u16 = np.asarray(u).astype(np.float16)
        v16 = np.asarray(v).astype(np.float16)
        norm_u = np.square(u16).sum(axis=1, dtype=np.float32).astype(np.float16)[:, None]
        norm_v = np.square(v16).sum(axis=1, dtype=np.float32).astype(np.float16)[None, :]
        dot = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        d = (norm_u - np.float16(2) * dot) + norm_v  # TF: norm_u - 2 * matmul + norm_v
        return np.maximum(d, np.float16(0))


def adm_pairwise_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(u), len(v)) as the evaluator's DistanceBlock gives them.

    DistanceBlock computes the block in float16 and uses it (cast to float32) if every entry is
    finite, else recomputes the block in float32 (tf.cond on reduce_all(is_finite)).
    """
    d16 = _squared_distances_float16(u, v)
    if np.isfinite(d16).all():
        return d16.astype(np.float32)
    return _squared_distances_float32(u, v)


def manifold_radii(features: np.ndarray, k: int = PR_NHOOD_SIZE, *,
                   row_batch_size: int = PR_ROW_BATCH_SIZE,
                   col_batch_size: int = PR_COL_BATCH_SIZE,
                   clamp_to_percentile: float | None = PR_CLAMP_TO_PERCENTILE) -> np.ndarray:
    """ManifoldEstimator.manifold_radii: squared distance to the k-th nearest neighbour.

    The point itself (distance ~0) counts as the 0th neighbour, as in the evaluator's
    partition over arange(k + 1) and column k. Distance blocks are row_batch_size x
    col_batch_size (the float16/float32 choice is per block, as in the evaluator); only the
    k + 1 smallest of each block are kept, which leaves the k-th smallest of the row unchanged.
    """
    n = len(features)
    if n < k + 1:
        raise ValueError(f"precision/recall with k={k} needs at least {k + 1} feature vectors, "
                         f"got {n}")
    radii = np.zeros(n, dtype=np.float32)
    for begin1 in range(0, n, row_batch_size):
        rows = features[begin1:begin1 + row_batch_size]
        smallest = []
        for begin2 in range(0, n, col_batch_size):
            d = adm_pairwise_distances(rows, features[begin2:begin2 + col_batch_size])
            smallest.append(np.partition(d, k, axis=1)[:, :k + 1] if d.shape[1] > k + 1 else d)
        radii[begin1:begin1 + len(rows)] = np.partition(np.concatenate(smallest, axis=1), k,
                                                        axis=1)[:, k]
    if clamp_to_percentile is not None:
        radii[radii > np.percentile(radii, clamp_to_percentile)] = 0
    return radii


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = PR_NHOOD_SIZE, *,
                     row_batch_size: int = PR_ROW_BATCH_SIZE,
                     col_batch_size: int = PR_COL_BATCH_SIZE,
                     clamp_to_percentile: float | None = PR_CLAMP_TO_PERCENTILE
                     ) -> tuple[float, float]:
    """Evaluator.compute_prec_recall(activations_ref, activations_sample) on pool_3 features.

    precision = fraction of samples within the k-NN radius of some reference point;
    recall = fraction of reference points within the k-NN radius of some sample
    (ManifoldEstimator.evaluate_pr; "within" is distance <= radius, both squared).
    """
    opts = {"row_batch_size": row_batch_size, "col_batch_size": col_batch_size,
            "clamp_to_percentile": clamp_to_percentile}
    radii_ref = manifold_radii(reference, k, **opts)
    radii_sample = manifold_radii(samples, k, **opts)
    ref_in = np.zeros(len(reference), dtype=bool)
    sample_in = np.zeros(len(samples), dtype=bool)
    for begin1 in range(0, len(reference), row_batch_size):
        end1 = begin1 + row_batch_size
        for begin2 in range(0, len(samples), col_batch_size):
            end2 = begin2 + col_batch_size
            d = adm_pairwise_distances(reference[begin1:end1], samples[begin2:end2])
            ref_in[begin1:end1] |= (d <= radii_sample[None, begin2:end2]).any(axis=1)
            sample_in[begin2:end2] |= (d <= radii_ref[begin1:end1, None]).any(axis=0)
    return float(sample_in.mean()), float(ref_in.mean())


# ---------------------------------------------------------------------------------------
# Everything together
# ---------------------------------------------------------------------------------------

def scores_from_features(sample_features: dict[str, np.ndarray], reference_npz: str | Path,
                         extractor: InceptionExtractor, *, batch_size: int = 100,
                         cache: bool = True, fid_method: str = "sqrtm",
                         is_split_size: int = IS_SPLIT_SIZE, pr_k: int = PR_NHOOD_SIZE,
                         pr_row_batch_size: int = PR_ROW_BATCH_SIZE,
                         pr_col_batch_size: int = PR_COL_BATCH_SIZE) -> dict[str, Any]:
    """The evaluator's main() from sample features (inception_features output)."""
    reference_npz = Path(reference_npz)
    reference_sha256 = sha256_file(reference_npz)
    ref_acts = reference_activations(reference_npz, extractor, batch_size=batch_size,
                                     cache=cache, reference_sha256=reference_sha256)
    with np.load(reference_npz, allow_pickle=False) as data:
        stats_source = "stored mu/sigma/mu_s/sigma_s" if "mu" in data.files else "arr_0"
    ref_stats = reference_statistics(reference_npz, ref_acts)
    mu, sigma = feature_statistics(sample_features["pool"])
    mu_s, sigma_s = feature_statistics(sample_features["spatial"])
    fid = frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"], method=fid_method)
    sfid = frechet_distance(mu_s, sigma_s, ref_stats["mu_s"], ref_stats["sigma_s"],
                            method=fid_method)
    precision, recall = precision_recall(ref_acts["pool"], sample_features["pool"], pr_k,
                                         row_batch_size=pr_row_batch_size,
                                         col_batch_size=pr_col_batch_size)
    num_samples = int(len(sample_features["pool"]))
    return {
        "fid": fid,
        "sfid": sfid,
        "inception_score": inception_score(sample_features["logits"], split_size=is_split_size),
        "precision": precision,
        "recall": recall,
        "num_samples": num_samples,
        "provenance": {
            "implementation": implementation(),
            "mode": MODE,
            "torch_fidelity_version": _torch_fidelity_version(),
            "torch_version": torch.__version__,
            "weights_path": str(extractor.weights_path),
            "weights_sha256": extractor.weights_sha256,
            "device": str(extractor.device),
            "network_dtype": "float32",
            "reference": {"path": str(reference_npz.resolve()), "sha256": reference_sha256,
                          "num_images": int(len(ref_acts["pool"])),
                          "statistics": stats_source,
                          "activation_cache": ref_acts["cache_path"],
                          "activations_from_cache": ref_acts["from_cache"]},
            "num_samples": num_samples,
            "features": {"fid": "pool_3 (2048)", "sfid": SPATIAL_DESCRIPTION,
                         "inception_score": IS_DESCRIPTION,
                         "precision_recall": "pool_3 (2048)"},
            "fid_method": fid_method,
            "fid_eps": FID_EPS,
            "is_split_size": is_split_size,
            "pr_k": pr_k,
            "pr_batch_sizes": [pr_row_batch_size, pr_col_batch_size],
            "pr_distances": "float16 as the evaluator's DistanceBlock (float32 if not finite)",
        },
    }


def adm_scores(images: np.ndarray | str | Path, reference_npz: str | Path,
               extractor: InceptionExtractor, *, batch_size: int = 100, cache: bool = True,
               fid_method: str = "sqrtm", is_split_size: int = IS_SPLIT_SIZE,
               pr_k: int = PR_NHOOD_SIZE, pr_row_batch_size: int = PR_ROW_BATCH_SIZE,
               pr_col_batch_size: int = PR_COL_BATCH_SIZE) -> dict[str, Any]:
    """FID, sFID, IS, precision and recall of uint8 NHWC samples, as the ADM evaluator.

    `images` is an array or the path of a sample batch .npz (its arr_0 is streamed in
    batches; unlike the evaluator, which would take a sample .npz's own stored mu/sigma if it
    had them, the statistics always come from the images). Returns {"fid", "sfid",
    "inception_score", "precision", "recall", "num_samples", "provenance"}.
    """
    if isinstance(images, (str, Path)):
        sample_source: dict[str, Any] = {"path": str(Path(images).resolve()),
                                         "sha256": sha256_file(images)}
        source = iter_npz_batches(images, "arr_0", batch_size)
    else:
        sample_source = {"path": None}
        source = _check_images(images)
    feats = inception_features(extractor, source, batch_size=batch_size)
    if len(feats["pool"]) < 2:
        raise ValueError("need at least 2 samples for a covariance")
    scores = scores_from_features(
        feats, reference_npz, extractor, batch_size=batch_size, cache=cache,
        fid_method=fid_method, is_split_size=is_split_size, pr_k=pr_k,
        pr_row_batch_size=pr_row_batch_size, pr_col_batch_size=pr_col_batch_size)
    scores["provenance"]["samples"] = sample_source
    return scores


__all__ = [
    "InceptionExtractor", "InceptionWeightsMissing", "adm_pairwise_distances", "adm_scores",
    "default_weights_path", "feature_statistics", "frechet_distance", "inception_features",
    "inception_score", "iter_npz_batches", "load_inception", "manifold_radii",
    "npz_array_shape", "precision_recall", "reference_activations", "reference_cache_path",
    "reference_statistics", "scores_from_features", "softmax_logits",
]
