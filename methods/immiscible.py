"""Immiscible Diffusion (Li et al., NeurIPS 2024, arXiv 2406.12303; code
yhli123/Immiscible-Diffusion): pair each image with nearby noise.

- immiscible: per batch, the L2 distances (not squared) between the flattened images and a
  batch of Gaussian noise; scipy's linear_sum_assignment (rows images, columns noise) gives
  the pairing, and the noise is permuted (never the images). Timesteps are drawn
  independently of it.
- immiscible_knn ("improved" variant): k noises per image, keep the nearest one.

The Stable Diffusion code (Linear_Assignment-stable_diffusion/conditional_*_train_sd.py)
computes the distances in float16 on 0.1 x the scaled VAE latents and 0.1 x the noise,
over the batch gathered from every GPU; its KNN code (KNN-stable_diffusion) in float16
on the unscaled latents, k = 64. `distance_dtype` and `scale` select that recipe; the
DiT study's defaults (float32, scale 1, on the suite's pixels, over one job's batch) are
those it was run with. float64 is the exact optimum: float16 rounds the distances, so
ties and near-ties can pick another permutation (`assignment_agreement` measures how often).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.training_methods import NoisePairing, register_training_component

DISTANCE_DTYPES = ("float16", "float32", "float64")
FP16_ROWS_PER_CHUNK = 64
OPTIMUM_RTOL = 1e-12  # a permutation this close to the float64 optimum's total is one (ties)  # float16 differences are (rows, B, D): bounded for paper batches


def pairwise_l2(x0, noise, *, distance_dtype: str = "float32", scale: float = 1.0):
    """(B, B') L2 distances between the flattened x0 rows and noise rows, computed in
    `distance_dtype` on scale * x0 and scale * noise. float16 follows the seed: the
    difference and its norm in float16 (torch.cdist has no float16 kernel on CPU);
    float32 / float64 use torch.cdist."""
    import torch

    if distance_dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}")
    dtype = getattr(torch, distance_dtype)
    a, b = x0.flatten(1).to(dtype), noise.flatten(1).to(dtype)
    if scale != 1.0:
        a, b = scale * a, scale * b
    if distance_dtype != "float16":
        return torch.cdist(a, b)
    return torch.cat([torch.linalg.vector_norm(a[i:i + FP16_ROWS_PER_CHUNK, None] - b[None], dim=2)
                      for i in range(0, len(a), FP16_ROWS_PER_CHUNK)])


def assignment(x0, noise, *, distance_dtype: str = "float32", scale: float = 1.0):
    """The column (noise index) assigned to each image: linear_sum_assignment over the
    pairwise L2 distances (Hungarian method; minimal total distance)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    distances = pairwise_l2(x0, noise, distance_dtype=distance_dtype, scale=scale)
    # scipy runs on the CPU: distances computed on a GPU (the seed's) come over first
    _, columns = linear_sum_assignment(distances.float().cpu().numpy() if distance_dtype == "float16"
                                       else distances.cpu().numpy())
    return torch.from_numpy(columns)


def assign_noise(x0, noise, *, distance_dtype: str = "float32", scale: float = 1.0):
    """Noise permuted so the total image-noise L2 distance is minimal."""
    return noise[assignment(x0, noise, distance_dtype=distance_dtype, scale=scale)]


def nearest_of_k(x0, candidates, *, distance_dtype: str = "float32"):
    """candidates (B, k, ...): for each image the candidate nearest to it in L2 (computed in
    `distance_dtype`; the seed's SD code uses float16)."""
    import torch

    dtype = getattr(torch, distance_dtype)
    distances = torch.linalg.vector_norm(candidates.flatten(2).to(dtype) - x0.flatten(1).to(dtype)[:, None], dim=2)
    best = distances.argmin(dim=1)
    return candidates[torch.arange(len(x0), device=best.device), best]


def assignment_agreement(batches, noises, *, distance_dtype: str, scale: float = 1.0,
                         exact: str = "float64") -> dict:
    """How often `distance_dtype`'s assignment equals the exact one over (x0, noise) batches:
    the fraction of batches with the same permutation, of images paired with the same noise,
    of batches whose permutation is an exact optimum (its exact total within OPTIMUM_RTOL of
    the best: repeated images make ties, any of which is optimal), and the relative excess of
    its exact total distance."""
    import torch

    same_batch, same_rows, excess = [], [], []
    for x0, noise in zip(batches, noises):
        cheap = assignment(x0, noise, distance_dtype=distance_dtype, scale=scale)
        best = assignment(x0, noise, distance_dtype=exact, scale=scale)
        d = pairwise_l2(x0, noise, distance_dtype=exact, scale=scale)
        rows = torch.arange(len(x0))
        same_batch.append(bool(torch.equal(cheap, best)))
        same_rows.append(float((cheap == best).double().mean()))
        excess.append(float(d[rows, cheap].sum() / d[rows, best].sum() - 1.0))
    n = len(same_batch)
    optimal = sum(e <= OPTIMUM_RTOL for e in excess) / n
    return {"optimal": optimal, "distance_dtype": distance_dtype, "exact_dtype": exact, "scale": scale, "batches": n,
            "batch_size": int(len(batches[0])) if n else 0,
            "same_permutation": sum(same_batch) / n, "same_pairs": sum(same_rows) / n,
            "excess_total_distance": sum(excess) / n, "max_excess_total_distance": max(excess)}


@dataclass(frozen=True)
class AssignmentParams:
    distance_dtype: str = "float32"  # the seed's SD code: float16
    scale: float = 1.0               # the seed's SD code: 0.1 (on the VAE-scaled latents and the noise)

    def __post_init__(self):
        if self.distance_dtype not in DISTANCE_DTYPES:
            raise ValueError(f"distance_dtype must be one of {list(DISTANCE_DTYPES)}, got {self.distance_dtype!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


@register_training_component("immiscible", parts=("pairing",), params=AssignmentParams)
def immiscible(params: AssignmentParams, alphas_cumprod):
    """Immiscible Diffusion: linear assignment between images and noise per batch."""
    def pair(x0, generator):
        import torch

        # drawn from the (CPU) generator, then put beside x0: a no-op on the CPU, so the embedded
        # runs are unchanged; on a GPU the distances are computed there, as the seed does
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return assign_noise(x0, noise, distance_dtype=params.distance_dtype, scale=params.scale)
    return {"pairing": NoisePairing(pair, f"linear assignment, {params.distance_dtype} distances (immiscible)")}


@dataclass(frozen=True)
class KNNParams:
    k: int = 4  # 64 in the paper's Stable Diffusion runs, 4 for flow matching
    distance_dtype: str = "float32"  # the seed's SD code: float16

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"immiscible_knn needs k >= 1, got {self.k}")
        if self.distance_dtype not in DISTANCE_DTYPES:
            raise ValueError(f"distance_dtype must be one of {list(DISTANCE_DTYPES)}, got {self.distance_dtype!r}")


@register_training_component("immiscible_knn", parts=("pairing",), params=KNNParams)
def immiscible_knn(params: KNNParams, alphas_cumprod):
    """Immiscible Diffusion, KNN variant: the nearest of k noises per image."""
    def pair(x0, generator):
        import torch

        candidates = torch.randn((x0.shape[0], params.k, *x0.shape[1:]), generator=generator).to(x0.device)
        return nearest_of_k(x0, candidates, distance_dtype=params.distance_dtype)
    return {"pairing": NoisePairing(pair, f"nearest of {params.k}, {params.distance_dtype} distances (immiscible KNN)")}
