"""Hugging Face models of the SD-family paper configs (pipelines, U-Nets, LoRAs), offline-first.

A model comes from a local directory (config key `path`, save_pretrained layout), the
Hugging Face cache, or the hub when downloads are allowed. With downloads off (or
HF_HUB_OFFLINE=1) a missing model fails at once, naming the model id and how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path


class HubModelUnavailable(RuntimeError):
    pass


def downloads_off(allow_downloads: bool) -> bool:
    return not allow_downloads or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def _unavailable(model_id: str, config_key: str, why: str) -> HubModelUnavailable:
    return HubModelUnavailable(
        f"model {model_id!r} is not available: {why}. Either let the workflow download it (config "
        f"`allow_downloads: true`, with network), or on a machine with network run "
        f"`huggingface-cli download {model_id} --local-dir DIR`, copy DIR here and set the config "
        f"key `{config_key}: DIR`.")


def resolve_model(model_id: str, *, config_key: str, path: str | None = None,
                  allow_downloads: bool = False, allow_patterns: list[str] | None = None) -> Path:
    """The local directory of `model_id` (a diffusers pipeline, a U-Net or a LoRA repository)."""
    if path:
        directory = Path(path).expanduser().resolve()
        if not directory.is_dir() or not any(directory.iterdir()):
            raise _unavailable(model_id, config_key, f"{config_key} {directory} is not a directory with the model")
        return directory
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # the cache as the environment names it now (huggingface_hub reads it once, at import)
        return Path(snapshot_download(model_id, allow_patterns=allow_patterns, cache_dir=os.environ.get("HF_HUB_CACHE"),
                                      local_files_only=downloads_off(allow_downloads)))
    except LocalEntryNotFoundError:
        raise _unavailable(model_id, config_key, "it is not in the Hugging Face cache and downloads are "
                                                 "off (allow_downloads is false or HF_HUB_OFFLINE=1)") from None
    except Exception as err:  # network errors, a gated or renamed repository
        raise _unavailable(model_id, config_key, f"the download failed ({type(err).__name__}: {err})") from None


def load_pipeline(spec: dict, *, config_key: str, allow_downloads: bool = False, torch_dtype=None):
    """A diffusers pipeline from {id, class, path?, variant?} (class: e.g. StableDiffusionXLPipeline)."""
    import diffusers

    cls = getattr(diffusers, spec.get("class", "DiffusionPipeline"))
    directory = resolve_model(spec["id"], config_key=f"{config_key}.path", path=spec.get("path"),
                              allow_downloads=allow_downloads)
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if spec.get("variant"):
        kwargs["variant"] = spec["variant"]
    # use_safetensors: never unpickle a hub checkpoint
    return cls.from_pretrained(directory, use_safetensors=True, local_files_only=True, **kwargs)


def load_unet(spec: dict, *, config_key: str, allow_downloads: bool = False, torch_dtype=None):
    """A UNet2DConditionModel from {id, subfolder?, path?, variant?} (e.g. nota-ai/bk-sdm-tiny, unet)."""
    from diffusers import UNet2DConditionModel

    directory = resolve_model(spec["id"], config_key=f"{config_key}.path", path=spec.get("path"),
                              allow_downloads=allow_downloads)
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if spec.get("variant"):
        kwargs["variant"] = spec["variant"]
    return UNet2DConditionModel.from_pretrained(directory, subfolder=spec.get("subfolder", "unet"),
                                                use_safetensors=True, local_files_only=True, **kwargs)
