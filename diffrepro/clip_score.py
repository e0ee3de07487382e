"""CLIP score the way BK-SDM reports it: open_clip ViT-g-14 (laion2b_s34b_b88k), cosine.

BK-SDM (Nota-NetsPresso/BK-SDM, src/eval_clip_score.py) builds the model with
``open_clip.create_model_and_transforms('ViT-g-14', pretrained='laion2b_s34b_b88k')``, takes
the third return value (the inference transform) as ``preprocess``, and for every generated
image (a PIL image opened from disk) and its prompt computes

    image_features = model.encode_image(preprocess(image)[None])
    text_features  = model.encode_text(tokenizer([prompt]))       # open_clip.get_tokenizer
    each divided by its own L2 norm, score = text_features @ image_features.T   (fp32, no grad)

and reports the plain mean over the images. The score is a cosine in [-1, 1] (e.g. 0.2958),
not torchmetrics' ``100 * max(cos, 0)``. Here the images are batched; the model has no
batch-dependent layers, so only float rounding (~1e-7) depends on the batch size.

Weights are found offline first: an explicit ``clip.path`` (sha256-checked when a
``clip.sha256`` is given), then the Hugging Face cache (files already there, nothing is
fetched), and only with ``allow_downloads`` (and no ``HF_HUB_OFFLINE``) from the Hub. Weight
files are read with safetensors or ``torch.load(weights_only=True)``; pickles that need
anything beyond tensors and plain containers are refused.

Custom architectures (tests, the embedded smoke suite) pass an open_clip model config dict
(``embed_dim``, ``vision_cfg``, ``text_cfg``) that is registered with open_clip's config
registry under ``ClipSpec.model`` through ``open_clip.add_model_config``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .checkpoints import ChecksumMismatch
from .download import HUB_OFFLINE_ENV, DownloadUnavailable, offline_reason
from .io import sha256_file

DEFAULT_MODEL = "ViT-g-14"
DEFAULT_PRETRAINED = "laion2b_s34b_b88k"
SCORE_NOTE = ("cosine similarity of L2-normalised open_clip image and text embeddings, one per "
              "image, averaged over images (BK-SDM src/eval_clip_score.py); not x100 and not "
              "clamped at 0 like torchmetrics' CLIPScore")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_PROVENANCE_ATTR = "_diffrepro_clip_provenance"


class ClipError(RuntimeError):
    """The CLIP model could not be set up."""


class ClipWeightsUnavailable(ClipError, DownloadUnavailable):
    """The CLIP weights are not on this machine and may not be downloaded."""


class ClipChecksumMismatch(ClipError, ChecksumMismatch):
    """The CLIP weight file does not have the configured sha256."""


class UnsafeCheckpointError(ClipError):
    """A weight file would need unrestricted unpickling (arbitrary code) to load."""


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to score with. ``config`` (an open_clip model config dict) defines a custom
    architecture named ``model``; such a model has no open_clip pretrained tag, so its
    weights must come from ``path`` (the default tag is dropped when a config is given)."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    path: str | None = None
    sha256: str | None = None
    config: Mapping[str, Any] | None = field(default=None, hash=False)
    cache_dir: str | None = None  # Hugging Face hub cache; default: HF_HUB_CACHE / HF_HOME

    def __post_init__(self):
        if not self.model or not isinstance(self.model, str):
            raise ValueError("clip.model must be a non-empty string")
        if self.model.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                f"clip.model {self.model!r}: hf-hub:/local-dir: names are not supported; give the "
                f"architecture name (e.g. {DEFAULT_MODEL}) and set clip.path to the weight file")
        if self.path is not None:
            object.__setattr__(self, "path", os.fspath(self.path))
        if self.sha256 is not None:
            digest = str(self.sha256).strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"clip.sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)
        if self.config is not None:
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in self.config]
            if missing:
                raise ValueError(f"clip.config for {self.model!r} lacks {missing}; an open_clip "
                                 f"model config needs embed_dim, vision_cfg and text_cfg")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.model):
                raise ValueError(f"custom clip.model name {self.model!r} must match "
                                 f"[A-Za-z0-9][A-Za-z0-9._-]* (it becomes a config file name)")
            if self.pretrained == DEFAULT_PRETRAINED:
                object.__setattr__(self, "pretrained", None)
            if self.pretrained is not None:
                raise ValueError(f"clip.pretrained={self.pretrained!r} with a custom clip.config: "
                                 f"custom architectures have no open_clip tags; set clip.path")
            if self.path is None:
                raise ValueError(f"custom clip.config for {self.model!r} needs clip.path "
                                 f"(a safetensors or weights-only .pt/.bin state dict)")
            object.__setattr__(self, "config", json.loads(json.dumps(dict(self.config))))
        if self.path is None and self.pretrained is None:
            raise ValueError(f"clip {self.model!r}: set clip.pretrained (an open_clip tag) or "
                             f"clip.path; refusing to score with random weights")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "ClipSpec":
        """Build from a ``clip:`` config section (keys: the field names)."""
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown clip config keys {unknown}; known: {sorted(known)}")
        return cls(**section)


# --------------------------------------------------------------------------------------
# Where the weights are
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedWeights:
    path: str
    source: str               # "local path", "hugging face cache", "url cache" or "download"
    hf_repo_id: str | None    # the Hub repo open_clip uses for the tag, if any


def hf_hub_cache_dir() -> str:
    """The Hugging Face hub cache as huggingface_hub would pick it, read from the environment
    now (huggingface_hub itself freezes it at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def pretrained_source(model: str, pretrained: str) -> dict:
    """open_clip's registry entry for (model, tag): Hub repo id, candidate file names, url."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ClipError(f"open_clip {open_clip.__version__} has no pretrained tag {pretrained!r} "
                        f"for {model!r}; its tags: {tags or 'none'}. Set clip.pretrained to one "
                        f"of them, or clip.path to a weight file")
    repo_id, candidates = None, []
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" (default file) or "org/repo/file.bin"; it tries
        # a .safetensors sibling first.
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        if filename == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        candidates.append(filename)
    return {"hf_repo_id": repo_id, "filenames": candidates, "url": cfg.get("url") or None,
            "file": cfg.get("file") or None, "cfg": cfg}


def _fetch_hint(source: dict | None) -> str:
    lines = []
    if source and source["hf_repo_id"]:
        repo, files = source["hf_repo_id"], source["filenames"]
        lines += [f"  hf download {repo} {files[0]}",
                  f"  (older clients: huggingface-cli download {repo} {files[0]})",
                  "then either leave it in the Hugging Face cache (HF_HUB_CACHE / HF_HOME) or set",
                  f"  clip.path: /path/to/{files[0]}"]
        if len(files) > 1:
            lines.append(f"({' or '.join(files[1:])} works too; it is loaded weights-only)")
    elif source and source["url"]:
        lines += [f"  fetch {source['url']}", "then set", f"  clip.path: /path/to/"
                  f"{os.path.basename(source['url'])}"]
    else:
        lines += ["  set clip.path: /path/to/the/open_clip/weights.safetensors"]
    lines.append("and, to pin it, clip.sha256: <sha256 of that file> "
                 "(or allow downloads and unset HF_HUB_OFFLINE)")
    return "\n".join(lines)


def resolve_weights(spec: ClipSpec, allow_downloads: bool = False) -> ResolvedWeights:
    """Find the weight file without building any model; downloads only if allowed."""
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ClipWeightsUnavailable(
                f"clip.path {spec.path} does not exist (CLIP model {spec.model} "
                f"{spec.pretrained or ''}). Fix clip.path or remove it to use the cache.")
        return ResolvedWeights(str(path), "local path", None)

    assert spec.pretrained is not None
    source = pretrained_source(spec.model, spec.pretrained)
    if source["file"]:
        return ResolvedWeights(source["file"], "local path", None)
    cache_dir = spec.cache_dir or hf_hub_cache_dir()
    if source["hf_repo_id"]:
        from huggingface_hub import try_to_load_from_cache

        for filename in source["filenames"]:
            hit = try_to_load_from_cache(source["hf_repo_id"], filename, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return ResolvedWeights(hit, "hugging face cache", source["hf_repo_id"])
    elif source["url"]:
        # open_clip keeps url downloads in ~/.cache/clip unless given a cache_dir.
        url_dir = spec.cache_dir or os.path.expanduser("~/.cache/clip")
        candidate = os.path.join(url_dir, os.path.basename(source["url"]))
        if os.path.isfile(candidate):
            return ResolvedWeights(candidate, "url cache", None)

    what = (f"CLIP weights for open_clip {spec.model} pretrained={spec.pretrained}"
            + (f" (Hugging Face repo {source['hf_repo_id']}, files "
               f"{', '.join(source['filenames'])})" if source["hf_repo_id"] else ""))
    reason = offline_reason(allow_downloads, HUB_OFFLINE_ENV)
    if reason is not None:
        raise ClipWeightsUnavailable(
            f"{what} are not in the cache {cache_dir} and downloads are off ({reason}).\n"
            f"Fetch them on a machine with internet:\n{_fetch_hint(source)}")
    import open_clip

    try:
        target = open_clip.download_pretrained(source["cfg"], cache_dir=cache_dir)
    except Exception as exc:  # network, auth, or huggingface_hub's own offline mode
        raise ClipWeightsUnavailable(
            f"{what}: download failed ({type(exc).__name__}: {exc}).\n"
            f"Fetch them by hand:\n{_fetch_hint(source)}") from exc
    if not target or not os.path.isfile(target):
        raise ClipWeightsUnavailable(f"{what}: open_clip returned no file ({target!r})")
    return ResolvedWeights(str(target), "download", source["hf_repo_id"])


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def load_state_dict_safely(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a weights-only torch pickle; never arbitrary code."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if not path.endswith(_WEIGHT_SUFFIXES):
        raise ClipError(f"{path}: expected a .safetensors, .bin, .pt, .pth or .ckpt weight file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights-only unpickler rejects non-tensor globals
        raise UnsafeCheckpointError(
            f"refusing {path}: it cannot be loaded with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Weight files "
            f"must hold only tensors; convert it to safetensors where it was made.") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ClipError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)


def _apply_state_dict(model: torch.nn.Module, state_dict: dict, path: str) -> None:
    """open_clip's key fix-ups for its own checkpoints, then a strict load."""
    from open_clip.model import (convert_to_custom_text_state_dict, resize_pos_embed,
                                 resize_text_pos_embed)

    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state_dict and param is not None and param.ndim != state_dict[key].ndim:
            state_dict[key] = state_dict[key].reshape(param.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None \
            and "logit_scale" in state_dict:
        state_dict["logit_bias"] = torch.zeros_like(state_dict["logit_scale"])
    state_dict.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ClipError(f"{path} does not fit the open_clip architecture "
                        f"(expected an open_clip state dict such as open_clip_model.safetensors, "
                        f"not a transformers CLIPModel one): {exc}") from exc


_registered: set[str] = set()


def _register_config(name: str, config: Mapping[str, Any]) -> None:
    """Make `name` a model in open_clip's config registry: open_clip.add_model_config reads
    <name>.json from a temporary folder into the registry at once. The folder is removed
    right after (a folder kept until exit leaked one per job process that ended without
    running atexit); open_clip's later rescans skip a path that no longer exists and keep
    the registry's entries."""
    import open_clip

    if open_clip.get_model_config(name) == config:
        return
    if name in open_clip.list_models() and name not in _registered:
        raise ClipError(f"custom clip.model {name!r} would replace open_clip's existing config "
                        f"of that name; pick another name")
    with tempfile.TemporaryDirectory(prefix="diffrepro-open_clip-config-") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config, sort_keys=True))
        open_clip.add_model_config(path)  # appends the path and rescans every config path
    _registered.add(name)
    if open_clip.get_model_config(name) != config:
        raise ClipError(f"open_clip did not register the custom config {name!r}")


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No pretrained weights loaded for model")


