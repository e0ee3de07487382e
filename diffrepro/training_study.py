"""Training-method runs (SpeeD, Immiscible Diffusion and their baselines) on the embedded
suite: train one (method, seed) from scratch with equal compute, score every saved
checkpoint, time what each method costs per iteration.

Every method trains the same DiT with the same iterations, batch size, optimiser and, for
a given seed, the same initial weights; only how timesteps are drawn, noise is paired
and the MSE is weighted differs (diffrepro.training_methods). The denoisers train on a
fixed split of the digits and their per-timestep validation loss is measured on the
rest; FID / IS / accuracy use the suite's digits-CNN features, fixed noise and labels
shared by every method and checkpoint.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import metrics
from .checkpoints import load_checkpoint
from .data import load_digits_tensors, to_uint8_nhwc
from .diffusion.guidance import GuidedDenoiser
from .diffusion.losses import HybridLoss
from .diffusion.samplers import make_sampler
from .diffusion.sampling import initial_noise_and_labels, sample_loop
from .finite import (METRIC_ADVICE, TRAINING_ADVICE, NonFiniteError, describe_positions, nonfinite_rows,
                     refuse_nonfinite_metrics)
from .integrity import write_hashed_json
from .models.classifier import split_indices
from .models.dit import DiTConfig, build_dit
from .provenance import provenance
from .training import TrainConfig, train_dit
from .training_methods import build_training_method


def snapshot_path(directory: str | Path, iteration: int) -> Path:
    return Path(directory) / f"iter{iteration:07d}.safetensors"


def digits_split(num_images: int, validation: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) of the digits: a seeded split."""
    generator = torch.Generator().manual_seed(validation["split_seed"])
    return split_indices(num_images, validation["fraction"], generator)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

def train_run(*, components: list, model_config: dict, train: dict, seed: int,
              snapshots: Sequence[int], validation: dict, directory: str, log=print,
              stop_after: int | None = None) -> dict:
    """Train one (method, seed); the EMA weights at each snapshot iteration go to
    `directory`. Resumable: a killed job continues from its last saved iteration
    (`stop_after` simulates the kill in tests)."""
    images, labels = load_digits_tensors()
    train_idx, _ = digits_split(len(images), validation)
    loss_fn = HybridLoss()
    method = build_training_method(components, loss_fn.alphas_cumprod)
    config = TrainConfig(**{**train, "seed": seed})
    final = snapshot_path(directory, config.iterations)
    paths = {it: snapshot_path(directory, it) for it in snapshots if it != config.iterations}
    log(f"training method {method.describe()} seed {seed} on {len(train_idx)} digits")
    return train_dit(DiTConfig(**model_config), config, images[train_idx], labels[train_idx],
                     final, log=log, method=method, snapshots=paths, stop_after=stop_after)


# --------------------------------------------------------------------------------------
# Scoring every checkpoint
# --------------------------------------------------------------------------------------

