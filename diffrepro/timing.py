"""Timing apart from sampling-for-FID: the paper's batch, warm-up, device sync, repeats.

Speed-ups and the loop overhead are measured as ratios of runs made side by side in one
process: this machine's speed drifts between jobs by tens of percent, within a pair of
consecutive runs it barely does.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Sequence

import numpy as np
import torch

from .diffusion.sampling import initial_noise_and_labels
from .io import write_json
from .jobs import job_device, load_denoisers, sample_geometry, sampler_for
from .methods import get_method
from .provenance import provenance


# --------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


def time_setting(*, method: str, setting_values: dict, baseline: dict,
                 checkpoints: dict[str, str], model_configs: dict[str, dict], sampling: dict,
                 seed: int, timing: dict, config: dict, output: str, log=print,
                 device: str | None = None) -> dict:
    """Median wall-clock of one batch (the paper's 8 images), speed-up over the baseline
    run ({"method", "params"}: a setting of this method, or e.g. the sequential sampler a
    parallel one solves), and the loop's overhead.

    The speed-up is the median over repeats of baseline time / setting time, the two runs
    made one after the other in this process: across jobs this machine's speed drifts by
    tens of percent, within a pair it barely does.

    The ideal time is sum over models of (steps run by that model) x (median time of one
    guided forward pass of it, same batch): sampling with zero loop overhead. This machine
    is noisy at the scale of one run, so each timed run is paired with forward passes
    timed right after it, and the overhead is the median of the per-pair ratios
    run / ideal - 1 (slow drifts cancel within a pair).
    """
    device = job_device(sampling, device)
    denoisers = load_denoisers(checkpoints, model_configs, sampling, device)
    spec, base_spec = get_method(method), get_method(baseline["method"])
    setting, base_setting = spec.make_setting(setting_values), base_spec.make_setting(baseline["params"])
    sampler, base_sampler = sampler_for(setting, sampling), sampler_for(base_setting, sampling)
    is_baseline = (method, setting) == (baseline["method"], base_setting)
    shape, num_classes = sample_geometry(model_configs)
    batch = list(range(timing["batch_size"]))

    def fresh_inputs():
        noise, labels, generators = initial_noise_and_labels(seed, batch, shape, num_classes)
        return noise.to(device), labels.to(device), generators

    def timed_run(run_spec, run_sampler, which):
        """(seconds, method output) of one run; its inputs are drawn outside the timing."""
        inputs, outputs = fresh_inputs(), []
        seconds = _timed(lambda: outputs.append(run_spec.run(denoisers, run_sampler, *inputs, which)),
                         device)
        return seconds - outputs[0].given_s, outputs[0]

    noise, y, _ = fresh_inputs()
    middle_t = sampler.timesteps[len(sampler.timesteps) // 2]

    def forward_times(denoiser) -> list[float]:
        return [_timed(lambda: denoiser(noise, middle_t, y), device)
                for _ in range(timing["forward_repeats"])]

    with torch.no_grad():
        for _ in range(timing["warmup"]):
            spec.run(denoisers, sampler, *fresh_inputs(), setting)
            for d in denoisers.values():
                forward_times(d)
        runs, pair_ratios, speedups, forward = [], [], [], {role: [] for role in denoisers}
        base_runs = []
        for _ in range(timing["repeats"]):
            seconds, out = timed_run(spec, sampler, setting)
            runs.append(seconds)
            steps = out.steps_by_role(denoisers)
            if not is_baseline:
                base_runs.append(timed_run(base_spec, base_sampler, base_setting)[0])
                speedups.append(base_runs[-1] / seconds)
            block = {role: forward_times(d) for role, d in denoisers.items()}
            for role, times in block.items():
                forward[role].extend(times)
            pair_ideal = sum(steps[role] * statistics.median(block[role]) for role in block)
            pair_ratios.append(runs[-1] / pair_ideal)
        loop_s = (_loop_only_time(spec, setting, sampler, denoisers, fresh_inputs, noise, middle_t, y,
                                  device, repeats=timing["forward_repeats"]) if out.uniform_batch else None)
        window = _window_cost(setting, sampler, denoisers, noise, middle_t, y, device, timing)

    speedups = speedups or [1.0] * len(runs)  # the baseline itself
    per_step = {role: statistics.median(v) for role, v in forward.items()}
    ideal = sum(steps[role] * per_step[role] for role in per_step)
    median = statistics.median(runs)
    result = {
        "method": method, "setting": spec.setting_id(setting), "params": dataclasses.asdict(setting),
        "batch_size": len(batch), "repeats": timing["repeats"], "warmup": timing["warmup"],
        "forward_repeats": timing["forward_repeats"], "times_s": runs, "median_s": median,
        "model_steps": steps, "per_step_forward_s": per_step,
        "baseline": baseline, "baseline_times_s": base_runs or runs, "speedup_pairs": speedups,
        "speedup_vs_baseline": statistics.median(speedups),
        "speedup_ci95": _median_ci(speedups),
        # One guided forward pass on the batch and, for methods that evaluate a window of
        # steps at once, on the window-sized batch: what a parallel iteration costs here.
        "forward_s": {"batch": statistics.median(next(iter(forward.values()))), **window},
        "threads": torch.get_num_threads(), "device": str(device),
        "provenance": provenance(config, seeds={"seed": seed}, files=checkpoints, device=device),
    }
    if out.uniform_batch:
        # Every call ran on the whole batch: steps x one forward pass is the ideal time.
        result.update({
            "ideal_s": ideal, "pair_ratios": pair_ratios,
            "overhead_fraction": statistics.median(pair_ratios) - 1,
            "overhead_ci95": [r - 1 for r in _median_ci(pair_ratios)],
            # The loop alone (method + sampler, network replaced by a constant): its share
            # of the ideal time, a low-noise view of the same overhead.
            "loop_only_s": loop_s, "loop_only_fraction": loop_s / ideal})
    log(f"{method} {result['setting']}: median {median:.4f} s, speed-up "
        f"{result['speedup_vs_baseline']:.3f}x vs {baseline['method']} "
        f"{base_spec.setting_id(base_setting)}"
        + (f", overhead {100 * result['overhead_fraction']:+.2f}% (median of paired ratios)"
           if out.uniform_batch else ""))
    write_json(output, result)
    return result


def _window_cost(setting, sampler, denoisers, noise, t, y, device, timing) -> dict:
    """Median time of one forward pass on window x batch rows (methods with a window)."""
    if not hasattr(setting, "window"):
        return {"window": None, "window_batch": None}
    window = min(setting.window, len(sampler.timesteps))
    denoiser = next(iter(denoisers.values()))
    x, labels = noise.repeat(window, 1, 1, 1), y.repeat(window)
    times = [_timed(lambda: denoiser(x, t, labels), device) for _ in range(timing["forward_repeats"])]
    return {"window": window, "window_batch": statistics.median(times)}


class _ConstantDenoiser:
    """Stands in for a network: returns a fixed output, so a run times only the loop."""

    def __init__(self, output: torch.Tensor):
        self.output = output

    def __call__(self, x, t, y):
        return self.output


def _loop_only_time(spec, setting, sampler, denoisers, fresh_inputs, noise, t, y, device,
                    repeats: int) -> float:
    stand_ins = {role: _ConstantDenoiser(d(noise, t, y)) for role, d in denoisers.items()}
    times = []
    for _ in range(repeats):
        inputs = fresh_inputs()
        times.append(_timed(lambda: spec.run(stand_ins, sampler, *inputs, setting), device))
    return statistics.median(times)


def _median_ci(values: Sequence[float], reps: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of the median."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(reps, len(data)), replace=True), axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]
