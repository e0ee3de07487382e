"""Immiscible Diffusion's Stable Diffusion tables at paper scale: `unet_training.model` is a hub
pipeline (SD-v1.4) and `unet_training.data` a local folder of class images (ImageNet). The jobs
of rules train_unet_method, unet_training_reference, score_unet_training and
time_unet_training on that path; the embedded suite's are in unet_training_study.py.

Scoring follows the seed's generate.py (yhli123/Immiscible-Diffusion, *-stable_diffusion/
generate.py): the EMA U-Net in the pipeline, its scheduler (PNDM for SD-v1.4), 20 steps,
guidance 7.5, prompt i = class name i mod C, images at the training resolution; FID with the
TF-Inception weights pytorch-fid also ports (torch-fidelity's port here), against the reference
folder's images prepared as the training images (resize, centre crop). Differences from the
seed: each image has its own seeded noise (the seed draws all from one stream, seed 42), and
exactly num_samples images (its 390 batches of 128 give 49,920).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from .integrity import write_hashed_json
from .provenance import provenance
from .t2i.class_images import (ClassImages, batch_indices, iterate_batches, reference_indices,
                               scan_class_images, to_model_input)
from .unet_training_study import snapshot_path

DATA_KEY = "unet_training.data"
FID_LABEL = "FID (Inception, TF weights; pytorch-fid protocol)"


def data_settings(data: dict) -> dict:
    """`unet_training.data` with the schema's defaults (for callers outside the workflow)."""
    from .validation import schema_defaults

    reference = {**schema_defaults("unet_training", "data", "reference"), **data.get("reference", {})}
    return {**schema_defaults("unet_training", "data"), **data, "reference": reference}


def training_images(data: dict) -> ClassImages:
    data = data_settings(data)
    return scan_class_images(data["images"], key=f"{DATA_KEY}.images", class_names=data["class_names"],
                             class_names_key=f"{DATA_KEY}.class_names")


def reference_images(data: dict) -> ClassImages:
    """The FID reference's folder (default: the training folder), same layout and classes."""
    data = data_settings(data)
    folder = data["reference"]["images"]
    if folder is None:
        return training_images(data)
    return scan_class_images(folder, key=f"{DATA_KEY}.reference.images")


