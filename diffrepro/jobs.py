"""The body of every workflow rule, as plain functions (importable and testable without
Snakemake). workflow/scripts/*.py only unpack the `snakemake` object and call these."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import numpy as np
import torch

from . import metrics
from .devices import claim_gpu
from .data import real_digits_uint8
from .engines import load_engine
from .engines.denoiser import steps_for
from .finite import (METRIC_ADVICE, NonFiniteError, describe_positions, nonfinite_rows,
                     refuse_nonfinite_metrics)
from .integrity import read_verified_json, read_verified_npz, write_hashed_json, write_hashed_npz
from .job_phases import compute
from .io import read_json, write_json
from .validation import schema_defaults
from .methods import get_method
from .provenance import provenance


def configure_runtime(threads: int, allow_downloads: bool = False) -> None:
    """Torch threads from the rule's `threads`; no hub downloads unless the user opted in."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, int(threads)))
    # numpy's BLAS threads fight torch's for the same cores (a 64x64 eigh ran ~50x slower).
    threadpool_limits(1, user_api="blas")
    if not allow_downloads:
        os.environ["HF_HUB_OFFLINE"] = "1"


# --------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------

def job_device(sampling: dict, device: str | None = None) -> torch.device:
    """The device this job pins: `compute.device` ("auto": a GPU if one is visible, else the
    CPU). Also applies the TF32 flag, which provenance records."""
    sampling = {**schema_defaults("compute"), **sampling}
    name = device or sampling["device"]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config compute.device is 'cuda' but no GPU is visible to this job; "
                           "set compute.device to auto or cpu, or give the job a GPU (resources: gpu=1)")
    tf32 = sampling["tf32"]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return torch.device(f"cuda:{claim_gpu(torch.cuda.device_count())}") if name == "cuda" else torch.device(name)


# --------------------------------------------------------------------------------------
# Sampling for scores
# --------------------------------------------------------------------------------------

def shard_range(num_samples: int, shard: int, num_shards: int) -> range:
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for {num_shards} shards")
    return range(shard * num_samples // num_shards, (shard + 1) * num_samples // num_shards)


def generate(engine, method: str, setting_values: dict, seed: int, indices: Sequence[int],
             batch_size: int, log=print, output: str | None = None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """uint8 NHWC images and labels for these image indices, batch by batch on `engine`
    (diffrepro.engines), and the method's extras: samples in model space and its per-image
    diagnostics and traces. Stops at the first batch with a NaN or inf image (NonFiniteError;
    `output`: the shard file the message names)."""
    spec = get_method(method)
    setting = spec.make_setting(setting_values)
    batches = []
    began = time.perf_counter()
    for start in range(0, len(indices), batch_size):
        batch_indices = list(indices[start:start + batch_size])
        with compute():
            batches.append(engine.run_batch(spec, setting, seed, batch_indices))
        if len(batches[-1].nonfinite):  # stop now: the rest of the shard would be wasted
            raise _nonfinite_images(f"{method} {spec.setting_id(setting)}", batch_indices,
                                    batches[-1].nonfinite, output)
        done = start + len(batches[-1].labels)
        log(f"{method} {spec.setting_id(setting)}: {done}/{len(indices)} images, "
            f"{done / (time.perf_counter() - began):.1f} images/s")
    return (np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]),
            batches[-1].model_steps, _merge_extras([b.extras for b in batches]))


def _nonfinite_images(what: str, batch_indices: list[int], positions, output: str | None) -> NonFiniteError:
    bad = describe_positions([batch_indices[p] for p in positions], len(batch_indices))
    return NonFiniteError(
        f"{what}: {bad} in the batch of images {batch_indices[0]}..{batch_indices[-1]} for "
        f"{f'shard {output}' if output else 'the shard'} came out NaN or inf (the uint8 cast would "
        f"score them as black images); stopped, nothing written.\nCheck the method and its "
        f"checkpoints (e.g. with compute.precision fp32), then rerun.")


