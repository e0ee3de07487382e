"""The engine of LDM U-Nets (method family "ldm"): class-conditional latent-diffusion U-Nets
(diffrepro.models.ldm_unet) behind guidance against a uniform random context, LDM's DDIM with
eta (diffrepro.diffusion.ldm_ddim), class labels. The loop, timing and cost code is the DiT
engine's: only the models, the guidance and the sampler differ.

The first stage: the embedded suite trains its U-Nets on the digits' pixels, so the "latents"
are the images and the first stage is the identity (LDM's IdentityFirstStage). A latent suite
with a VAE record decodes through diffrepro.decoder, with the record's scale (LDM's
scale_factor; 1.0 for cin-ldm-vq-f8) and uint8 rule; T-Stitch's LDMs decode with the VQ-f8
autoencoder converted from the authors' checkpoint (diffrepro.models.vq_first_stage).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import load_checkpoint
from ..diffusion.ldm_ddim import LDMDDIMSampler
from ..diffusion.random_context_guidance import RandomContextGuidedDenoiser
from ..io import read_json
from ..models.ldm_unet import ClassConditionalLDM, LDMUNetConfig, build_ldm_unet
from ..validation import schema_defaults
from .denoiser import AUTOCAST_DTYPES, DenoiserEngine, pixels_to_uint8

# the `ldm` config section's keys that change the samples (with the compute options)
LDM_SAMPLING_KEYS = ("steps", "eta", "cfg_scale", "linear_start", "linear_end")


def load_ldm_unet(path: str | Path, model_config: dict) -> ClassConditionalLDM:
    model = build_ldm_unet(model_config)
    model.load_state_dict(load_checkpoint(path), strict=True)
    return model.eval().requires_grad_(False)


def ldm_sampler(sampling: dict) -> LDMDDIMSampler:
    return LDMDDIMSampler(sampling["steps"], eta=sampling["eta"], linear_start=sampling["linear_start"],
                          linear_end=sampling["linear_end"])


class LDMEngine(DenoiserEngine):
    family = "ldm"

    @classmethod
    def load(cls, *, checkpoints, model_configs, sampling, device, vae_info=None, prompts_path=None):
        sampling = {**schema_defaults("compute"), **sampling}
        denoisers = {}
        for role, path in checkpoints.items():
            model = load_ldm_unet(path, model_configs[role]).to(device)
            if sampling["compile"]:
                model = torch.compile(model)
            denoisers[role] = RandomContextGuidedDenoiser(model, sampling["cfg_scale"],
                                                          autocast=AUTOCAST_DTYPES[sampling["precision"]])
        config = LDMUNetConfig(**next(iter(model_configs.values())))
        shape = (config.in_channels, config.image_size, config.image_size)
        to_images, decoder = pixels_to_uint8, None
        if vae_info is None and config.in_channels not in (1, 3):
            raise ValueError(f"{config.in_channels}-channel LDM samples are latents and need a first stage to "
                             f"decode them: add a `decoder` to the config (T-Stitch's VQ-f8: "
                             f"config/paper/tstitch_ldm.yaml). Pixel-space models (1 or 3 channels) need none.")
        if vae_info is not None:
            from ..decoder import decode_to_uint8, load_vae

            decoder = read_json(vae_info)
            vae = load_vae(decoder, device)
            rule = decoder.get("to_uint8", "dit")  # vae.json records of older builds have no rule: DiT's
            to_images = lambda latents: decode_to_uint8(vae, latents, decoder["scale"], to_uint8=rule)  # noqa: E731
        return cls(denoisers, shape, config.n_classes, sampling, device, to_images, decoder)

    def steps(self, setting) -> int:
        return self.sampling["steps"]

    def sampler_for(self, setting):
        return ldm_sampler(self.sampling)
