"""Timing apart from sampling-for-FID, one table at a time: every setting of the table and
every reference run they are measured against, timed round-robin in one process.

This machine's speed drifts between jobs by tens of percent and within a job by a few: a
setting timed in its own job, or long after its reference, carries that drift into its
speed-up. Here each round times every run once (the paper's batch, device synced) and one
forward pass of every model used, so a setting's speed-up and its ideal time come from
measurements taken minutes apart at most, and the per-round ratios cancel the slow drift.
The rounds start at a different run each time, so no run always follows the same one.
Methods of any family are timed the same way through their engines (diffrepro.engines).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from typing import Sequence

import numpy as np
import torch

from .engines import load_engine
from .engines.clock import timed
from .engines.flops import count_call, flops_record
from .finite import NonFiniteError, describe_positions, nonfinite_rows
from .integrity import write_hashed_json
from .job_phases import compute
from .jobs import job_device
from .methods import get_method
from .provenance import provenance


@dataclasses.dataclass
class _Run:
    """One timed unit: a method's setting at a batch size, and what its rounds measured."""
    method: str
    setting: object
    batch_size: int
    engine_key: str
    times: list = dataclasses.field(default_factory=list)
    steps: dict | None = None
    uniform_batch: bool = True
    flops: object = None  # engines.flops.DenoiserFlops of one run on the timed batch

    @property
    def key(self) -> tuple:
        return self.method, self.setting, self.batch_size


def table_rounds(timings: Sequence[dict]) -> dict:
    """Rounds, warm-up rounds and forward passes per round for a table whose methods have
    these timing sections (config.method_timing): the most any of them asks for."""
    return {key: max(int(t[name]) for t in timings)
            for key, name in (("rounds", "repeats"), ("warmup", "warmup"), ("forward_repeats", "forward_repeats"))}