@torch.no_grad()
def validation_loss_by_bin(model, images: torch.Tensor, labels: torch.Tensor, *, bins: int,
                           seed: int, loss_fn: HybridLoss) -> np.ndarray:
    """Unweighted epsilon-MSE in each of `bins` equal ranges of t. Every image is noised once
    per bin, at a t and with noise drawn from `seed` alone, so every method and checkpoint
    sees the same (image, t, noise) triples."""
    generator = torch.Generator().manual_seed(seed)
    width = loss_fn.num_timesteps // bins
    channels = images.shape[1]
    losses = []
    for b in range(bins):
        t = b * width + torch.randint(width, (len(images),), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        eps = model(loss_fn.q_sample(images, t, noise), t, labels)[:, :channels]
        losses.append(((eps - noise) ** 2).mean().item())
    return np.asarray(losses)


@torch.no_grad()
def sample_images(model, evaluation: dict, shape, num_classes: int,
                  what: str = "the model") -> tuple[np.ndarray, np.ndarray]:
    """uint8 samples and labels: the evaluation sampler from fixed per-image noise. NaN or inf
    samples (black after the uint8 cast) raise NonFiniteError naming `what`."""
    denoiser = GuidedDenoiser(model, evaluation["cfg_scale"], evaluation.get("guided_channels", 3))
    sampler = make_sampler(evaluation["sampler"], evaluation["steps"])
    images, labels = [], []
    indices = range(evaluation["num_samples"])
    for start in range(0, len(indices), evaluation["batch_size"]):
        batch = list(indices[start:start + evaluation["batch_size"]])
        noise, y, generators = initial_noise_and_labels(evaluation["seed"], batch, shape, num_classes)
        x, _ = sample_loop(sampler, lambda i, t: ("model", denoiser), noise, y, generators)
        bad = nonfinite_rows(x)
        if len(bad):
            raise NonFiniteError(f"{what}: {describe_positions([batch[p] for p in bad], len(batch))} of the "
                                 f"evaluation batch came out NaN or inf; not scored.\n{TRAINING_ADVICE}")
        images.append(to_uint8_nhwc(x))
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def score_runs(*, method: str, components: list, model_config: dict, runs: dict[int, dict[int, str]],
               evaluation: dict, validation: dict, scoring: dict, classifier_path: str,
               reference_path: str, config: dict, output: str, log=print) -> dict:
    """Scores of every checkpoint of one method: runs = {seed: {iteration: checkpoint}}."""
    from .models.classifier import load_classifier

    classifier = load_classifier(classifier_path)
    ref = metrics.load_reference_statistics(reference_path)
    images, labels = load_digits_tensors()
    _, val_idx = digits_split(len(images), validation)
    loss_fn = HybridLoss()
    shape = (model_config["in_channels"], model_config["input_size"], model_config["input_size"])
    rows, files = [], {"classifier": classifier_path, "reference_statistics": reference_path}
    for seed, checkpoints in sorted(runs.items()):
        for iteration, path in sorted(checkpoints.items()):
            model = build_dit(DiTConfig(**model_config))
            model.load_state_dict(load_checkpoint(path), strict=True)
            model.eval()
            began = time.perf_counter()
            samples, sample_labels = sample_images(model, evaluation, shape, model_config["num_classes"],
                                                   what=f"{method} seed {seed} checkpoint {path}")
            features, probs = metrics.classifier_outputs(classifier, samples)
            scores = metrics.score_features(features, probs, sample_labels, ref,
                                            is_splits=scoring["is_splits"],
                                            bootstrap_reps=scoring["bootstrap_reps"], seed=scoring["seed"])
            val = validation_loss_by_bin(model, images[val_idx], labels[val_idx],
                                         bins=validation["bins"], seed=validation["noise_seed"],
                                         loss_fn=loss_fn)
            rows.append({"seed": seed, "iteration": iteration,
                         **{k: v for k, v in scores.items() if k != "num_samples"},
                         "validation_loss": float(val.mean()),
                         "validation_loss_by_bin": val.tolist()})
            refuse_nonfinite_metrics(rows[-1], f"{method} seed {seed} iteration {iteration}",
                                     f"{output} not written.\n{METRIC_ADVICE}")
            files[f"checkpoint:seed{seed}:iter{iteration}"] = path
            log(f"{method} seed {seed} iteration {iteration}: FID {scores['fid']:.2f} "
                f"acc {scores['class_accuracy']:.3f} val loss {val.mean():.4f} "
                f"({time.perf_counter() - began:.1f} s)")
    return write_run_scores(output, method=method, components=components, rows=rows, evaluation=evaluation,
                            validation=validation, scoring=scoring, seeds=sorted(runs), files=files, config=config)


def write_run_scores(output: str, *, method: str, components: list, rows: list, evaluation: dict,
                     validation: dict, scoring: dict, seeds: list, files: dict, config: dict) -> dict:
    """The score file of a training method's runs (DiT or U-Net): rows per (seed, iteration),
    the evaluation and validation settings and the provenance."""
    result = {
        "method": method, "components": components, "rows": rows,
        "num_samples": evaluation["num_samples"], "evaluation": evaluation, "validation": validation,
        "labels": metrics.metric_labels(),
        "provenance": provenance(config, seeds={"training_seeds": seeds,
                                                "sampling_seed": evaluation["seed"],
                                                "scoring_seed": scoring["seed"],
                                                "validation_noise_seed": validation["noise_seed"]},
                                 files=files,
                                 extra={"fid_implementation": metrics.FID_IMPLEMENTATION,
                                        "fid_mode": "digits-CNN penultimate features vs. all 1797 "
                                                    "real digits (uint8)",
                                        "num_samples": evaluation["num_samples"]}),
    }
    write_hashed_json(output, result)
    return result


# --------------------------------------------------------------------------------------
# Cost per iteration
# --------------------------------------------------------------------------------------

def _elapsed_ms(fn) -> float:
    began = time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - began)


