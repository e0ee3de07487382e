"""ADM's training loss for a learned-variance model: L_simple + L_vlb (Nichol & Dhariwal 2021).

Written here because diffusers has no training loss for DiT's learned-range variance:
the epsilon MSE trains the mean, and the variational bound, with the mean detached,
trains the variance interpolation that the DDPM sampler uses.
"""

from __future__ import annotations

import math

import torch

from .schedule import linear_betas


class HybridLoss:
    def __init__(self, num_timesteps: int = 1000):
        betas = linear_betas(num_timesteps)
        abar = torch.cumprod(torch.from_numpy(1.0 - betas), 0)
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        post_var = torch.from_numpy(betas) * (1 - abar_prev) / (1 - abar)
        as_f32 = lambda v: v.float()
        self.num_timesteps = num_timesteps
        self.alphas_cumprod = abar.numpy()
        self.sqrt_abar = as_f32(abar.sqrt())
        self.sqrt_one_minus_abar = as_f32((1 - abar).sqrt())
        self.log_betas = as_f32(torch.from_numpy(betas).log())
        # ADM clips the first posterior variance (0) to the second.
        self.post_log_var = as_f32(torch.cat([post_var[1:2], post_var[1:]]).log())
        self.post_coef_x0 = as_f32(torch.from_numpy(betas) * abar_prev.sqrt() / (1 - abar))
        self.post_coef_xt = as_f32((1 - abar_prev) * torch.from_numpy(1.0 - betas).sqrt() / (1 - abar))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _b(self.sqrt_abar, t) * x0 + _b(self.sqrt_one_minus_abar, t) * noise

    def __call__(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor, noise: torch.Tensor, mse_weights: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict]:
        """`mse_weights` (one per sample) weight the epsilon-MSE only, as the P2 and SpeeD
        code do; the variance's VLB term stays unweighted."""
        c = x0.shape[1]
        eps, var_interp = model_output[:, :c], model_output[:, c:]
        mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))

        # Variational bound with a frozen mean: only the variance learns from it.
        eps_frozen = eps.detach()
        x0_pred = (x_t - _b(self.sqrt_one_minus_abar, t) * eps_frozen) / _b(self.sqrt_abar, t)
        model_mean = _b(self.post_coef_x0, t) * x0_pred + _b(self.post_coef_xt, t) * x_t
        frac = (var_interp + 1) / 2
        model_log_var = frac * _b(self.log_betas, t) + (1 - frac) * _b(self.post_log_var, t)
        true_mean = _b(self.post_coef_x0, t) * x0 + _b(self.post_coef_xt, t) * x_t
        true_log_var = _b(self.post_log_var, t)
        kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        weighted = mse if mse_weights is None else mse_weights.to(mse) * mse
        loss = (weighted + vb).mean()
        return loss, {"mse": mse.mean().item(), "vb": vb.mean().item()}


def _b(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values.to(t.device)[t].view(-1, 1, 1, 1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of 8-bit data in [-1, 1] under a Gaussian integrated over each bin."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return log_probs
