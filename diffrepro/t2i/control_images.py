"""Control images for T-Stitch with ControlNet at paper scale: one per MS-COCO caption, made
from that caption's own val2014 image by the preprocessor the ControlNet was trained for.

NVlabs/T-Stitch's SDXL scripts steer one demo image each and publish pictures, no numbers; to
score FID and CLIP over the captions every prompt needs a control image, and the natural one is
its own photograph's (as ControlNet evaluations on COCO do). The preprocessing is the scripts':

- canny (sdxl_canny.py): cv2.Canny(np.array(image), 100, 200) on the RGB image at its own size,
  stacked to three channels;
- dpt_depth (sdxl_depth.py, get_depth_map): DPT's image processor and predicted_depth (autocast
  on a GPU, as the script), bicubic to size x size, min-max to [0, 1] per image, x 255 into uint8,
  three channels (transformers' DPTImageProcessor: the script's DPTFeatureExtractor is its old name);
- openpose (sdxl_pose.py): controlnet_aux's OpenposeDetector with its defaults (body only,
  detect_resolution 512, image_resolution 512). Only the body model is loaded: the call never
  uses the hand or face models that from_pretrained also loads.

Each pipeline call then resizes the control image to the generated size with PIL's default
filter, as the scripts' `image.resize((1024, 1024))` (done by the method, not stored here).

Rule control_images writes them once for every setting that samples with them: a zip of PNGs
(index.png, stored, fixed timestamps: byte-identical across runs) with a manifest naming the
detector, its weights' sha256 and every image's sha256, which readers verify.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_path, read_json, sha256_file

MANIFEST = "manifest.json"
FORMAT = 1
DETECTORS = ("canny", "dpt_depth", "openpose")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ControlImagesChanged(RuntimeError):
    pass


def canny(image, low_threshold: int = 100, high_threshold: int = 200):
    """sdxl_canny.py: Canny edges of the RGB image (OpenCV takes the strongest channel's
    gradient), white on black, as a three-channel PIL image of the input's size."""
    import cv2
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low_threshold, high_threshold)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def dpt_depth(images: Sequence, estimator, processor, size: int, device) -> list:
    """sdxl_depth.py's get_depth_map for a batch: one normalised depth image per input."""
    import torch
    from PIL import Image

    device = torch.device(device)
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values
    autocast = torch.autocast("cuda") if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        depth = estimator(pixels.to(device)).predicted_depth
    depth = torch.nn.functional.interpolate(depth.unsqueeze(1), size=(size, size), mode="bicubic",
                                            align_corners=False)
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    depth = (depth - low) / (high - low)
    rgb = torch.cat([depth] * 3, dim=1).permute(0, 2, 3, 1).float().cpu().numpy()
    return [Image.fromarray((each * 255.0).clip(0, 255).astype(np.uint8)) for each in rgb]


def openpose_detector(body_weights: str | Path, device):
    """controlnet_aux's OpenposeDetector with the body model only (what its default call uses).
    Body loads the .pth with torch.load, which defaults to weights_only=True since torch 2.6 (the
    pinned torch is newer): no pickled code runs; the file's sha256 is checked by the caller."""
    from controlnet_aux.open_pose import Body, OpenposeDetector

    return OpenposeDetector(Body(str(body_weights)).to(device))


def openpose(image, detector, detect_resolution: int = 512, image_resolution: int = 512):
    """sdxl_pose.py: `openpose(image)`, the skeleton drawn on black at image_resolution."""
    return detector(image.convert("RGB"), detect_resolution=detect_resolution, image_resolution=image_resolution,
                    include_body=True, include_hand=False, include_face=False, output_type="pil")


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_control_zip(path: str | Path, images: dict[int, bytes], manifest: dict) -> None:
    """The PNGs (index -> bytes) and the manifest with their sha256, atomically, byte-identical
    for identical inputs (sorted members, fixed timestamps, no compression of PNGs)."""
    manifest = {**manifest, "format": FORMAT,
                "images": {str(i): hashlib.sha256(images[i]).hexdigest() for i in sorted(images)}}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(zipfile.ZipInfo(MANIFEST, _ZIP_TIME),
                             json.dumps(manifest, sort_keys=True, indent=1).encode())
            for index in sorted(images):
                archive.writestr(zipfile.ZipInfo(f"{index}.png", _ZIP_TIME), images[index])