def _quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def _median_ci(values: Sequence[float], reps: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of the median."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(reps, len(data)), replace=True), axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


def time_table_settings(*, settings: Sequence[dict], methods: dict[str, dict], seed: int, config: dict,
                        output: str | None = None, device: str | None = None,
                        prompts_path: str | None = None, log=print) -> dict:
    """Time a table's settings round-robin in this process; returns (and writes) the table's
    timing file: {"rounds", "warmup", "forward_repeats", "order", "settings": [record, ...]}.

    settings: [{"method", "params", "baseline": {"method", "params"}}], the table's rows with
        the run each is measured against (a setting of the same method, or e.g. the
        sequential sampler a parallel one solves); the baseline is timed at its row's batch.
    methods: for every method named there, {"checkpoints", "model_configs", "sampling",
        "timing"} (timing: config.method_timing, its batch_size is the method's batch).

    Per row: median and p90 of its times; speed-up = median over rounds of (baseline time /
    row time) in the same round; ideal time = sum over roles of model_steps[role] x that
    round's forward time of the role's model (median over rounds), and measured / ideal
    (median of the per-round ratios). Methods whose network calls do not all run on the
    whole batch (parallel-in-time samplers) have no ideal time.

    Cost beside time, per row: p50/p90 and images/s at the timed batch; forward FLOPs per
    image of the denoiser calls one run of it made on the timed batch, counted after the timed
    rounds (engines.flops says what torch counts), and FLOPs speed-up = baseline FLOPs / row FLOPs.
    """
    first = next(iter(methods.values()))
    device = job_device(first["sampling"], device)
    plan = table_rounds([methods[s["method"]]["timing"] for s in settings])
    engines, engine_of, runs = {}, {}, {}

    def engine_for(method: str) -> str:
        entry = methods[method]
        key = json.dumps([get_method(method).family, entry["checkpoints"], entry["model_configs"],
                          entry["sampling"], entry.get("control_images")], sort_keys=True)
        if key not in engines:  # methods over the same models share them (e.g. T-Stitch's r = 0, BK-SDM's teacher)
            engines[key] = load_engine(method, checkpoints=entry["checkpoints"], model_configs=entry["model_configs"],
                                       sampling=entry["sampling"], device=device, prompts_path=prompts_path,
                                       control_path=entry.get("control_images"))
        engine_of[method] = key
        return key

    def run_for(method: str, values: dict, batch_size: int) -> _Run:
        run = _Run(method, get_method(method).make_setting(values), batch_size, engine_for(method))
        return runs.setdefault(run.key, run)

    rows = []
    for entry in settings:
        batch = int(methods[entry["method"]]["timing"]["batch_size"])
        rows.append((entry, run_for(entry["method"], entry["params"], batch),
                     run_for(entry["baseline"]["method"], entry["baseline"]["params"], batch)))
    order = list(runs.values())
    # one forward pass per (models, role, batch) a row uses: the ideal time's unit cost
    forwards = {(run.engine_key, role, run.batch_size): [] for _, run, _ in rows
                for role in engines[run.engine_key].roles}
    log(f"{len(rows)} settings, {len(order)} timed runs, {len(forwards)} models x batches; "
        f"{plan['warmup']} warm-up and {plan['rounds']} timed rounds on {device}")

    checked = set()  # runs whose samples were checked finite (once each, outside the clock)

    def time_run(run: _Run) -> float:
        engine = engines[run.engine_key]
        call, outputs = engine.prepare(get_method(run.method), run.setting, seed, range(run.batch_size)), []
        seconds = timed(lambda: outputs.append(call()), device)
        if run.key not in checked:  # a model producing NaN or inf is not timed
            _refuse_nonfinite(run, outputs[0].samples)
            checked.add(run.key)
        run.steps, run.uniform_batch = outputs[0].steps_by_role(engine.roles), outputs[0].uniform_batch
        return seconds - outputs[0].given_s  # inputs the paper treats as given (ParaTAA's warm start)

    def time_forward(key) -> float:
        engine_key, role, batch_size = key
        call = engines[engine_key].forward_pass(role, batch_size, seed)
        return statistics.median([timed(call, device) for _ in range(plan["forward_repeats"])])

    with torch.no_grad(), compute():  # warm-up, timed rounds and FLOP counts: all model compute
        for _ in range(plan["warmup"]):
            for run in order:
                time_run(run)
            for key in forwards:
                time_forward(key)
        for round_index in range(plan["rounds"]):
            start = round_index % len(order)
            for run in order[start:] + order[:start]:
                run.times.append(time_run(run))
            for key, times in forwards.items():
                times.append(time_forward(key))
        per_forward = _count_flops(order, engines, seed)
        records = [_record(entry, run, base, engines[run.engine_key], forwards, plan, seed, device,
                           {role: per_forward[(run.engine_key, role)] for role in engines[run.engine_key].roles})
                   for entry, run, base in rows]

    files = {}  # each checkpoint hashed once, however many methods load it
    for method, entry in methods.items():
        for role, path in entry["checkpoints"].items():
            if path not in files.values():
                files[f"{method}:{role}"] = path
    result = {**plan, "batch_sizes": sorted({run.batch_size for run in order}),
              "order": [[run.method, get_method(run.method).setting_id(run.setting), run.batch_size] for run in order],
              "threads": torch.get_num_threads(), "device": str(device),
              "provenance": provenance(config, seeds={"seed": seed}, files=files, device=device,
                                       extra={"models": {m: engines[k].meta() for m, k in engine_of.items()}}),
              "settings": records}
    for record in records:
        log(f"{record['method']} {record['setting']}: median {record['median_s']:.4f} s (p90 {record['p90_s']:.4f}), "
            f"speed-up {record['speedup_vs_baseline']:.3f}x, {record['flops']['per_image'] / 1e9:.4g} GFLOPs/image "
            f"(FLOPs speed-up {record['flops_speedup_vs_baseline'] or float('nan'):.3f}x)"
            + (f", measured/ideal {record['ideal_ratio']:.3f}" if "ideal_ratio" in record else ""))
    if output is not None:
        write_hashed_json(output, result)
    return result


def _count_flops(order: list[_Run], engines: dict, seed: int) -> dict:
    """FLOPs after the timed rounds, so counting (slow: every op goes through Python) never
    touches a timed call: one run of each timed unit on its timed batch (run.flops), and one
    forward pass of each model on one image, the unit cost of an ideal count (returned by
    (engine key, role)). Engines count on their eager models (engine.counting())."""
    per_forward = {}
    for run in order:
        engine, outputs = engines[run.engine_key], []
        call = engine.prepare(get_method(run.method), run.setting, seed, range(run.batch_size))
        with engine.counting():
            run.flops = count_call(lambda: outputs.append(call()), engine.flop_modules())
            # FLOPs count every call, those on inputs the paper treats as given too (ParaTAA's
            # warm start), which the time leaves out
            run.flops.given_inputs = outputs[0].given_s > 0
            for role, module in engine.flop_modules().items():
                if (run.engine_key, role) not in per_forward:
                    per_forward[(run.engine_key, role)] = count_call(
                        engine.forward_pass(role, 1, seed), {role: module}).total
    return per_forward


def _refuse_nonfinite(run: _Run, samples) -> None:
    bad = nonfinite_rows(samples)
    if len(bad):
        raise NonFiniteError(
            f"timing {run.method} {get_method(run.method).setting_id(run.setting)}: "
            f"{describe_positions(bad, run.batch_size)} of the timing batch came out NaN or inf; not timed.\n"
            f"Check the method and its checkpoints (e.g. with compute.precision fp32), then rerun.")


def _record(entry: dict, run: _Run, base: _Run, engine, forwards: dict, plan: dict, seed: int, device,
            per_forward: dict) -> dict:
    """One row's timing record (the keys the table builders read, as the per-setting timing
    files had them), with its cost beside its time: forward FLOPs per image of the calls the
    run made (`flops`, engines.flops) and their speed-up against the baseline run's, and the
    throughput at the timed batch."""
    spec = get_method(run.method)
    itself = run is base
    speedups = [1.0] * len(run.times) if itself else [b / t for b, t in zip(base.times, run.times)]
    per_round = {role: forwards[(run.engine_key, role, run.batch_size)] for role in engine.roles}
    per_step = {role: statistics.median(times) for role, times in per_round.items()}
    record = {
        "method": run.method, "setting": spec.setting_id(run.setting), "params": dataclasses.asdict(run.setting),
        "batch_size": run.batch_size, "repeats": plan["rounds"], "warmup": plan["warmup"],
        "forward_repeats": plan["forward_repeats"], "times_s": run.times, "median_s": statistics.median(run.times),
        "p50_s": _quantile(run.times, 0.5), "p90_s": _quantile(run.times, 0.9),
        "images_per_s": run.batch_size / statistics.median(run.times), "model_steps": run.steps,
        "per_step_forward_s": per_step,
        "baseline": entry["baseline"], "baseline_times_s": base.times, "speedup_pairs": speedups,
        "speedup_vs_baseline": statistics.median(speedups), "speedup_ci95": _median_ci(speedups),
        # one forward pass on the batch and, for methods that evaluate a window of steps at
        # once, on the window-sized batch: what a parallel iteration costs here
        "forward_s": {"batch": next(iter(per_step.values()))},
        "threads": torch.get_num_threads(), "device": str(device),
        "flops": flops_record(run.flops, run.batch_size, per_forward),
        "flops_speedup_vs_baseline": base.flops.total / run.flops.total if run.flops.total else None,
    }
    extra = engine.extra_costs(spec, run.setting, seed, run.batch_size, plan["forward_repeats"], run.uniform_batch)
    record["forward_s"].update(window=extra.get("window"), window_batch=extra.get("window_batch"))
    if run.uniform_batch:
        # every call ran on the whole batch: steps x one forward pass is the ideal time
        ideals = [sum(run.steps[role] * per_round[role][r] for role in per_round) for r in range(len(run.times))]
        ratios = [t / ideal for t, ideal in zip(run.times, ideals)]
        record.update({"ideal_s": statistics.median(ideals), "pair_ratios": ratios,
                       "ideal_ratio": statistics.median(ratios), "overhead_fraction": statistics.median(ratios) - 1,
                       "overhead_ci95": [r - 1 for r in _median_ci(ratios)]})
        if "loop_only_s" in extra:
            # the loop alone (method + sampler, network replaced by a constant): its share
            # of the ideal time, a low-noise view of the same overhead
            record.update(loop_only_s=extra["loop_only_s"],
                          loop_only_fraction=extra["loop_only_s"] / record["ideal_s"])
    return record


def time_setting(*, method: str, setting_values: dict, baseline: dict, checkpoints: dict[str, str],
                 model_configs: dict[str, dict], sampling: dict, seed: int, timing: dict, config: dict,
                 output: str | None = None, device: str | None = None, prompts_path: str | None = None,
                 log=print) -> dict:
    """One setting against its baseline run (a table of one row, same models): its timing
    record, with the provenance; written to `output` if given."""
    entry = {"checkpoints": checkpoints, "model_configs": model_configs, "sampling": sampling, "timing": timing}
    table = time_table_settings(settings=[{"method": method, "params": setting_values, "baseline": baseline}],
                                methods={method: entry, baseline["method"]: entry}, seed=seed, config=config, device=device,
                                prompts_path=prompts_path, log=log)
    record = {**table["settings"][0], "provenance": {**table["provenance"], **table["provenance"]["models"][method]}}
    if output is not None:
        write_hashed_json(output, record)
    return record
