"""Immiscible Diffusion, Stable Diffusion version (the seed's own table), on the embedded
suite: the class-prompt U-Net (models.<unet_training.model>) trained from scratch and
fine-tuned from that model's trained weights, per (regime, method, seed), with or without
noise assignment; every snapshot scored as the seed scores SD (PNDM, guidance, class-name
prompts round-robin); the assignment's cost per step and how often float16 distances give
the exact optimum.

The seed trains SD on ImageNet VAE latents (scaled by 0.18215); the embedded U-Net trains on
the digits' pixels in [-1, 1] (no VAE), so "latents" here are those pixels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import metrics
from .checkpoints import load_checkpoint, recorded_sha256
from .data import load_digits_tensors, to_uint8_nhwc
from .diffusion.sampling import initial_noise_and_labels
from .engines.pipeline import NUM_PROMPT_CLASSES, embedded_pipeline, load_unet
from .finite import METRIC_ADVICE, TRAINING_ADVICE, NonFiniteError, describe_positions, nonfinite_rows, \
    refuse_nonfinite_metrics
from .integrity import write_hashed_json
from .provenance import provenance
from .t2i.components import build_unet, digit_prompt
from .t2i.training import noise_pairing, noise_schedule, train_t2i_unet
from .training import TrainConfig
from .training_study import digits_split, interleaved_costs, write_run_scores


def snapshot_path(directory: str | Path, iteration: int) -> Path:
    return Path(directory) / f"iter{iteration:07d}.safetensors"


def train_unet_run(*, components: list, model_config: dict, t2i: dict, train: dict, seed: int,
                   snapshots: Sequence[int], validation: dict, directory: str, init_path: str | None = None,
                   log=print, stop_after: int | None = None) -> dict:
    """One (regime, method, seed): from scratch, or fine-tuning `init_path`'s weights. The
    seed sets the batches, prompt drops, timesteps and noise (and, from scratch, the initial
    weights), the same for every method. Resumable."""
    images, labels = load_digits_tensors()
    train_idx, _ = digits_split(len(images), validation)
    config = TrainConfig(**{**train, "seed": seed})
    init = None if init_path is None else {"state_dict": load_checkpoint(init_path),
                                           "sha256": recorded_sha256(init_path)}
    final = snapshot_path(directory, config.iterations)
    log(f"U-Net {'fine-tuning ' + init_path if init_path else 'from scratch'}, pairing {components or 'none'}, "
        f"seed {seed}, {len(train_idx)} digits")
    return train_t2i_unet(model_config, config, t2i, images[train_idx], labels[train_idx], str(final),
                          log=log, stop_after=stop_after, components=components, init=init,
                          snapshots={it: snapshot_path(directory, it) for it in snapshots
                                     if it != config.iterations})


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------

@torch.no_grad()
def sample_class_prompts(unet, t2i: dict, evaluation: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 samples of diffusers' SD pipeline (t2i's scheduler, evaluation's steps and
    guidance), prompt i = class i mod 10 as the seed's generate.py, per-image fixed noise."""
    pipe = embedded_pipeline(unet, t2i)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    out_images, out_labels = [], []
    indices = list(range(evaluation["num_samples"]))
    for start in range(0, len(indices), evaluation["batch_size"]):
        batch = indices[start:start + evaluation["batch_size"]]
        noise, _, generators = initial_noise_and_labels(evaluation["seed"], batch, shape, NUM_PROMPT_CLASSES)
        labels = np.asarray(batch) % NUM_PROMPT_CLASSES
        x = pipe([digit_prompt(c) for c in labels], num_inference_steps=evaluation["steps"],
                 guidance_scale=evaluation["guidance_scale"], latents=noise, generator=generators,
                 output_type="latent", return_dict=False)[0]
        bad = nonfinite_rows(x)
        if len(bad):
            raise NonFiniteError(f"{what}: {describe_positions([batch[p] for p in bad], len(batch))} of the "
                                 f"evaluation batch came out NaN or inf; not scored.\n{TRAINING_ADVICE}")
        out_images.append(to_uint8_nhwc(x))
        out_labels.append(labels)
    return np.concatenate(out_images), np.concatenate(out_labels)