class ControlImages:
    """The control images of rule control_images, read by prompt index and verified against
    the manifest's sha256 as they are read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with zipfile.ZipFile(self.path) as archive:
            try:
                self.manifest = json.loads(archive.read(MANIFEST))
            except KeyError:
                raise ControlImagesChanged(f"{self.path} has no {MANIFEST}: not written by rule control_images; "
                                           f"delete it and rerun snakemake") from None

    def __len__(self) -> int:
        return len(self.manifest["images"])

    def __call__(self, indices: Sequence[int]) -> list:
        from PIL import Image

        out = []
        with zipfile.ZipFile(self.path) as archive:
            for index in indices:
                expected = self.manifest["images"].get(str(int(index)))
                if expected is None:
                    raise ValueError(f"{self.path} has no control image for prompt {index} (it holds "
                                     f"{len(self)}): the prompt list and the control images disagree")
                try:
                    data = archive.read(f"{int(index)}.png")
                except (zipfile.BadZipFile, KeyError):  # a bad CRC-32 or a lost member
                    data = b""
                if hashlib.sha256(data).hexdigest() != expected:
                    raise ControlImagesChanged(f"{self.path}: control image {index} does not match its sha256 in "
                                               f"the manifest (a corrupted file); delete {self.path} and rerun snakemake")
                with Image.open(io.BytesIO(data)) as image:
                    out.append(image.convert("RGB"))
        return out


def _detector_weights(spec: dict, *, config_key: str, allow_downloads: bool) -> tuple[Path, dict]:
    """Resolve the depth / pose model (offline-first, as every hub model) and hash its weights."""
    from .hub import resolve_model

    if spec["detector"] == "dpt_depth":
        patterns = ["config.json", "preprocessor_config.json", "model.safetensors"]
        files = ["model.safetensors"]
    else:
        patterns = files = [spec["model"]["file"]]
    model = spec["model"]
    directory = resolve_model(model["id"], config_key=f"{config_key}.model.path", path=model.get("path"),
                              allow_downloads=allow_downloads, allow_patterns=patterns,
                              revision=model.get("revision"))
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"config key {config_key}.model: {directory} has no {missing[0]} "
                                f"(the {spec['detector']} weights; safetensors for DPT)")
    return directory, {f: sha256_file(directory / f) for f in files}


def control_images_job(*, spec: dict, model: str, prompts: str, archive: str, allow_downloads: bool, device: str,
                       output: str, log=print, batch_size: int = 16) -> None:
    """Rule control_images: the control image of every prompt's own COCO image."""
    from ..job_phases import compute
    from .coco import iter_archive_members

    config_key = f"models.{model}.control_images"
    detector = spec["detector"]
    entries = read_json(prompts)
    if any("file_name" not in entry for entry in entries):
        raise ValueError(f"{prompts}: prompts without file_name; {config_key} needs each caption's COCO image")
    manifest = {"model": model, "detector": detector, "spec": spec, "archive": Path(archive).name}
    weights = None
    if detector != "canny":
        directory, manifest["weights"] = _detector_weights(spec, config_key=config_key,
                                                           allow_downloads=allow_downloads)
        if detector == "dpt_depth":
            from transformers import DPTForDepthEstimation, DPTImageProcessor

            processor = DPTImageProcessor.from_pretrained(directory, local_files_only=True)
            weights = DPTForDepthEstimation.from_pretrained(directory, local_files_only=True,
                                                            use_safetensors=True).to(device).eval()
        else:
            weights = openpose_detector(directory / spec["model"]["file"], device)
    images: dict[int, bytes] = {}
    names = [entry["file_name"] for entry in entries]
    pending: list = []

    def flush():
        made = dpt_depth([p for _, p in pending], weights, processor, spec["size"], device)
        for (index, _), image in zip(pending, made):
            images[index] = png_bytes(image)
        pending.clear()

    with compute():
        for entry, picture in zip(entries, iter_archive_members(archive, names)):
            index = int(entry["index"])
            if detector == "canny":
                images[index] = png_bytes(canny(picture, spec["low_threshold"], spec["high_threshold"]))
            elif detector == "openpose":
                images[index] = png_bytes(openpose(picture, weights, spec["detect_resolution"],
                                                   spec["image_resolution"]))
            else:
                pending.append((index, picture))
                if len(pending) == batch_size:
                    flush()
            if (len(images) + len(pending)) % 500 == 0:
                log(f"{model}: {len(images) + len(pending)} / {len(entries)} control images")
        if pending:
            flush()
    write_control_zip(output, images, manifest)
    log(f"{model}: {len(images)} {detector} control images -> {output}")
