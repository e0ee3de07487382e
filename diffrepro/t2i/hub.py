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

import inspect
import json
import os
import re
from pathlib import Path

from ..download import HUB_OFFLINE_ENV, offline_reason
from ..io import sha256_file
from ..validation import schema_defaults

RECORD_FORMAT = 1
RECORD_PARTS = ("base", "unet", "vae", "lora")  # the weights a record pins


class HubModelUnavailable(RuntimeError):
    pass


class HubModelChanged(RuntimeError):
    pass


def _unavailable(model_id: str, config_key: str, why: str, patterns: list[str] | None = None) -> HubModelUnavailable:
    include = "".join(f" --include '{p}'" for p in patterns or [])
    return HubModelUnavailable(
        f"model {model_id!r} is not available: {why}. Either let the workflow download it (config "
        f"`allow_downloads: true`, with network), or on a machine with network run "
        f"`huggingface-cli download {model_id} --local-dir DIR{include}`, copy DIR here and set the config "
        f"key `{config_key}: DIR`.")


def resolve_model(model_id: str, *, config_key: str, path: str | None = None,
                  allow_downloads: bool = False, allow_patterns: list[str] | None = None,
                  ignore_patterns: list[str] | None = None, revision: str | None = None,
                  hint_patterns: list[str] | None = None) -> Path:
    """The local directory of `model_id` (a diffusers pipeline, a U-Net or a LoRA repository);
    hint_patterns: the files to name in an error's download command (default allow_patterns)."""
    if path:
        directory = Path(path).expanduser().resolve()
        if not directory.is_dir() or not any(directory.iterdir()):
            raise _unavailable(model_id, config_key, f"{config_key} {directory} is not a directory with the model",
                               hint_patterns or allow_patterns)
        return directory
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    off = offline_reason(allow_downloads, HUB_OFFLINE_ENV)  # why downloads are off; None: on
    try:
        # the cache and endpoint (a mirror) as the environment names them now: huggingface_hub
        # reads them once, at import
        return Path(snapshot_download(model_id, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                      revision=revision, cache_dir=os.environ.get("HF_HUB_CACHE"),
                                      endpoint=os.environ.get("HF_ENDPOINT"),
                                      local_files_only=off is not None))
    except LocalEntryNotFoundError as err:
        # huggingface_hub falls back to the cache when the hub cannot be reached or refuses
        why = (f"it is not in the Hugging Face cache and downloads are off ({off})" if off else
               f"the download failed and it is not in the Hugging Face cache ({err})")
        raise _unavailable(model_id, config_key, why, hint_patterns or allow_patterns) from None
    except Exception as err:  # network errors, a gated or renamed repository
        raise _unavailable(model_id, config_key, f"the download failed ({type(err).__name__}: {err})",
                           hint_patterns or allow_patterns) from None


# Components a pipeline is loaded without: the NSFW filter would black out flagged samples (and
# add a CLIP pass to every timed call); BK-SDM and T-Stitch evaluate SD with it off.
SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor")
_VARIANT_TAGS = ("fp16", "bf16", "ema", "non_ema")
# diffusers / transformers weight names: <stem>[.<variant>][-00001-of-00002].safetensors
_WEIGHT_NAME = re.compile(r"^(?P<stem>[^.]+)(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d+-of-\d+)?\.safetensors$")


