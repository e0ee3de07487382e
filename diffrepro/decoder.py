"""The VAE that turns latent samples into images (DiT: stabilityai/sd-vae-ft-ema; T-Stitch's
LDMs: CompVis' VQ-f8 autoencoder).

Loaded through diffusers from a local directory or the Hugging Face cache, or (a decoder with a
`source`) converted once from the authors' taming-layout checkpoint into a diffusers VQModel
directory (diffrepro.models.vq_first_stage). Rule `fetch_vae` resolves it once (downloading only
when the config allows) and records the weights' sha256; sampling jobs load that directory and
verify the hash, so every shard decodes with the same VAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoints import verify
from .download import HUB_OFFLINE_ENV, offline_reason
from .finite import nonfinite_rows
from .io import sha256_file, write_json

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
UINT8_RULES = ("dit", "ldm")  # how decoded pixels in [-1, 1] become uint8 (decode_to_uint8)


class ModelUnavailable(RuntimeError):
    pass


def _unavailable(model: str, why: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"VAE {model!r} is not available: {why}. Either let the workflow download it "
        f"(config `allow_downloads: true`, with network), or fetch it on a machine with network "
        f"(`huggingface-cli download {model} --local-dir DIR`, or diffusers' "
        f"AutoencoderKL.from_pretrained('{model}').save_pretrained(DIR)), copy DIR here and set "
        f"the config key `decoder.path: DIR`.")


def resolve_vae(decoder: dict, allow_downloads: bool) -> Path:
    """The directory holding the VAE's config.json and safetensors weights."""
    model = decoder["model"]
    if decoder.get("path"):
        directory = Path(decoder["path"]).expanduser().resolve()
        if not (directory / "config.json").exists() or not (directory / WEIGHTS_FILE).exists():
            raise _unavailable(model, f"decoder.path {directory} has no config.json and {WEIGHTS_FILE}")
        return directory
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = offline_reason(allow_downloads, HUB_OFFLINE_ENV)
    try:
        directory = snapshot_download(model, allow_patterns=["config.json", WEIGHTS_FILE],
                                      local_files_only=offline is not None)
    except LocalEntryNotFoundError:
        why = (f"it is not in the Hugging Face cache and downloads are off ({offline})" if offline else
               "the download failed and it is not in the Hugging Face cache")
        raise _unavailable(model, why) from None
    except Exception as err:  # network errors, a gated or renamed repository
        raise _unavailable(model, f"the download failed ({type(err).__name__}: {err})") from None
    return Path(directory)


def fetch_vae_job(*, decoder: dict, allow_downloads: bool, output: str, source: str | None = None,
                  lock_path: str | None = None, log=print) -> dict:
    """Record the VAE: `source` is the downloaded first-stage checkpoint of a decoder with a
    `source` entry, converted into a VQModel directory beside `output`."""
    if decoder.get("source"):
        directory = _converted_first_stage(decoder, source, lock_path, Path(output).parent, log)
    else:
        directory = resolve_vae(decoder, allow_downloads)
    info = {"model": decoder["model"], "directory": str(directory), "weights": WEIGHTS_FILE,
            "sha256": sha256_file(directory / WEIGHTS_FILE), "scale": decoder["scale"],
            "to_uint8": decoder.get("to_uint8", "dit")}
    log(f"VAE {info['model']}: {directory} (sha256 {info['sha256']})")
    write_json(output, info)
    return info


def _converted_first_stage(decoder: dict, source: str | None, lock_path: str | None, checkpoints: Path,
                           log) -> Path:
    from .models.vq_first_stage import convert_first_stage

    if source is None:
        raise ValueError(f"decoder {decoder['model']!r} has a `source` but the job got no downloaded file")
    if lock_path is not None:  # the download rule pinned it; check it was not replaced since
        from .download import RemoteFile, fetch

        fetch(RemoteFile(decoder["source"]["file"], decoder["source"]["url"]), source, lock_path,
              allow_downloads=False, log=log)
    directory = checkpoints / f"first_stage-{Path(decoder['source']['file']).stem}"
    log(f"converting {source} (taming VQ layout) -> {directory} (diffusers VQModel)")
    return convert_first_stage(source, decoder["first_stage"], directory)


def load_vae(info: dict, device: torch.device | str = "cpu"):
    """The VAE recorded by fetch_vae_job, after checking its weights are the recorded ones: an
    AutoencoderKL or (a converted LDM first stage) a VQModel, as its config.json names it."""
    import diffusers

    directory = Path(info["directory"])
    verify(directory / info["weights"], info["sha256"])
    class_name = json.loads((directory / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    if class_name not in ("AutoencoderKL", "VQModel"):
        raise ValueError(f"{directory}/config.json: a {class_name} is not a supported first stage "
                         f"(AutoencoderKL or VQModel)")
    vae = getattr(diffusers, class_name).from_pretrained(directory, use_safetensors=True)
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def decode_to_uint8(vae, latents: torch.Tensor, scale: float, chunk: int = 32,
                    to_uint8: str = "dit") -> tuple[np.ndarray, np.ndarray]:
    """((N, H, W, 3) uint8 images, positions of images whose decoded pixels hold a NaN or inf):
    decode z / scale, then, truncating to uint8 (which would turn NaN black: hence the positions),
    "dit": clamp(127.5 x + 128, 0, 255) as DiT's sample_ddp.py; "ldm": clamp((x + 1) / 2, 0, 1)
    * 255 as T-Stitch's LDM sample_imagenet_ddp_t_stitch.py. `chunk` latents at a time: a 256 px
    decode of a whole sampling batch needs several GB of activations."""
    if to_uint8 not in UINT8_RULES:
        raise ValueError(f"to_uint8 must be one of {UINT8_RULES}, got {to_uint8!r}")
    out, nonfinite = [], []
    for start in range(0, len(latents), chunk):
        z = latents[start:start + chunk].to(vae.device, vae.dtype) / scale
        decoded = vae.decode(z).sample.float()
        nonfinite.append(start + nonfinite_rows(decoded))
        if to_uint8 == "ldm":
            images = torch.clamp((decoded + 1.0) / 2.0, 0.0, 1.0) * 255.0
        else:
            images = torch.clamp(127.5 * decoded + 128.0, 0, 255)
        out.append(images.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy())
    return np.concatenate(out), np.concatenate(nonfinite)