def load_clip(spec: ClipSpec | None = None, device: str | torch.device = "cpu",
              allow_downloads: bool = False):
    """(model, preprocess, tokenizer), open_clip's own objects: the model in eval mode and fp32,
    preprocess = the inference transform create_model_and_transforms returns (what BK-SDM
    uses), tokenizer = open_clip.get_tokenizer(model). See `provenance(model)`."""
    import open_clip

    spec = spec or ClipSpec()
    # Everything cheap first: an unknown architecture or tag, or missing weights, fail before
    # any hashing, loading or building.
    if spec.config is None and open_clip.get_model_config(spec.model) is None:
        raise ClipError(f"open_clip {open_clip.__version__} has no architecture {spec.model!r}; "
                        f"give clip.config or one of open_clip.list_models()")
    source = pretrained_source(spec.model, spec.pretrained) if spec.pretrained is not None else None
    resolved = resolve_weights(spec, allow_downloads=allow_downloads)
    digest = sha256_file(resolved.path)
    if spec.sha256 is not None and digest != spec.sha256:
        raise ClipChecksumMismatch(
            f"checksum mismatch for CLIP weights {resolved.path}: expected sha256 {spec.sha256} "
            f"(clip.sha256), found {digest}. The file is corrupt or a different checkpoint; "
            f"replace it or correct clip.sha256.")
    state_dict = load_state_dict_safely(resolved.path)
    if spec.config is not None:
        _register_config(spec.model, spec.config)
    preprocess_kwargs = {}
    if source is not None:
        tag_cfg = source["cfg"]
        for ours, theirs in (("image_mean", "mean"), ("image_std", "std"),
                             ("image_interpolation", "interpolation"),
                             ("image_resize_mode", "resize_mode")):
            if tag_cfg.get(theirs) is not None:
                preprocess_kwargs[ours] = tag_cfg[theirs]
    # pretrained=None: open_clip fetches nothing; the towers' own base weights stay off too.
    # Its "initialized randomly" warning is wrong here: the weights are loaded right after.
    root = logging.getLogger()
    root.addFilter(_drop_random_init_warning)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=None, precision="fp32", device="cpu",
            pretrained_image=False, pretrained_text=False, **preprocess_kwargs)
    finally:
        root.removeFilter(_drop_random_init_warning)
    _apply_state_dict(model, state_dict, resolved.path)
    del state_dict
    model = model.to(device).eval()
    model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(spec.model)

    pp = dict(getattr(model.visual, "preprocess_cfg", {}))
    setattr(model, _PROVENANCE_ATTR, {
        "model": spec.model,
        "pretrained": spec.pretrained,
        "custom_config": spec.config,
        "hf_repo_id": source["hf_repo_id"] if source is not None else None,
        "weights_path": os.path.abspath(resolved.path),
        "weights_source": resolved.source,
        "weights_sha256": digest,
        "open_clip_version": open_clip.__version__,
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()},
        "context_length": getattr(tokenizer, "context_length", None),
        "precision": "fp32",
        "score": SCORE_NOTE,
        "implementation": "cosine, not x100",
    })
    return model, preprocess, tokenizer


