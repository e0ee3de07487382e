"""Hugging Face models of the SD-family paper configs (pipelines, U-Nets, LoRAs), offline-first.

A model comes from a local directory (config key `path`, save_pretrained layout), the
Hugging Face cache, or the hub when downloads are allowed. With downloads off (or
HF_HUB_OFFLINE=1) a missing model fails at once, naming the model id and how to provide it.

A config's hub model (`models.<name>.hub`) is resolved once by rule `fetch_hub_model` into a
record: the local directories and the sha256 of every weight file that will be loaded. Every
sampling job loads from the record and verifies those hashes first, so a changed or corrupted
cache is caught instead of silently producing other images.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import sha256_file

RECORD_FORMAT = 1
DEFAULT_LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


class HubModelUnavailable(RuntimeError):
    pass


class HubModelChanged(RuntimeError):
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
                  allow_downloads: bool = False, allow_patterns: list[str] | None = None,
                  ignore_patterns: list[str] | None = None, revision: str | None = None) -> Path:
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
        return Path(snapshot_download(model_id, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                      revision=revision, cache_dir=os.environ.get("HF_HUB_CACHE"),
                                      local_files_only=downloads_off(allow_downloads)))
    except LocalEntryNotFoundError:
        raise _unavailable(model_id, config_key, "it is not in the Hugging Face cache and downloads are "
                                                 "off (allow_downloads is false or HF_HUB_OFFLINE=1)") from None
    except Exception as err:  # network errors, a gated or renamed repository
        raise _unavailable(model_id, config_key, f"the download failed ({type(err).__name__}: {err})") from None


def _weight_patterns(variant: str | None, scope: str) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for the diffusers weights under `scope` ("*/": every component of
    a pipeline; "unet/": one component; "": a bare model repository): configs, tokenizer files
    and the safetensors of the variant. A pipeline's root-level single-file checkpoints (e.g.
    sd_xl_base_1.0.safetensors) are never fetched."""
    weights = f"{scope}*.{variant}.safetensors" if variant else f"{scope}*.safetensors"
    allow = ["model_index.json", f"{scope}*.json", f"{scope}*.txt", f"{scope}*.model", weights]
    ignore = [] if variant else [f"{scope}*.{v}.safetensors" for v in ("fp16", "bf16", "ema", "non_ema")]
    return allow, ignore


def _weight_files(directory: Path, variant: str | None, scope: str) -> list[Path]:
    if scope == "*/":
        files = [p for p in directory.glob("*/**/*.safetensors")]
    else:
        files = list((directory / scope).glob("*.safetensors"))
    variants = (".fp16.", ".bf16.", ".ema.", ".non_ema.")
    if variant:
        return sorted(p for p in files if f".{variant}." in p.name)
    return sorted(p for p in files if not any(v in p.name for v in variants))


def _resolved(spec: dict, config_key: str, allow_downloads: bool, subfolder: str | None,
              whole_pipeline: bool = False) -> dict:
    """subfolder: the U-Net's folder in the repository (None: the repository is the U-Net)."""
    scope = "*/" if whole_pipeline else (f"{subfolder}/" if subfolder else "")
    allow, ignore = _weight_patterns(spec.get("variant"), scope)
    directory = resolve_model(spec["id"], config_key=f"{config_key}.path", path=spec.get("path"),
                              allow_downloads=allow_downloads, allow_patterns=allow, ignore_patterns=ignore,
                              revision=spec.get("revision"))
    files = _weight_files(directory, spec.get("variant"), scope)
    if not files:
        raise _unavailable(spec["id"], f"{config_key}.path",
                           f"{directory} holds no {spec['variant'] + ' ' if spec.get('variant') else ''}"
                           f"safetensors weights{' under ' + scope if scope else ''} (diffrepro loads "
                           f"safetensors only, never pickles)")
    return {"id": spec["id"], "directory": str(directory), "subfolder": subfolder,
            "variant": spec.get("variant"),
            "files": {str(p.relative_to(directory)): sha256_file(p) for p in files}}


def fetch_hub_model(spec: dict, *, config_key: str, as_pipeline: bool, allow_downloads: bool = False,
                    log=print) -> dict:
    """Resolve a config's hub model and hash its weights: the record rule fetch_hub_model writes.

    spec: {id, pipeline (a diffusers pipeline class), subfolder (default unet), variant?, path?,
    revision?, unet?: {id, subfolder?, variant?, path?} (a U-Net from another repository in place
    of the pipeline's own, e.g. LCM-SDXL), lora?: {id, weight_name?, scale?, path?} (fused into
    the U-Net, e.g. the LCM-LoRA)}. as_pipeline: the whole pipeline (this model is the one a
    method's pipeline is built around), else only its U-Net."""
    record: dict = {"format": RECORD_FORMAT, "pipeline": spec.get("pipeline", "StableDiffusionPipeline"),
                    "as_pipeline": as_pipeline, "unet_subfolder": spec.get("subfolder", "unet")}
    unet_override = spec.get("unet")
    if as_pipeline:
        record["base"] = _resolved(spec, config_key, allow_downloads, None, whole_pipeline=True)
    elif unet_override is None:
        record["base"] = _resolved(spec, config_key, allow_downloads, spec.get("subfolder", "unet"))
    if unet_override is not None:
        record["unet"] = _resolved(unet_override, f"{config_key}.unet", allow_downloads,
                                   unet_override.get("subfolder", "unet"))
    lora = spec.get("lora")
    if lora is not None:
        weight_name = lora.get("weight_name", DEFAULT_LORA_WEIGHTS)
        directory = resolve_model(lora["id"], config_key=f"{config_key}.lora.path", path=lora.get("path"),
                                  allow_downloads=allow_downloads, allow_patterns=[weight_name],
                                  revision=lora.get("revision"))
        if not (directory / weight_name).is_file():
            raise _unavailable(lora["id"], f"{config_key}.lora.path", f"{directory} has no {weight_name}")
        record["lora"] = {"id": lora["id"], "directory": str(directory), "weight_name": weight_name,
                          "scale": float(lora.get("scale", 1.0)),
                          "files": {weight_name: sha256_file(directory / weight_name)}}
    for part in ("base", "unet", "lora"):
        if part in record:
            log(f"{record[part]['id']}: {len(record[part]['files'])} weight file(s) at {record[part]['directory']}")
    return record