def load_study_pipeline(record_path: str, device, precision: str):
    """The hub pipeline of a fetch_hub_model record, its weights verified first."""
    from .io import read_json
    from .t2i.hub import load_from_record, verify_record

    record = read_json(record_path)
    verify_record(record, record_path)
    dtype = torch.float16 if precision == "fp16" and torch.device(device).type == "cuda" else torch.float32
    pipeline = load_from_record(record, as_pipeline=True, torch_dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, record


def record_sha256(record: dict) -> str:
    """The hub U-Net's weights hash (what fine-tuning starts from)."""
    files = record["base"]["files"]
    name = next(n for n in sorted(files) if n.startswith(f"{record['unet_subfolder']}/"))
    return files[name]


def train_latent_run(*, record_path: str, data: dict, regime: dict, components: list, seed: int, directory: str,
                     device, precision: str, log=print, stop_after: int | None = None, processes: int = 1) -> dict:
    """Rule train_unet_method on the latent path: one (regime, method, seed), on `device` or,
    with `processes` > 1, data-parallel over that many GPUs of this node (the rule's `gpu`
    resource; diffrepro.t2i.data_parallel)."""
    training_images(data)  # the folder is checked before any model is loaded
    kwargs = dict(record_path=record_path, data=data, regime=regime, components=components, seed=seed,
                  directory=directory, precision=precision, stop_after=stop_after)
    if processes > 1:
        from .t2i.data_parallel import run_data_parallel

        device_type = torch.device(device).type
        log(f"data-parallel over {processes} {'GPUs' if device_type == 'cuda' else 'CPU processes'}; rank 0 logs")
        return run_data_parallel(_train_latent_process, {**kwargs, "log": print}, processes=processes,
                                 device_type=device_type)
    return _train_latent_process(**kwargs, device=device, log=log)


def _train_latent_process(*, record_path, data, regime, components, seed, directory, precision, stop_after, device,
                          log=print, world=None) -> dict:
    from .t2i.data_parallel import World
    from .t2i.latent_training import train_latent_unet

    images = training_images(data)
    settings = data_settings(data)
    pipeline, record = load_study_pipeline(record_path, "cpu", "fp32")  # trained in fp32 (autocast on a GPU)
    scratch = regime.get("init") is None
    iterations = regime["train"]["iterations"]
    summary = train_latent_unet(
        pipeline, images, scratch=scratch, train=regime["train"], components=components, seed=seed,
        output=str(snapshot_path(directory, iterations)),
        snapshots={it: str(snapshot_path(directory, it)) for it in regime["snapshots"] if it != iterations},
        device=device, precision=precision, workers=settings["workers"], resolution=settings["resolution"],
        random_flip=settings["random_flip"], init_sha256=None if scratch else record_sha256(record), log=log,
        stop_after=stop_after, world=world or World())
    summary["hub_model"] = record["base"]["id"]
    return summary


# --------------------------------------------------------------------------------------
# FID reference
# --------------------------------------------------------------------------------------

def reference_job(*, data: dict, inception_weights: str | None, device, output: str, batch_size: int = 100,
                  log=print) -> None:
    """Rule unet_training_reference: Inception statistics (mu, sigma) of the reference images,
    each prepared as a training image (no flip)."""
    from . import adm_metrics
    from .io import write_npz

    settings = data_settings(data)
    images = reference_images(data)
    chosen = reference_indices(images, settings["reference"]["count"], settings["reference"]["seed"])
    extractor = adm_metrics.load_inception(inception_weights, device)
    batches = [chosen[i:i + batch_size] for i in range(0, len(chosen), batch_size)]
    pools = []
    for pixels, _ in iterate_batches(images, batches, resolution=settings["resolution"], workers=settings["workers"]):
        pools.append(adm_metrics.inception_features(extractor, pixels.numpy(), batch_size=batch_size)["pool"])
        log(f"reference images: {sum(len(p) for p in pools)}/{len(chosen)}")
    pool = np.concatenate(pools)
    if len(pool) < 2:
        raise ValueError(f"{images.root}: need at least 2 reference images for a covariance")
    mu, sigma = adm_metrics.feature_statistics(pool)
    write_npz(output, mu=mu, sigma=sigma, num_images=np.asarray(len(pool)),
              inception_weights_sha256=np.asarray(extractor.weights_sha256),
              preparation=np.asarray(f"shorter side to {settings['resolution']} px (bilinear), centre crop"))


# --------------------------------------------------------------------------------------
# Sampling and scoring the snapshots
# --------------------------------------------------------------------------------------

@torch.no_grad()
def sample_class_images(pipeline, prompts: Sequence[str], evaluation: dict, resolution: int, device,
                        indices: Sequence[int]) -> np.ndarray:
    """uint8 NHWC images of these indices: prompt i = prompts[i mod C], image i's noise from
    (evaluation seed, i), the pipeline's scheduler, evaluation steps and guidance."""
    from .diffusion.sampling import initial_noise_and_labels

    channels = pipeline.unet.config.in_channels
    shape = (channels, resolution // pipeline.vae_scale_factor, resolution // pipeline.vae_scale_factor)
    noise, _, _ = initial_noise_and_labels(evaluation["seed"], list(indices), shape, len(prompts))
    images = pipeline([prompts[i % len(prompts)] for i in indices], height=resolution, width=resolution,
                      num_inference_steps=evaluation["steps"], guidance_scale=evaluation["guidance_scale"],
                      latents=noise.to(device, pipeline.unet.dtype), output_type="np", return_dict=False)[0]
    if not np.isfinite(images).all():
        from .finite import TRAINING_ADVICE, NonFiniteError

        raise NonFiniteError(f"images {list(indices)[:3]}... came out NaN or inf; not scored.\n{TRAINING_ADVICE}")
    return (images * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil


def score_snapshot(pipeline, prompts, evaluation: dict, resolution: int, device, extractor, reference: dict,
                   fid_method: str, log=print) -> dict:
    from . import adm_metrics

    pools, logits = [], []
    n = evaluation["num_samples"]
    for start in range(0, n, evaluation["batch_size"]):
        indices = range(start, min(start + evaluation["batch_size"], n))
        features = adm_metrics.inception_features(
            extractor, sample_class_images(pipeline, prompts, evaluation, resolution, device, indices))
        pools.append(features["pool"])
        logits.append(features["logits"])
    pool = np.concatenate(pools)
    mu, sigma = adm_metrics.feature_statistics(pool)
    fid = adm_metrics.frechet_distance(mu, sigma, reference["mu"], reference["sigma"], method=fid_method)
    split = min(adm_metrics.IS_SPLIT_SIZE, n)
    return {"fid": float(fid), "inception_score": float(adm_metrics.inception_score(np.concatenate(logits), split))}


@torch.no_grad()
def validation_loss_by_bin(unet, vae, contexts, pixels, labels, schedule, *, bins: int, seed: int,
                           batch_size: int) -> np.ndarray:
    """Epsilon-MSE of held-out images (VAE posterior means x scaling factor) in `bins` equal
    ranges of t, (t, noise) drawn from `seed` alone: every method and snapshot sees the same."""
    device, dtype = unet.device, unet.dtype
    means = []
    for i in range(0, len(pixels), batch_size):
        x = to_model_input(pixels[i:i + batch_size], torch.zeros(len(pixels[i:i + batch_size]), dtype=torch.bool))
        means.append(vae.encode(x.to(device, vae.dtype)).latent_dist.mean.float())
    latents = torch.cat(means) * vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    T = schedule.config.num_train_timesteps
    width = T // bins
    losses = []
    for b in range(bins):
        t = b * width + torch.randint(width, (len(latents),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        total = 0.0
        for i in range(0, len(latents), batch_size):
            part = slice(i, i + batch_size)
            x = schedule.add_noise(latents[part], noise[part], t[part].to(device))
            pred = unet(x.to(dtype), t[part].to(device), encoder_hidden_states=contexts[labels[part].to(device)]).sample
            total += float(((pred.float() - noise[part]) ** 2).mean()) * len(pred)
        losses.append(total / len(latents))
    return np.asarray(losses)


def score_latent_runs(*, method: str, components: list, record_path: str, data: dict, runs: dict[int, dict[int, str]],
                      evaluation: dict, validation: dict, scoring: dict, reference_path: str,
                      inception_weights: str | None, device, precision: str, config: dict, output: str,
                      log=print) -> dict:
    """Scores of every snapshot of one (regime, method): the rows of the DiT study's tables
    (class accuracy is not measured on this path: the tables print "—")."""
    from . import adm_metrics
    from .checkpoints import load_checkpoint
    from .t2i.latent_training import class_contexts, training_schedule

    settings = data_settings(data)
    images = training_images(data)
    held_out = reference_images(data)
    if len(held_out.classes) != len(images.classes):  # the held-out loss prompts them with the training names
        raise ValueError(f"config key {DATA_KEY}.reference.images: {held_out.root} has {len(held_out.classes)} "
                         f"class folders, the training folder {len(images.classes)}; their class folders must agree")
    pipeline, record = load_study_pipeline(record_path, device, precision)
    pipeline.to(device)
    extractor = adm_metrics.load_inception(inception_weights, device)
    with np.load(reference_path) as ref:
        reference = {"mu": ref["mu"], "sigma": ref["sigma"], "num_images": int(ref["num_images"])}
    schedule = training_schedule(pipeline.scheduler)
    contexts = class_contexts(pipeline, images.prompts, device, pipeline.unet.dtype)
    chosen = reference_indices(held_out, validation["images"], validation["noise_seed"])
    (pixels, labels), = iterate_batches(held_out, [chosen], resolution=settings["resolution"])
    rows, files = [], {"hub_record": record_path, "reference_statistics": reference_path}
    for seed, checkpoints in sorted(runs.items()):
        for iteration, path in sorted(checkpoints.items()):
            began = time.perf_counter()
            state = load_checkpoint(path)
            pipeline.unet.load_state_dict({k: v.to(pipeline.unet.dtype) for k, v in state.items()}, strict=True)
            scores = score_snapshot(pipeline, images.prompts, evaluation, settings["resolution"], device, extractor,
                                    reference, scoring.get("fid_method", "sqrtm"))
            val = validation_loss_by_bin(pipeline.unet, pipeline.vae, contexts, pixels, labels, schedule,
                                         bins=validation["bins"], seed=validation["noise_seed"],
                                         batch_size=evaluation["batch_size"])
            rows.append({"seed": seed, "iteration": iteration, **scores,  # no class accuracy (no classifier)
                         "validation_loss": float(val.mean()), "validation_loss_by_bin": val.tolist()})
            files[f"checkpoint:seed{seed}:iter{iteration}"] = path
            log(f"{method} seed {seed} iteration {iteration}: FID {scores['fid']:.2f} IS {scores['inception_score']:.2f} "
                f"val loss {val.mean():.4f} ({time.perf_counter() - began:.1f} s)")
    result = {
        "method": method, "components": components, "rows": rows, "num_samples": evaluation["num_samples"],
        "evaluation": evaluation, "validation": validation,
        "labels": {"fid": FID_LABEL, "inception_score": "IS (Inception)",
                   "class_accuracy": "class accuracy (not measured at paper scale)",
                   "features": "Inception pool_3 (2048)", "fid_implementation": adm_metrics.implementation()},
        "provenance": provenance(config, seeds={"training_seeds": sorted(runs), "sampling_seed": evaluation["seed"],
                                                "validation_noise_seed": validation["noise_seed"]},
                                 files=files, device=str(device),
                                 extra={"fid_implementation": adm_metrics.implementation(),
                                        "fid_mode": f"Inception pool_3 vs {reference['num_images']} reference images",
                                        "inception_weights_sha256": extractor.weights_sha256,
                                        "hub_model": record["base"]["id"], "precision": precision,
                                        "num_samples": evaluation["num_samples"]}),
    }
    write_hashed_json(output, result)
    return result


# --------------------------------------------------------------------------------------
# Cost per step and float16 agreement, on VAE latents of the training images
# --------------------------------------------------------------------------------------

def time_latent_pairings(*, methods: dict[str, list], baseline: str, record_path: str, data: dict, regime: dict,
                         batch_sizes: Sequence[int], repeats: int, agreement_batches: int, device, precision: str,
                         config: dict, output: str, log=print) -> dict:
    """Per method: the pairing's time against batch size and one whole training step (the
    regime's recipe, from scratch), round-robin; for the linear-assignment methods how often
    float16 / float32 distances give the float64 optimum, on the latents of real batches."""
    from methods.immiscible import assignment_agreement

    from .t2i.latent_training import encode_latents, make_step
    from .training_methods import parse_entries
    from .training_study import interleaved_costs

    settings = data_settings(data)
    images = training_images(data)
    pipeline, _ = load_study_pipeline(record_path, "cpu", "fp32")
    train = {**regime["train"], "random_flip": settings["random_flip"]}
    from .t2i.latent_training import RECIPE_DEFAULTS

    recipe = {**RECIPE_DEFAULTS, **train}
    generator = torch.Generator().manual_seed(0)
    largest = max(max(batch_sizes), recipe["batch_size"])
    order = batch_indices(len(images), largest, 0, 0, max(agreement_batches, 1))
    steps, first, latent_batches = {}, None, []
    for name, components in methods.items():
        step = make_step(pipeline, scratch=True, recipe=recipe, components=components, seed=0, prompts=images.prompts,
                         device=device, precision=precision)
        if first is None:  # real batches' latents, one image batch in memory at a time
            micro = recipe["micro_batch_size"] or largest
            for x, y in iterate_batches(images, order, resolution=settings["resolution"], workers=settings["workers"]):
                first = (x, y) if first is None else first
                latent_batches.append(encode_latents(step.vae, to_model_input(x, torch.zeros(len(x), dtype=torch.bool)),
                                                     generator, micro).cpu())
        pair = step.pairing.pair if step.pairing is not None else \
            (lambda x0, g: torch.randn(x0.shape, generator=g).to(x0.device))

        def prepare(batch_size, pair=pair):
            noise = pair(latent_batches[0][:batch_size].to(device), generator)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            return noise

        def one_step(step=step):
            x, y = first
            step(0, x[:recipe["batch_size"]], y[:recipe["batch_size"]], generator)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()

        steps[name] = (prepare, one_step)
        one_step()  # warm-up
    costs = interleaved_costs(steps, batch_sizes, repeats, baseline)
    results = {}
    for name, components in methods.items():
        params = next((p for n, p in parse_entries(components) if n == "immiscible"), None)
        agreement = []
        if params is not None:
            xs = [lat[:recipe["batch_size"]] for lat in latent_batches[:agreement_batches]]
            noises = [torch.randn(x.shape, generator=generator) for x in xs]
            dtypes = list(dict.fromkeys([params.get("distance_dtype", "float32"), "float16", "float32"]))
            agreement = [assignment_agreement(xs, noises, distance_dtype=d, scale=params.get("scale", 1.0))
                         for d in dtypes]
        results[name] = {**costs[name], "batch_size": recipe["batch_size"], "assignment_agreement": agreement}
        log(f"{name}: step {results[name]['iteration_ms']:.1f} ms ({results[name]['iteration_vs_baseline']:.3f}x)")
    result = {"methods": results, "baseline": baseline, "repeats": repeats, "device": str(device),
              "threads": torch.get_num_threads(),
              "precision": precision, "provenance": provenance(config, seeds={}, files={"hub_record": record_path})}
    write_hashed_json(output, result)
    return result