@torch.no_grad()
def validation_loss_by_bin(unet, contexts, images, labels, schedule, *, bins: int, seed: int) -> np.ndarray:
    """Epsilon-MSE of held-out digits in `bins` equal ranges of t, with (t, noise) drawn from
    `seed` alone: every method and checkpoint sees the same triples."""
    generator = torch.Generator().manual_seed(seed)
    T = schedule.config.num_train_timesteps
    width = T // bins
    losses = []
    for b in range(bins):
        t = b * width + torch.randint(width, (len(images),), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        pred = unet(schedule.add_noise(images, noise, t), t, encoder_hidden_states=contexts[labels]).sample
        losses.append(((pred - noise) ** 2).mean().item())
    return np.asarray(losses)


def score_unet_runs(*, method: str, components: list, model_config: dict, t2i: dict,
                    runs: dict[int, dict[int, str]], evaluation: dict, validation: dict, scoring: dict,
                    classifier_path: str, reference_path: str, config: dict, output: str, log=print) -> dict:
    """Scores of every checkpoint of one (regime, method): runs = {seed: {iteration: path}};
    the rows have the DiT study's fields, so report.training builds the table."""
    from .engines.pipeline import embedded_text_encoder
    from .models.classifier import load_classifier
    from .t2i.components import encode_prompts

    classifier = load_classifier(classifier_path)
    ref = metrics.load_reference_statistics(reference_path)
    images, labels = load_digits_tensors()
    _, val_idx = digits_split(len(images), validation)
    schedule = noise_schedule(t2i)
    tokenizer, encoder = embedded_text_encoder(t2i)
    contexts = encode_prompts(tokenizer, encoder, [digit_prompt(c) for c in range(NUM_PROMPT_CLASSES)])
    rows, files = [], {"classifier": classifier_path, "reference_statistics": reference_path}
    for seed, checkpoints in sorted(runs.items()):
        for iteration, path in sorted(checkpoints.items()):
            began = time.perf_counter()
            unet = load_unet(path, model_config, "cpu")
            samples, sample_labels = sample_class_prompts(unet, t2i, evaluation,
                                                          what=f"{method} seed {seed} checkpoint {path}")
            features, probs = metrics.classifier_outputs(classifier, samples)
            scores = metrics.score_features(features, probs, sample_labels, ref, is_splits=scoring["is_splits"],
                                            bootstrap_reps=scoring["bootstrap_reps"], seed=scoring["seed"])
            val = validation_loss_by_bin(unet, contexts, images[val_idx], labels[val_idx], schedule,
                                         bins=validation["bins"], seed=validation["noise_seed"])
            rows.append({"seed": seed, "iteration": iteration,
                         **{k: v for k, v in scores.items() if k != "num_samples"},
                         "validation_loss": float(val.mean()), "validation_loss_by_bin": val.tolist()})
            refuse_nonfinite_metrics(rows[-1], f"{method} seed {seed} iteration {iteration}",
                                     f"{output} not written.\n{METRIC_ADVICE}")
            files[f"checkpoint:seed{seed}:iter{iteration}"] = path
            log(f"{method} seed {seed} iteration {iteration}: FID {scores['fid']:.2f} "
                f"acc {scores['class_accuracy']:.3f} val loss {val.mean():.4f} ({time.perf_counter() - began:.1f} s)")
    return write_run_scores(output, method=method, components=components, rows=rows, evaluation=evaluation,
                            validation=validation, scoring=scoring, seeds=sorted(runs), files=files, config=config)


# --------------------------------------------------------------------------------------
# Cost per step, and float16 against the exact assignment
# --------------------------------------------------------------------------------------

def assignment_agreements(components: list, *, batch_size: int, batches: int, seed: int) -> list[dict]:
    """For a linear-assignment method: on `batches` training batches of the digits (and fresh
    noise), how often its distance dtype and float32 give the float64 optimum."""
    from methods.immiscible import assignment_agreement

    params = next((values for name, values in _parsed(components) if name == "immiscible"), None)
    if params is None:
        return []
    images, _ = load_digits_tensors()
    generator = torch.Generator().manual_seed(seed)
    xs = [images[torch.randint(len(images), (batch_size,), generator=generator)] for _ in range(batches)]
    noises = [torch.randn(x.shape, generator=generator) for x in xs]
    scale = params.get("scale", 1.0)
    dtypes = list(dict.fromkeys([params.get("distance_dtype", "float32"), "float16", "float32"]))
    return [assignment_agreement(xs, noises, distance_dtype=d, scale=scale) for d in dtypes]


def _parsed(components):
    from .training_methods import parse_entries

    return parse_entries(components)


def time_unet_pairings(*, methods: dict[str, list], baseline: str, model_config: dict, t2i: dict,
                       train: dict, batch_sizes: Sequence[int], repeats: int, agreement_batches: int,
                       threads: int, config: dict, output: str, log=print) -> dict:
    """Per method: the noise pairing against batch size, one whole U-Net training step at the
    training batch size (CPU, round-robin over methods, one round per repeat), and for the
    linear-assignment methods the float16-vs-exact agreement over `agreement_batches` batches."""
    from .engines.pipeline import embedded_text_encoder
    from .t2i.components import encode_prompts

    torch.set_num_threads(threads)
    images, labels = load_digits_tensors()
    schedule = noise_schedule(t2i)
    tokenizer, encoder = embedded_text_encoder(t2i)
    contexts = encode_prompts(tokenizer, encoder, [digit_prompt(c) for c in range(NUM_PROMPT_CLASSES)])
    generator = torch.Generator().manual_seed(0)
    steps = {}
    for name, components in methods.items():
        pairing = noise_pairing(components, schedule)
        pair = pairing.pair if pairing is not None else (lambda x0, g: torch.randn(x0.shape, generator=g))
        torch.manual_seed(0)
        unet = build_unet(model_config)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=train["lr"])

        def prepare(batch_size, pair=pair):
            index = torch.randint(len(images), (batch_size,), generator=generator)
            return images[index], labels[index], pair(images[index], generator)

        def step(prepare=prepare, unet=unet, optimizer=optimizer):
            x0, y, noise = prepare(train["batch_size"])
            t = torch.randint(schedule.config.num_train_timesteps, (len(x0),), generator=generator)
            pred = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=contexts[y]).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = (prepare, step)
        step()  # warm-up
    costs = interleaved_costs(steps, batch_sizes, repeats, baseline)
    results = {}
    for name, components in methods.items():
        results[name] = {**costs[name], "batch_size": train["batch_size"],
                         "assignment_agreement": assignment_agreements(
                             components, batch_size=train["batch_size"], batches=agreement_batches, seed=0)}
        log(f"{name}: step {results[name]['iteration_ms']:.2f} ms ({results[name]['iteration_vs_baseline']:.3f}x "
            f"{baseline}), pairing " + ", ".join(f"{b}: {ms:.3f} ms" for b, ms in results[name]["batch_prep_ms"].items()))
        for a in results[name]["assignment_agreement"]:
            log(f"  {a['distance_dtype']} vs exact: an exact optimum in {a['optimal']:.1%}, the same "
                f"permutation in {a['same_permutation']:.1%} of "
                f"{a['batches']} batches of {a['batch_size']}, same pairs {a['same_pairs']:.2%}, "
                f"total distance +{a['excess_total_distance']:.2e}")
    result = {"methods": results, "baseline": baseline, "repeats": repeats, "threads": threads, "device": "cpu",
              "provenance": provenance(config, seeds={}, files={})}
    write_hashed_json(output, result)
    return result