def interleaved_costs(steps: dict, batch_sizes: Sequence[int], repeats: int, baseline: str) -> dict:
    """steps: name -> (prepare(batch_size), iteration()). Timed round-robin over the methods, so
    machine drift falls on all alike: the median batch preparation per batch size, the median
    iteration and the median of the per-round ratios to the baseline's iteration (ms)."""
    prep = {name: {int(b): [] for b in batch_sizes} for name in steps}
    iters = {name: [] for name in steps}
    for _ in range(repeats):
        for name, (prepare, iteration) in steps.items():
            for b in batch_sizes:
                prep[name][int(b)].append(_elapsed_ms(lambda: prepare(int(b))))
            iters[name].append(_elapsed_ms(iteration))
    return {name: {"batch_prep_ms": {b: statistics.median(v) for b, v in prep[name].items()},
                   "iteration_ms": statistics.median(iters[name]),
                   "iteration_vs_baseline": statistics.median(
                       [m / base for m, base in zip(iters[name], iters[baseline])])}
            for name in steps}


def time_methods(*, methods: dict[str, list], baseline: str, model_config: dict, train: dict,
                 batch_sizes: Sequence[int], repeats: int, threads: int, config: dict,
                 output: str, log=print) -> dict:
    """Per method: the batch preparation (timesteps, noise pairing, weights) against batch
    size, and one whole training iteration at the configured batch size (CPU, `threads`
    torch threads). Methods are timed round-robin, one round per repeat, so each ratio to
    the baseline compares runs made seconds apart (this machine's speed drifts)."""
    torch.set_num_threads(threads)
    images, labels = load_digits_tensors()
    loss_fn = HybridLoss()
    generator = torch.Generator().manual_seed(0)
    steps = {}
    for name, components in methods.items():
        method = build_training_method(components, loss_fn.alphas_cumprod)
        weights = torch.from_numpy(method.weighting.weights).float()
        torch.manual_seed(0)
        model = build_dit(DiTConfig(**model_config))
        optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"])

        def prepare(batch_size, method=method, weights=weights):
            index = torch.randint(len(images), (batch_size,), generator=generator)
            x0 = images[index]
            t = method.timesteps.sample(batch_size, generator)
            noise = method.pairing.pair(x0, generator)
            return x0, labels[index], t, noise, weights[t]

        def iteration(prepare=prepare, model=model, optimizer=optimizer):
            x0, y, t, noise, w = prepare(train["batch_size"])
            x_t = loss_fn.q_sample(x0, t, noise)
            loss, _ = loss_fn(model(x_t, t, y), x0, x_t, t, noise, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = (prepare, iteration)
        iteration()  # warm-up
    results = {name: {**cost, "batch_size": train["batch_size"]}
               for name, cost in interleaved_costs(steps, batch_sizes, repeats, baseline).items()}
    for name in methods:
        log(f"{name}: iteration {results[name]['iteration_ms']:.2f} ms "
            f"({results[name]['iteration_vs_baseline']:.3f}x {baseline}), batch prep "
            + ", ".join(f"{b}: {ms:.3f} ms" for b, ms in results[name]["batch_prep_ms"].items()))
    result = {"methods": results, "baseline": baseline, "repeats": repeats, "threads": threads,
              "device": "cpu", "provenance": provenance(config, seeds={}, files={})}
    write_hashed_json(output, result)
    return result
