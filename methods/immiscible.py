"""Immiscible Diffusion (Li et al., NeurIPS 2024, arXiv 2406.12303; code
yhli123/Immiscible-Diffusion): pair each image with nearby noise.

- immiscible: per batch, the L2 distances between the flattened images and a batch of
  Gaussian noise; scipy's linear_sum_assignment (rows images, columns noise) gives the
  pairing, and the noise is permuted. Timesteps are drawn independently of it.
- immiscible_knn ("improved" variant): k noises per image, keep the nearest one.

The reference code computes distances in float16 on VAE latents across all GPUs' batches;
here they are float32 on the suite's pixels over the one batch a job trains on.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.training_methods import NoisePairing, register_training_component


def assign_noise(x0, noise):
    """Noise permuted so the total image-noise L2 distance is minimal (Hungarian method)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    distances = torch.cdist(x0.flatten(1).float(), noise.flatten(1).float())
    _, columns = linear_sum_assignment(distances.numpy())
    return noise[torch.from_numpy(columns)]


def nearest_of_k(x0, candidates):
    """candidates (B, k, ...): for each image the candidate nearest to it in L2."""
    import torch

    distances = torch.linalg.vector_norm(candidates.flatten(2) - x0.flatten(1)[:, None], dim=2)
    best = distances.argmin(dim=1)
    return candidates[torch.arange(len(x0)), best]


@register_training_component("immiscible", parts=("pairing",))
def immiscible(params, alphas_cumprod):
    """Immiscible Diffusion: linear assignment between images and noise per batch."""
    def pair(x0, generator):
        import torch

        return assign_noise(x0, torch.randn(x0.shape, generator=generator))
    return {"pairing": NoisePairing(pair, "linear assignment (immiscible)")}


@dataclass(frozen=True)
class KNNParams:
    k: int = 4  # 64 in the paper's Stable Diffusion runs, 4 for flow matching

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"immiscible_knn needs k >= 1, got {self.k}")


@register_training_component("immiscible_knn", parts=("pairing",), params=KNNParams)
def immiscible_knn(params: KNNParams, alphas_cumprod):
    """Immiscible Diffusion, KNN variant: the nearest of k noises per image."""
    def pair(x0, generator):
        import torch

        candidates = torch.randn((x0.shape[0], params.k, *x0.shape[1:]), generator=generator)
        return nearest_of_k(x0, candidates)
    return {"pairing": NoisePairing(pair, f"nearest of {params.k} (immiscible KNN)")}
