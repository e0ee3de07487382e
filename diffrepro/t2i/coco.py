"""MS-COCO val2014 for the text-to-image paper configs: the prompts (one caption per image) and
the FID reference batch of the real images.

Both read the official archives as downloaded (annotations_trainval2014.zip, val2014.zip)
without unpacking them. The reference batch has the ADM evaluator's layout (arr_0: images for
precision/recall; mu/sigma/mu_s/sigma_s: statistics over every reference image), so the ADM
scoring backend (diffrepro.adm_metrics) scores text-to-image samples against it unchanged.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..validation import schema_defaults

CAPTIONS_MEMBER = "annotations/captions_val2014.json"


def read_captions(path: str | Path, member: str = CAPTIONS_MEMBER) -> dict:
    """The captions file, from the annotations zip (or the json itself)."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise ValueError(f"{path} has no {member}: is it MS-COCO's annotations_trainval2014.zip?")
        return json.loads(archive.read(member))


def read_metadata_csv(path: str | Path, count: int | None) -> list[dict]:
    """BK-SDM's prompt list (data/mscoco_val2014_30k/metadata.csv: a header, then file_name,
    caption per row), in its order; the first `count` rows (all: None)."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f)][1:]
    if not rows or any(len(row) < 2 for row in rows):
        raise ValueError(f"{path} is not a prompt list of file_name, caption rows (BK-SDM's metadata.csv)")
    if count is not None and count > len(rows):
        raise ValueError(f"t2i.prompts.count is {count}, but {path} has only {len(rows)} prompts")
    return [{"index": i, "file_name": row[0], "caption": row[1]} for i, row in enumerate(rows[:count])]


def select_prompts(captions: dict, count: int | None, seed: int) -> list[dict]:
    """`count` images (all: None), each with one of its captions, reproducibly: images in a
    seeded random order, and for each the caption a seeded draw picks. Returns
    [{index, image_id, file_name, caption}]; sample i of every setting is generated from prompt i."""
    images = {image["id"]: image["file_name"] for image in captions["images"]}
    by_image: dict[int, list[str]] = {}
    for entry in sorted(captions["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(entry["image_id"], []).append(" ".join(entry["caption"].split()))
    ids = sorted(by_image)
    if count is not None and count > len(ids):
        raise ValueError(f"t2i.prompts.count is {count}, but the captions cover only {len(ids)} images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))[: count if count is not None else len(ids)]
    prompts = []
    for index, k in enumerate(order):
        image_id = ids[int(k)]
        options = by_image[image_id]
        prompts.append({"index": index, "image_id": image_id, "file_name": images[image_id],
                        "caption": options[int(rng.integers(len(options)))]})
    return prompts


def jpeg_roundtrip(image, quality: int | None):
    """The image as a JPEG of this quality would decode (None: unchanged). BK-SDM stores its
    samples and resized reference images as .jpg (PIL's default quality, 75) before FID."""
    if quality is None:
        return image
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def resize_square(image, size: int, mode: str):
    """A PIL image as size x size RGB. "resize": bicubic straight to the square, aspect not
    kept (BK-SDM's change_img_size, for its samples and the val2014 reference); "center_crop":
    the central square, then bicubic."""
    from PIL import Image

    image = image.convert("RGB")
    if mode == "center_crop":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif mode != "resize":
        raise ValueError(f"unknown resize mode {mode!r}: use center_crop or resize")
    return image.resize((size, size), Image.BICUBIC)


def iter_reference_images(archive_path: str | Path, file_names: list[str] | None, size: int, mode: str,
                          batch_size: int = 100, jpeg_quality: int | None = None) -> Iterator[np.ndarray]:
    """uint8 NHWC batches of the archive's images (sorted by name; only `file_names` if given)."""
    from PIL import Image

    with zipfile.ZipFile(archive_path) as archive:
        members = {Path(name).name: name for name in archive.namelist()
                   if name.lower().endswith((".jpg", ".jpeg", ".png"))}
        if file_names is None:
            names = sorted(members)
        else:
            missing = [n for n in file_names if n not in members]
            if missing:
                raise ValueError(f"{archive_path} lacks {len(missing)} of the prompts' images (e.g. {missing[0]}): "
                                 f"is it MS-COCO's val2014.zip?")
            names = list(file_names)
        if not names:
            raise ValueError(f"{archive_path} holds no images")
        batch = []
        for name in names:
            with Image.open(io.BytesIO(archive.read(members[name]))) as image:
                resized = jpeg_roundtrip(resize_square(image, size, mode), jpeg_quality)
                batch.append(np.asarray(resized, dtype=np.uint8))
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


def iter_archive_members(archive_path: str | Path, file_names: Sequence[str]) -> Iterator:
    """The named images of the archive (matched by base name, as iter_reference_images), in the
    given order, as PIL RGB images at their own size; all must be there."""
    from PIL import Image

    with zipfile.ZipFile(archive_path) as archive:
        members = {Path(name).name: name for name in archive.namelist()
                   if name.lower().endswith((".jpg", ".jpeg", ".png"))}
        missing = [n for n in file_names if n not in members]
        if missing:
            raise ValueError(f"{archive_path} lacks {len(missing)} of the prompts' images (e.g. {missing[0]}): "
                             f"is it MS-COCO's val2014.zip?")
        for name in file_names:
            with Image.open(io.BytesIO(archive.read(members[name]))) as image:
                yield image.convert("RGB")


def reference_batch(archive_path: str | Path, extractor, *, size: int, mode: str, keep: int,
                    file_names: list[str] | None = None, batch_size: int = 100, jpeg_quality: int | None = None,
                    log=print) -> dict:
    """The ADM-layout reference arrays: statistics over every image, the first `keep` images."""
    from .. import adm_metrics

    kept, pools, spatials, seen = [], [], [], 0
    for batch in iter_reference_images(archive_path, file_names, size, mode, batch_size, jpeg_quality):
        features = adm_metrics.inception_features(extractor, batch, batch_size=batch_size)
        pools.append(features["pool"])
        spatials.append(features["spatial"])
        if seen < keep:
            kept.append(batch[: keep - seen])
        seen += len(batch)
        log(f"reference images: {seen}")
    pool, spatial = np.concatenate(pools), np.concatenate(spatials)
    if len(pool) < 2:
        raise ValueError(f"{archive_path}: need at least 2 reference images for a covariance")
    mu, sigma = adm_metrics.feature_statistics(pool)
    mu_s, sigma_s = adm_metrics.feature_statistics(spatial)
    return {"arr_0": np.concatenate(kept), "mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s,
            "num_images": np.asarray(len(pool))}


def prompts_job(*, annotations: str, prompts: dict, lock: str, output: str, needed: int = 0, log=print) -> None:
    """Rule coco_prompts: the prompt list every text-to-image sampling job reads; `needed`:
    the most images a method samples (image i is generated from prompt i)."""
    from ..io import write_json

    from ..download import verify_placed

    prompts = {**schema_defaults("t2i", "prompts"), **prompts}
    if "metadata_csv" in prompts:
        verify_placed(annotations, prompts["metadata_csv"], lock, log)
        selected = read_metadata_csv(annotations, prompts.get("count"))
    else:
        verify_placed(annotations, prompts.get("annotations"), lock, log)
        selected = select_prompts(read_captions(annotations, prompts["member"]),
                                  prompts.get("count"), prompts["seed"])
    if len(selected) < needed:
        raise ValueError(f"{annotations} gives {len(selected)} prompts, but a method samples {needed} images; "
                         f"lower its num_samples to at most {len(selected)}")
    log(f"{len(selected)} prompts, e.g. {selected[0]['caption']!r}")
    write_json(output, selected)


def reference_job(*, images: str, reference: dict, lock: str, output: str, inception_weights: str | None,
                  prompts_path: str | None, device="cpu", log=print) -> None:
    """Rule t2i_reference: the ADM-layout reference batch of the real images (all of the
    archive's, or with reference.images: prompts only those the prompts were taken from)."""
    from .. import adm_metrics
    from ..download import verify_placed
    from ..io import read_json, write_npz

    reference = {**schema_defaults("scoring", "reference_images"), **reference}
    verify_placed(images, reference.get("archive"), lock, log)
    file_names = None
    if reference["images"] == "prompts":
        file_names = list(dict.fromkeys(p["file_name"] for p in read_json(prompts_path)))
    extractor = adm_metrics.load_inception(inception_weights, device)
    mode, quality = reference["resize"], reference.get("jpeg_quality")
    arrays = reference_batch(images, extractor, size=reference["size"], mode=mode, keep=reference["keep"],
                             file_names=file_names, jpeg_quality=quality, log=log)
    log(f"reference: {int(arrays['num_images'])} images, {len(arrays['arr_0'])} kept for precision/recall")
    preparation = f"{mode} to {reference['size']} px, PIL bicubic" + (f", JPEG quality {quality}" if quality else "")
    write_npz(output, **arrays, inception_weights_sha256=np.asarray(extractor.weights_sha256),
              preparation=np.asarray(preparation))