def fetch_clip_job(*, clip: Mapping[str, Any], allow_downloads: bool, output: str, log=print) -> None:
    """Rule fetch_clip: find (or download, if allowed) a pretrained CLIP's weights before any
    sampling, and record where they are with their sha256, which every score job checks."""
    from .io import write_json

    spec = ClipSpec.from_config({k: v for k, v in clip.items() if k != "train"})
    resolved = resolve_weights(spec, allow_downloads=allow_downloads)
    digest = sha256_file(resolved.path)
    log(f"CLIP {spec.model} {spec.pretrained}: {resolved.path} ({resolved.source}), sha256 {digest}")
    write_json(output, {"model": spec.model, "pretrained": spec.pretrained, "path": os.path.abspath(resolved.path),
                        "sha256": digest, "source": resolved.source})


def provenance(model: torch.nn.Module) -> dict:
    """What to record next to a CLIP score: model, tag, sha256 of the weight file actually
    loaded, open_clip version, preprocessing, and how the score is defined."""
    record = getattr(model, _PROVENANCE_ATTR, None)
    if record is None:
        raise ClipError("this model was not loaded with diffrepro.clip_score.load_clip")
    return json.loads(json.dumps(record))


clip_provenance = provenance


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------

def _to_pil(image: np.ndarray):
    from PIL import Image

    # HxWx3 uint8 -> mode RGB, HxW uint8 -> mode L (preprocess converts it to RGB)
    return Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))