def _weight_patterns(variant: str | None, scopes: list[str]) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns (huggingface_hub's fnmatch, where * also matches /) for the
    configs, tokenizer files and safetensors of the variant under each scope ("unet/", or ""
    for a bare model repository). Nothing else is fetched: not the other variants, not .bin
    files, not a pipeline's root-level single-file checkpoint."""
    allow, ignore = [], []
    for scope in scopes:
        allow += [f"{scope}*.json", f"{scope}*.txt", f"{scope}*.model"]
        if variant:
            allow += [f"{scope}*.{variant}.safetensors", f"{scope}*.{variant}-*-of-*.safetensors"]
        else:
            allow.append(f"{scope}*.safetensors")
            ignore += [f"{scope}*.{tag}{shard}.safetensors" for tag in _VARIANT_TAGS for shard in ("", "-*-of-*")]
    return allow, ignore


def _weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors of this variant (None: the plain weights) directly in `folder`."""
    def tag(path: Path) -> str | None:
        match = _WEIGHT_NAME.match(path.name)
        return match.group("variant") if match else "?"

    return sorted(p for p in folder.glob("*.safetensors") if tag(p) == variant)


def pipeline_components(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """The component folders model_index.json names (those with a class), less `skip`: {name: class}."""
    index = json.loads((directory / "model_index.json").read_text())
    return {name: value[-1] for name, value in sorted(index.items())
            if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
            and name not in skip}


def has_weights(class_name: str) -> bool:
    """Whether a pipeline component of this class loads weights (tokenizers and schedulers do not)."""
    return not any(word in class_name for word in ("Tokenizer", "Scheduler", "ImageProcessor", "FeatureExtractor"))


def _resolved(spec: dict, config_key: str, allow_downloads: bool, subfolder: str | None,
              whole_pipeline: bool = False, skip: tuple[str, ...] = ()) -> dict:
    """Fetch (or find) and hash a model's weights. subfolder: the U-Net's folder (None: the
    repository is the U-Net); whole_pipeline: every component model_index.json names but `skip`."""
    variant, key = spec.get("variant"), f"{config_key}.path"

    def resolve(allow, ignore=None, hint=None):
        return resolve_model(spec["id"], config_key=key, path=spec.get("path"), allow_downloads=allow_downloads,
                             allow_patterns=allow, ignore_patterns=ignore, revision=spec.get("revision"),
                             hint_patterns=hint)

    if whole_pipeline:
        directory = resolve(["model_index.json"], hint=["model_index.json", *_weight_patterns(variant, ["*/"])[0]])
        if not (directory / "model_index.json").is_file():
            raise _unavailable(spec["id"], key, f"{directory} has no model_index.json: it is not a diffusers pipeline")
        classes = pipeline_components(directory, skip)
        components = list(classes)
    else:
        classes, components = {}, [subfolder or ""]
    allow, ignore = _weight_patterns(variant, [f"{c}/" if c else "" for c in components])
    directory = resolve(["model_index.json", *allow] if whole_pipeline else allow, ignore)
    files = []
    for component in components:
        folder = directory / component if component else directory
        if whole_pipeline and not has_weights(classes[component]):
            # a tokenizer or scheduler: files, no weights (a partial cache must not pass for whole)
            if not folder.is_dir() or not any(folder.iterdir()):
                raise _unavailable(spec["id"], key, f"{folder} is missing or empty: the {classes[component]} "
                                   f"that model_index.json names is not there (an incomplete download?)", allow)
            continue
        if not (folder / "config.json").is_file():
            raise _unavailable(spec["id"], key, f"{folder} has no config.json: no model there"
                               + (" (an incomplete download?)" if whole_pipeline else ""), allow)
        found = _weight_files(folder, variant)
        if not found:
            raise _unavailable(
                spec["id"], key,
                f"{folder} holds no {variant + ' ' if variant else ''}safetensors weights (diffrepro never "
                f"unpickles .bin files; set {config_key}.variant to a variant the repository has, or "
                f"{config_key}.revision to a revision with safetensors, e.g. the hub's conversion pull "
                f"request refs/pr/N, or convert it locally)", allow)
        files += found
    return {"id": spec["id"], "directory": str(directory), "subfolder": subfolder, "variant": variant,
            "components": components if whole_pipeline else None,
            "files": {str(p.relative_to(directory)): sha256_file(p) for p in files}}


def fetch_hub_model(spec: dict, *, config_key: str, as_pipeline: bool, allow_downloads: bool = False,
                    log=print) -> dict:
    """Resolve a config's hub model and hash its weights: the record rule fetch_hub_model writes.

    spec: {id, pipeline (a diffusers pipeline class), subfolder (default unet), variant?, path?,
    revision?, unet?: {id, subfolder?, variant?, path?} (a U-Net from another repository in place
    of the pipeline's own, e.g. LCM-SDXL), vae?: the same for the VAE (the fp16-fix SDXL VAE), lora?: {id, weight_name?, scale?, path?} (fused into
    the U-Net, e.g. the LCM-LoRA)}. as_pipeline: the whole pipeline (this model is the one a
    method's pipeline is built around), else only its U-Net."""
    spec = {**schema_defaults("models", "*", "hub"), **spec}
    record: dict = {"format": RECORD_FORMAT, "pipeline": spec["pipeline"],
                    "as_pipeline": as_pipeline, "unet_subfolder": spec["subfolder"]}
    unet_override, vae_override = spec.get("unet"), spec.get("vae")
    if unet_override is not None:
        unet_override = {**schema_defaults("models", "*", "hub", "unet"), **unet_override}
    if as_pipeline:
        # a U-Net or VAE from another repository replaces the pipeline's own: do not fetch that one
        skip = SKIPPED_COMPONENTS + (("unet",) if unet_override is not None else ()) \
            + (("vae",) if vae_override is not None else ())
        record["base"] = _resolved(spec, config_key, allow_downloads, None, whole_pipeline=True, skip=skip)
        if vae_override is not None:
            vae_override = {**schema_defaults("models", "*", "hub", "vae"), **vae_override}
            record["vae"] = _resolved(vae_override, f"{config_key}.vae", allow_downloads, vae_override["subfolder"])
    elif unet_override is None:
        record["base"] = _resolved(spec, config_key, allow_downloads, spec["subfolder"])
    if unet_override is not None:
        record["unet"] = _resolved(unet_override, f"{config_key}.unet", allow_downloads,
                                   unet_override["subfolder"])
    lora = spec.get("lora")
    if lora is not None:
        lora = {**schema_defaults("models", "*", "hub", "lora"), **lora}
        weight_name = lora["weight_name"]
        directory = resolve_model(lora["id"], config_key=f"{config_key}.lora.path", path=lora.get("path"),
                                  allow_downloads=allow_downloads, allow_patterns=[weight_name],
                                  revision=lora.get("revision"))
        if not (directory / weight_name).is_file():
            raise _unavailable(lora["id"], f"{config_key}.lora.path", f"{directory} has no {weight_name}")
        record["lora"] = {"id": lora["id"], "directory": str(directory), "weight_name": weight_name,
                          "scale": float(lora["scale"]),
                          "files": {weight_name: sha256_file(directory / weight_name)}}
    for part in RECORD_PARTS:
        if part in record:
            log(f"{record[part]['id']}: {len(record[part]['files'])} weight file(s) at {record[part]['directory']}")
    return record


def verify_record(record: dict, where: str) -> None:
    """Every weight file of the record still has the hash it had when it was fetched."""
    for part in RECORD_PARTS:
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


def diffusers_model_from(class_name: str, entry: dict, torch_dtype):
    """A diffusers model class's weights from a record part, or any entry naming a local
    directory (and optionally its subfolder and variant): safetensors only, offline (the record
    or the caller pinned the files)."""
    import diffusers

    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    if entry.get("variant"):
        kwargs["variant"] = entry["variant"]
    return getattr(diffusers, class_name).from_pretrained(entry["directory"], subfolder=entry.get("subfolder"),
                                                          use_safetensors=True, local_files_only=True, **kwargs)


def _unet_from(entry: dict, torch_dtype):
    return diffusers_model_from("UNet2DConditionModel", entry, torch_dtype)


def _vae_from(entry: dict, torch_dtype):
    """The AutoencoderKL of a record's `vae` part (e.g. madebyollin/sdxl-vae-fp16-fix)."""
    return diffusers_model_from("AutoencoderKL", entry, torch_dtype)


def controlnet_from_record(record: dict, torch_dtype=None):
    """The ControlNetModel of a fetch_hub_model record (a repository that is the model itself,
    e.g. diffusers/controlnet-canny-sdxl-1.0: hub.subfolder null)."""
    entry = record.get("unet") or {**record["base"], "subfolder": record.get("unet_subfolder")}
    return diffusers_model_from("ControlNetModel", entry, torch_dtype).eval().requires_grad_(False)


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
        raise ValueError(f"{(record.get('base') or record['unet'])['id']} was fetched as a U-Net only; "
                         f"it cannot provide a pipeline")
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
        if "vae" in record:
            kwargs["vae"] = _vae_from(record["vae"], torch_dtype)
        cls = getattr(diffusers, record["pipeline"])
        if "safety_checker" in inspect.signature(cls.__init__).parameters:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipeline = cls.from_pretrained(base["directory"], use_safetensors=True, local_files_only=True, **kwargs)
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