def _merge_extras(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """samples, per_image__<name> and trace__<name> over all batches."""
    return {name: _stack_ragged([p[name] for p in parts]) if name.startswith("trace__")
            else np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _stack_ragged(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Stack (images, length) arrays of different lengths, NaN-padding the short ones."""
    longest = max(b.shape[1] for b in blocks)
    return np.concatenate([np.pad(b.astype(np.float64), ((0, 0), (0, longest - b.shape[1])),
                                  constant_values=np.nan) for b in blocks])


def sample_shard(*, method: str, setting_values: dict, checkpoints: dict[str, str],
                 model_configs: dict[str, dict], sampling: dict, seed: int, batch_size: int, output: str,
                 indices: Sequence[int] | None = None, num_samples: int | None = None, shard: int = 0,
                 num_shards: int = 1, log=print, device: str | None = None, vae_info: str | None = None,
                 prompts_path: str | None = None, control_path: str | None = None) -> None:
    """One shard of a setting's samples, for a method of any family: these image `indices`
    (or shard `shard` of `num_shards` over `num_samples` images). `vae_info`: a latent
    denoiser suite's VAE record; `prompts_path`: a text-to-image suite's prompt list;
    `control_path`: its ControlNet's control images."""
    device = job_device(sampling, device)
    engine = load_engine(method, checkpoints=checkpoints, model_configs=model_configs, sampling=sampling,
                         device=device, vae_info=vae_info, prompts_path=prompts_path, control_path=control_path)
    if indices is None:
        indices = shard_range(num_samples, shard, num_shards)
    log(f"device {device}, precision {sampling.get('precision', 'fp32')}, "
        f"tf32 {sampling.get('tf32', False)}, compile {sampling.get('compile', False)}")
    images, labels, steps, extras = generate(engine, method, setting_values, seed, indices, batch_size, log,
                                             output=output)
    meta = {"method": method, "params": setting_values, "model_steps": steps, "seed": seed,
            "sampling": sampling, "checkpoints": checkpoints, "device": str(device), **engine.meta()}
    write_hashed_npz(output, images=images, labels=labels, indices=np.asarray(indices, dtype=np.int64),
                     meta=np.asarray(json.dumps(meta, sort_keys=True)), **extras)


def read_shards(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Merge shards in image-index order; they must come from one method and setting."""
    parts = [_load_finite_shard(p) for p in paths]
    metas = [json.loads(str(p["meta"])) for p in parts]
    if any(m["params"] != metas[0]["params"] or m["method"] != metas[0]["method"] for m in metas):
        raise ValueError(f"shards {list(paths)} come from different methods or settings")
    indices = np.concatenate([p["indices"] for p in parts])
    order = np.argsort(indices)
    if not np.array_equal(indices[order], np.arange(len(indices))):
        raise ValueError(f"shards {list(paths)} do not cover image indices 0..{len(indices) - 1} once each")
    images = np.concatenate([p["images"] for p in parts])[order]
    labels = np.concatenate([p["labels"] for p in parts])[order]
    return images, labels, metas[0]


def _load_finite_shard(path: str):
    """A shard, its hash verified, refused if it holds a NaN or inf (a shard from elsewhere, or from
    before sampling checked): it would be scored as black images or skew the summaries."""
    part = read_verified_npz(path)
    for key in part:
        rows = [] if key.startswith("trace__") else nonfinite_rows(part[key])  # traces: NaN-padded
        if len(rows):
            bad = describe_positions(part["indices"][rows], len(part[key]))
            raise NonFiniteError(f"shard {path}: {key!r} of {bad} holds NaN or inf; not scored.\n"
                                 f"Delete the shard and rerun snakemake to sample it again.")
    return part


def read_shard_extras(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The shards' float samples, per-image diagnostics and traces, in image-index order."""
    parts = [_load_finite_shard(p) for p in paths]
    order = np.argsort(np.concatenate([p["indices"] for p in parts]))
    keys = [k for k in parts[0] if k == "samples" or k.startswith(("per_image__", "trace__"))]
    return {k: (_stack_ragged([p[k] for p in parts]) if k.startswith("trace__")
                else np.concatenate([p[k] for p in parts]))[order] for k in keys}


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "median": float(np.median(values)),
            "min": float(np.min(values)), "max": float(np.max(values))}


def parallel_summary(extras: dict[str, np.ndarray], steps: int) -> dict | None:
    """Iterations, network evaluations and convergence of a method that reports them."""
    if "per_image__parallel_iterations" not in extras:
        return None
    return {"steps": steps,
            "iterations": _stats(extras["per_image__parallel_iterations"]),
            "network_evaluations": _stats(extras["per_image__network_evaluations"]),
            "converged_fraction": float(np.mean(extras["per_image__converged"]))}


def convergence_summary(trace: np.ndarray) -> dict:
    """Per parallel iteration, the median over images of the largest per-step residual;
    only while at least half of the images are still iterating (after that, a median over
    the remaining ones would describe a different population)."""
    running = np.sum(~np.isnan(trace), axis=0)
    keep = running * 2 >= len(trace)
    with np.errstate(all="ignore"):
        median = np.nanmedian(trace[:, keep], axis=0) if keep.any() else np.array([])
    return {"median_residual": [float(v) for v in median],
            "images_running": [int(v) for v in running[keep]]}


def deviation_from(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Final samples against the reference run's, image by image (same noise and labels)."""
    if samples.shape != reference.shape:
        raise ValueError(f"cannot compare samples of shape {samples.shape} with the reference's "
                         f"{reference.shape}: both runs must use the same num_samples")
    diff = np.abs(samples.astype(np.float64) - reference.astype(np.float64))
    per_image = diff.reshape(len(diff), -1).max(axis=1)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "rms": float(np.sqrt(np.mean(diff ** 2))),
            # a pixel off by more than 5% of the [-1, 1] range: a visibly different image
            "images_off_fraction": float(np.mean(per_image > 0.1))}


# --------------------------------------------------------------------------------------
# Metric network and scores
# --------------------------------------------------------------------------------------

def train_classifier_job(*, classifier: dict, output: str, info_output: str, run_output: str,
                         log=print) -> None:
    """The checkpoint and its info, the same bytes for identical runs; the training time
    goes to `run_output` (the run's record)."""
    from .models.classifier import RUN_KEYS, save_classifier, train_digits_classifier

    images, labels = real_digits_uint8()
    model, info = train_digits_classifier(images, labels, **classifier)
    log(f"digits CNN: held-out accuracy {info['heldout_accuracy']:.4f}")
    save_classifier(model, output, info)
    write_json(info_output, {k: v for k, v in info.items() if k not in RUN_KEYS})
    write_json(run_output, {k: info[k] for k in RUN_KEYS})


def reference_stats_job(*, classifier_path: str, output: str) -> None:
    from .models.classifier import load_classifier

    images, _ = real_digits_uint8()
    stats = metrics.reference_statistics(load_classifier(classifier_path), images)
    metrics.save_reference_statistics(output, stats)


ADM_LABELS = {
    "fid": "FID-Inception (ADM evaluator protocol)",
    "sfid": "sFID (ADM)",
    "inception_score": "IS (Inception, ADM)",
    "precision": "precision (ADM, k=3)",
    "recall": "recall (ADM, k=3)",
    "class_accuracy": "class accuracy (not computed)",
    "features": "Inception-v3 pool_3 (torch-fidelity's TF port), 2048-d",
}


def _digits_scores(images, labels, *, classifier_path, reference_path, scoring):
    """(metrics, labels, files, provenance extras, features kept for paired comparisons)."""
    from .models.classifier import load_classifier

    classifier = load_classifier(classifier_path)
    ref = metrics.load_reference_statistics(reference_path)
    features, probs = metrics.classifier_outputs(classifier, images)
    scores = metrics.score_features(features, probs, labels, ref, is_splits=scoring["is_splits"],
                                    bootstrap_reps=scoring["bootstrap_reps"], seed=scoring["seed"])
    extra = {"fid_implementation": metrics.FID_IMPLEMENTATION,
             "fid_mode": "digits-CNN penultimate features vs. all 1797 real digits (uint8)"}
    files = {"classifier": classifier_path, "reference_statistics": reference_path}
    return scores, metrics.metric_labels(), files, extra, features


def _clip_scores(images, labels, config: dict, clip_weights: str | None, prompts: list[str] | None = None,
                 device="cpu", log=print) -> dict:
    """CLIP score (BK-SDM's: mean cosine of image and prompt embeddings) of text-to-image samples;
    the prompts come from the labels: the prompt list's entry, or the embedded suite's class prompt."""
    from .clip_score import ClipSpec, clip_score_summary, clip_scores, load_clip
    from .clip_score import provenance as clip_provenance
    from .t2i.components import digit_prompt

    section = {k: v for k, v in config["clip"].items() if k != "train"}
    if clip_weights is not None and clip_weights.endswith(".json"):  # rule fetch_clip's record
        record = read_json(clip_weights)
        section.update(path=record["path"], sha256=record["sha256"])
    elif clip_weights is not None:
        section["path"] = clip_weights
    model, preprocess, tokenizer = load_clip(ClipSpec.from_config(section), device=device,
                                             allow_downloads={**schema_defaults(), **config}["allow_downloads"])
    texts = [digit_prompt(y) for y in labels] if prompts is None else [prompts[y] for y in labels]
    values = clip_scores(model, preprocess, tokenizer, images, texts, batch_size=256, device=device)
    summary = clip_score_summary(values)
    log(f"CLIP score {summary['mean']:.4f} ± {summary['se']:.4f} ({section['model']})")
    return {"metrics": {"clip_score": summary["mean"], "clip_score_se": summary["se"]},
            "label": f"CLIP score (open_clip {section['model']}, cosine)",
            "provenance": clip_provenance(model)}


def verify_downloads(paths: dict[str, str], scoring: dict, lock_path: str, log=print) -> None:
    """Check downloaded scoring files against the lock (or pin them)."""
    from .download import verify_placed

    for key, path in paths.items():
        verify_placed(path, scoring.get(key), lock_path, log)


def _adm_scores(images, labels, *, reference_path, scoring, device, weights_path):
    """The ADM evaluator's metrics with the TF-ported Inception (diffrepro.adm_metrics)."""
    from . import adm_metrics

    extractor = adm_metrics.load_inception(weights_path, device)
    features = adm_metrics.inception_features(extractor, images)
    scores = adm_metrics.scores_from_features(features, reference_path, extractor,
                                              fid_method=scoring["fid_method"])
    labels = ADM_LABELS
    if scoring["is_protocol"] == "torch_fidelity":
        scores.update(torch_fidelity_inception_score(features["logits"], scoring["is_splits"]))
        scores["provenance"]["is_protocol"] = (f"torch-fidelity isc: {scoring['is_splits']} splits of the "
                                               f"shuffled samples (seed 2020), unbiased logits")
        scores["provenance"]["is_split_size"] = None  # the ADM evaluator's split, not used here
        labels = {**ADM_LABELS, "inception_score": "IS (Inception, torch-fidelity)"}
    ref = metrics.load_reference_statistics(reference_path)
    scores["fid_bootstrap_se"] = metrics.fid_bootstrap_se(
        features["pool"], ref["mu"], ref["sigma"], reps=scoring["bootstrap_reps"], seed=scoring["seed"],
        distance=bootstrap_distance(scoring))
    extra = {"fid_implementation": scores["provenance"]["implementation"],
             "fid_mode": scores["provenance"]["mode"], "adm": scores.pop("provenance")}
    files = {"reference_batch": reference_path, "inception_weights": extra["adm"]["weights_path"]}
    return scores, labels, files, extra, features["pool"]


def torch_fidelity_inception_score(logits: np.ndarray, splits: int) -> dict:
    """IS as torch-fidelity's `fidelity --isc` computes it (BK-SDM's eval_scores.sh): its own
    function, on the same unbiased logits the ADM evaluator uses, split `splits` ways after
    its seeded shuffle, where the ADM evaluator takes consecutive splits of 5,000."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    result = isc_features_to_metric(torch.from_numpy(np.asarray(logits, dtype=np.float64)), splits=splits)
    return {"inception_score": result[KEY_METRIC_ISC_MEAN], "inception_score_std": result[KEY_METRIC_ISC_STD]}


def bootstrap_distance(scoring: dict):
    """The Frechet distance for bootstrap errors: the ADM backend's 2048-d statistics use its
    exact factored form (fast when the resampled covariance has low rank); None: our default."""
    if scoring["backend"] != "adm":
        return None
    from functools import partial

    from .adm_metrics import frechet_distance

    return partial(frechet_distance, method="factored")


def score_setting(*, shards: Sequence[str], reference_path: str, scoring: dict, config: dict,
                  output: str, features_output: str, classifier_path: str | None = None,
                  reference_run: dict | None = None, reference_shards: Sequence[str] = (),
                  reference_features: str | None = None, inception_weights: str | None = None,
                  clip_weights: str | None = None, prompts_path: str | None = None, log=print) -> dict:
    images, labels, meta = read_shards(shards)
    scoring = {**schema_defaults("scoring"), **scoring}
    # CLIP first: a missing or unreadable CLIP fails before the FID work, not after it
    clip_record = None
    # Inception (and CLIP) features in full float32: TF32 would change them
    device = job_device({"device": config["compute"]["device"], "tf32": False})
    if "clip" in config and get_method(meta["method"]).family == "pipeline":
        from .engines.pipeline import read_prompts

        with compute():
            clip_record = _clip_scores(images, labels, config, clip_weights, read_prompts(prompts_path), device, log)
    if scoring["backend"] == "adm":
        verify_downloads({"reference_batch": reference_path, "inception_weights": inception_weights},
                         scoring, config["downloads"]["lock"], log)
        with compute():
            scores, labels_text, files, extra, features = _adm_scores(
                images, labels, reference_path=reference_path, scoring=scoring, device=device,
                weights_path=inception_weights)
    else:
        with compute():
            scores, labels_text, files, extra, features = _digits_scores(
                images, labels, classifier_path=classifier_path, reference_path=reference_path,
                scoring=scoring)
    if clip_record is not None:
        scores.update(clip_record["metrics"])
        labels_text = {**labels_text, "clip_score": clip_record["label"]}
        extra = {**extra, "clip": clip_record["provenance"]}
    # Kept for paired comparisons between settings (same noise and labels row by row).
    write_hashed_npz(features_output, features=features, labels=labels)
    if reference_features is not None:  # SE of FID(this) - FID(reference run), same images
        ref = metrics.load_reference_statistics(reference_path)
        scores["fid_diff_se"] = metrics.paired_fid_difference_se(
            features, read_verified_npz(reference_features)["features"], ref["mu"], ref["sigma"],
            reps=scoring["bootstrap_reps"], seed=scoring["seed"], distance=bootstrap_distance(scoring))
    spec = get_method(meta["method"])
    files.update({f"checkpoint:{role}": path for role, path in meta["checkpoints"].items()})
    setting = spec.make_setting(meta["params"])
    result = {
        "method": meta["method"], "setting": spec.setting_id(setting),
        "params": dataclasses.asdict(setting),
        "metrics": {k: v for k, v in scores.items() if k != "num_samples"},
        "labels": labels_text, "num_samples": scores["num_samples"],
        "model_steps": meta["model_steps"], "network_evaluations": sum(meta["model_steps"].values()),
        "sampling": meta["sampling"],
        "provenance": provenance(config, seeds={"sampling_seed": meta["seed"],
                                                "scoring_seed": scoring["seed"]},
                                 files=files, extra={**extra, "num_samples": scores["num_samples"],
                                                     "sampling_device": meta.get("device", "cpu"),
                                                     "decoder": meta.get("decoder"),
                                                     "text_encoder_sha256": meta.get("text_encoder_sha256")}),
    }
    extras = read_shard_extras(shards)
    parallel = parallel_summary(extras, steps_for(setting, meta["sampling"]))
    if parallel is not None:
        result["parallel"] = parallel
    if "trace__residual" in extras:
        result["convergence"] = convergence_summary(extras["trace__residual"])
    if "per_image__edge_iou" in extras:  # T-Stitch with ControlNet: control fidelity per image
        result["control"] = {"edge_iou": _stats(extras["per_image__edge_iou"])}
    if reference_run is not None:
        ref_spec = get_method(reference_run["method"])
        result["reference"] = {**reference_run, "setting": ref_spec.setting_id(
            ref_spec.make_setting(reference_run["params"]))}
        ref_key = (reference_run["method"], result["reference"]["setting"])
        itself = ref_key == (meta["method"], result["setting"])
        if itself:  # FID(x) - FID(x) is 0 in every bootstrap replicate
            result["metrics"]["fid_diff_se"] = 0.0
        if itself or reference_shards:
            reference_samples = extras if itself else read_shard_extras(reference_shards)
            result["deviation"] = deviation_from(extras["samples"], reference_samples["samples"])
    log(f"{result['method']} {result['setting']}: " + ", ".join(
        f"{name} {scores[name]:.4g}" for name in ("fid", "sfid", "inception_score", "precision",
                                                   "recall", "class_accuracy") if name in scores))
    refuse_nonfinite_metrics(result["metrics"], f"{result['method']} {result['setting']}",
                             f"{output} not written.\n{METRIC_ADVICE}")
    write_hashed_json(output, result)
    return result


def attach_paired_fid_se(records: list[dict], feature_paths: Sequence[str], reference_path: str,
                         *, reps: int, seed: int, distance=None) -> None:
    """Add metrics['fid_diff_se'] where a record lacks it: paired bootstrap SE of FID(setting)
    - FID(its reference), the run named by the record's 'reference' (same noise and labels
    row by row). Score jobs compute it; score files from before they did lack it."""
    if all("fid_diff_se" in r["metrics"] for r in records):
        return
    ref = metrics.load_reference_statistics(reference_path)
    features = {(r["method"], r["setting"]): read_verified_npz(p)["features"]
                for p, r in zip(feature_paths, records)}
    for record in records:
        if "fid_diff_se" in record["metrics"]:
            continue
        key = (record["reference"]["method"], record["reference"]["setting"])
        if key not in features:
            raise ValueError(f"{record['method']} {record['setting']}: its reference {key[0]} "
                             f"{key[1]} is not among the table's settings; add it to the grid")
        record["metrics"]["fid_diff_se"] = metrics.paired_fid_difference_se(
            features[(record["method"], record["setting"])], features[key], ref["mu"], ref["sigma"],
            reps=reps, seed=seed, distance=distance)


def merge_records(score_paths: Sequence[str], timing_paths: Sequence[str]) -> list[dict]:
    """One record per setting: the score file with its row of the table's timing file
    (diffrepro.timing.time_table_settings) under 'timing', with that file's provenance."""
    timings = {}
    for table in map(read_verified_json, timing_paths):
        for row in table["settings"]:
            timings[(row["method"], row["setting"])] = {**row, "provenance": table["provenance"]}
    records = []
    for path in score_paths:
        score = read_score(path)
        timing = timings.get((score["method"], score["setting"]))
        if timing is None:
            raise ValueError(f"no timing result for {score['method']} {score['setting']}")
        records.append({**score, "timing": timing})
    return records


def read_score(path: str) -> dict:
    """A score file, refused if a metric in it is NaN or inf (written elsewhere, or before
    score jobs checked)."""
    score = read_verified_json(path)
    refuse_nonfinite_metrics(score.get("metrics", {}), f"score file {path}", "no table is built from it.\n"
                             "Delete it and rerun snakemake to score the setting again.")
    return score