def verify_record(record: dict, where: str) -> None:
    """Every weight file of the record still has the hash it had when it was fetched."""
    for part in ("base", "unet", "lora"):
        entry = record.get(part)
        if entry is None:
            continue
        for name, expected in entry["files"].items():
            path = Path(entry["directory"]) / name
            actual = sha256_file(path) if path.is_file() else "missing"
            if actual != expected:
                raise HubModelChanged(
                    f"{path} ({entry['id']}) changed since it was fetched: sha256 {actual}, recorded {expected} "
                    f"in {where}. Delete {where} and rerun snakemake to fetch and pin it again.")


def _unet_from(entry: dict, torch_dtype):
    from diffusers import UNet2DConditionModel

    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    if entry.get("variant"):
        kwargs["variant"] = entry["variant"]
    return UNet2DConditionModel.from_pretrained(entry["directory"], subfolder=entry["subfolder"],
                                                use_safetensors=True, local_files_only=True, **kwargs)


def fuse_lora(unet, lora: dict, loader_class: str) -> None:
    """Fuse a LoRA into the U-Net's weights in place. The pipeline class's loader reads the file
    (it converts the kohya / PEFT key layouts LoRAs are published in); the U-Net then runs as a
    plain U-Net, with no adapter layers left (what fuse_lora + unload_lora_weights give a pipeline)."""
    import diffusers

    loader = getattr(diffusers, loader_class)
    state_dict, alphas = loader.lora_state_dict(lora["directory"], weight_name=lora["weight_name"])
    loader.load_lora_into_unet(state_dict, alphas, unet=unet, adapter_name="fused")
    unet.fuse_lora(lora_scale=lora["scale"])
    unet.unload_lora()


def load_from_record(record: dict, *, as_pipeline: bool | None = None, torch_dtype=None):
    """The pipeline or (as_pipeline False) only the U-Net of a fetch_hub_model record; by
    default what the record was fetched as. A LoRA is fused into the U-Net either way."""
    import diffusers

    as_pipeline = record["as_pipeline"] if as_pipeline is None else as_pipeline
    if as_pipeline and not record["as_pipeline"]:
        raise ValueError(f"{record['base']['id']} was fetched as a U-Net only; it cannot provide a pipeline")
    if "unet" in record:
        unet = _unet_from(record["unet"], torch_dtype)
    elif not as_pipeline:
        unet = _unet_from({**record["base"], "subfolder": record["unet_subfolder"]}, torch_dtype)
    pipeline = None
    if as_pipeline:
        base = record["base"]
        kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if base.get("variant"):
            kwargs["variant"] = base["variant"]
        if "unet" in record:
            kwargs["unet"] = unet
        pipeline = getattr(diffusers, record["pipeline"]).from_pretrained(
            base["directory"], use_safetensors=True, local_files_only=True, **kwargs)
        unet = pipeline.unet
    if "lora" in record:
        fuse_lora(unet, record["lora"], record["pipeline"])
    unet.eval().requires_grad_(False)
    return pipeline if as_pipeline else unet


def load_pipeline(spec: dict, *, config_key: str, allow_downloads: bool = False, torch_dtype=None):
    """A diffusers pipeline from {id, pipeline?, path?, variant?, unet?, lora?}."""
    record = fetch_hub_model(spec, config_key=config_key, as_pipeline=True, allow_downloads=allow_downloads,
                             log=lambda *_: None)
    return load_from_record(record, torch_dtype=torch_dtype)


def load_unet(spec: dict, *, config_key: str, allow_downloads: bool = False, torch_dtype=None):
    """A UNet2DConditionModel from {id, subfolder?, path?, variant?, lora?} (e.g. nota-ai/bk-sdm-tiny)."""
    record = fetch_hub_model(spec, config_key=config_key, as_pipeline=False, allow_downloads=allow_downloads,
                             log=lambda *_: None)
    return load_from_record(record, torch_dtype=torch_dtype)


def fetch_hub_model_job(*, spec: dict, model: str, as_pipeline: bool, allow_downloads: bool, output: str,
                        log=print) -> None:
    """Rule fetch_hub_model: resolve (download if allowed) and pin a config's hub model."""
    from ..io import write_json

    record = fetch_hub_model(spec, config_key=f"models.{model}.hub", as_pipeline=as_pipeline,
                             allow_downloads=allow_downloads, log=log)
    write_json(output, record)


def unet_config(record: dict) -> dict:
    """The U-Net's diffusers config from a fetch record's directory (no weights are read)."""
    from diffusers import UNet2DConditionModel

    entry = record.get("unet") or {**record["base"], "subfolder": record["unet_subfolder"]}
    config = UNet2DConditionModel.load_config(entry["directory"], subfolder=entry["subfolder"], local_files_only=True)
    return {k: v for k, v in config.items() if not k.startswith("_")}