def clip_scores(model, preprocess, tokenizer, images_uint8_nhwc: np.ndarray,
                prompts: Sequence[str], batch_size: int = 32,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Per-image cosine similarity between the image and its prompt (BK-SDM's CLIP score):
    each image goes through `preprocess` as a PIL image, both embeddings are divided by their
    L2 norms, and the score is their dot product. float64 array of shape (N,)."""
    images = np.asarray(images_uint8_nhwc)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 NHWC with 1 or 3 channels, got "
                         f"{images.dtype} {images.shape}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, one per image")
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("every prompt must be a str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    scores = np.empty(len(images), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            pixels = torch.stack([preprocess(_to_pil(images[i])) for i in range(start, stop)])
            tokens = tokenizer(prompts[start:stop])
            image_features = model.encode_image(pixels.to(device)).float()
            text_features = model.encode_text(tokens.to(device)).float()
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            scores[start:stop] = (image_features * text_features).sum(dim=-1).cpu().double().numpy()
    return scores


def clip_score_summary(scores) -> dict:
    """Mean (the reported CLIP score), sample sd, standard error of the mean, and n."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    n = int(values.size)
    if n == 0:
        raise ValueError("no CLIP scores to summarise")
    if not np.all(np.isfinite(values)):
        raise ValueError("CLIP scores contain NaN or inf")
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(n) if n > 1 else math.nan, "n": n}
