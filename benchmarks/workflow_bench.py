"""Workflow benchmark: cold run, no-op rerun, one-ratio change, sampling-loop overhead, and where
the jobs' time goes (what a job imports beyond torch; per setting, everything that is not model
compute; the share of the cold run's CPU time spent in model compute, from each job's
`job phases` log line, diffrepro.job_phases).

    .venv/bin/python benchmarks/workflow_bench.py [--configfile config/default.yaml] [--keep | --all]
    .venv/bin/python benchmarks/workflow_bench.py --table-costs   # from the logs of a finished run

Run it alone on the machine (timings). It deletes the suite's results, checkpoints,
reports and logs first (unless --keep, which skips the cold run), then prints the numbers
REPRODUCIBILITY.md quotes and writes them to reports/<suite>/workflow_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffrepro.snakejob import job_counts, planned_jobs

ROOT = Path(__file__).resolve().parents[1]
TARGET = "reproduce_tstitch_table"


def snakemake(*args: str) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout + result.stderr


# what a sampling job's script imports (workflow/scripts/sample.py and the plugins it loads)
JOB_IMPORTS = ("import torch; import diffrepro.snakejob, diffrepro.jobs, diffrepro.engines.denoiser; "
               "from diffrepro.methods import load_plugins; load_plugins()")


def import_overhead(runs: int = 7) -> dict:
    """Median wall time of a fresh interpreter importing a job's modules minus one importing
    torch alone, the two interleaved (the machine's load drifts)."""
    import statistics

    times = {"torch": [], "job": []}
    for _ in range(runs):
        for name, code in (("torch", "import torch"), ("job", JOB_IMPORTS)):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            times[name].append(time.perf_counter() - began)
    torch_s, job_s = statistics.median(times["torch"]), statistics.median(times["job"])
    return {"median_s": round(job_s - torch_s, 3), "torch_alone_s": round(torch_s, 3), "job_imports_s": round(job_s, 3),
            "runs": runs}


def job_phases_summary(logs: Path, wall_s: float, threads: int) -> dict:
    """Sum the `job phases` lines of a run's logs: per rule, and per setting of the table's
    method (its sampling shards and its score job)."""
    from diffrepro.job_phases import logged_phases

    per_rule: dict[str, dict[str, float]] = {}
    per_setting: dict[str, float] = {}
    for path, phases in logged_phases(logs).items():
        if phases["total_s"] is None:
            continue
        rule = path.relative_to(logs).parts[0]
        totals = per_rule.setdefault(rule, {"jobs": 0, "start_s": 0.0, "compute_s": 0.0, "rest_s": 0.0})
        totals["jobs"] += 1
        for key in ("start_s", "compute_s", "rest_s"):
            totals[key] += phases[key]
        if rule in ("sample", "score") and path.relative_to(logs).parts[1] == "tstitch":
            setting = path.relative_to(logs).parts[2].removesuffix(".log")
            per_setting[setting] = per_setting.get(setting, 0.0) + phases["start_s"] + phases["rest_s"]
    job_s = sum(t["start_s"] + t["compute_s"] + t["rest_s"] for t in per_rule.values())
    compute_s = sum(t["compute_s"] for t in per_rule.values())
    overheads = list(per_setting.values()) or [float("nan")]
    return {"per_rule": {r: {k: round(v, 2) for k, v in t.items()} for r, t in sorted(per_rule.items())},
            "compute_share_of_job_time": round(compute_s / job_s, 4) if job_s else None,
            "compute_s_per_wall_s": round(compute_s / wall_s, 3),
            "threads_per_job": threads,
            "per_setting_overhead_s": {"mean": round(sum(overheads) / len(overheads), 2), "max": round(max(overheads), 2),
                                       "settings": {k: round(v, 2) for k, v in sorted(per_setting.items())}}}


def table_costs_from_logs(config: dict, configfile: str, cores: int) -> dict:
    """Per table, the core-seconds of its jobs in the run whose logs are in logs/<suite>
    (diffrepro.job_phases.table_costs): which tables a shorter run would have to shrink, and
    what dropping one saves. A table's jobs come from a dry run of its target (--forceall)."""
    from diffrepro.job_phases import logged_phases, table_costs

    seconds = {str(path.relative_to(ROOT)): (phases["total_s"] if phases["total_s"] is not None
                                             else phases["compute_s"] + phases["rest_s"])
               for path, phases in logged_phases(ROOT / f"logs/{config['suite']}").items()}
    cores_of: dict[str, int] = {}
    table_jobs = {}
    for table in config["tables"]:
        _, out = snakemake("-n", "--forceall", "--nolock", "--cores", str(cores), f"reproduce_{table}_table",
                           "--configfile", configfile)
        jobs = planned_jobs(out)
        cores_of.update(jobs)
        table_jobs[table] = set(jobs)
    costs = table_costs(seconds, cores_of, table_jobs)
    run_core_s = sum(s * cores_of.get(log, 1) for log, s in seconds.items())
    return {"cores": cores, "run_core_s": round(run_core_s, 1), "ideal_wall_s": round(run_core_s / cores, 1),
            "tables": dict(sorted(costs.items(), key=lambda kv: -kv[1]["all_core_s"]))}


def print_table_costs(costs: dict) -> None:
    print(f"the run's jobs: {costs['run_core_s']:.0f} core-s = {costs['ideal_wall_s'] / 60:.1f} min "
          f"on {costs['cores']} cores, perfectly packed")
    print(f"  {'table':<24} {'jobs':>5} {'alone (core-s)':>15} {'own':>8} {'shared':>8}")
    for table, c in costs["tables"].items():
        print(f"  {table:<24} {c['jobs']:>5} {c['all_core_s']:>15.0f} {c['own_core_s']:>8.0f} {c['shared_core_s']:>8.0f}"
              + (f"  ({c['unmeasured']} jobs not in the logs)" if c["unmeasured"] else ""))


def clean(suite: str) -> None:
    """A cold start: the suite's results, checkpoints, reports and logs deleted."""
    for path in (f"results/{suite}", f"resources/checkpoints/{suite}", f"reports/{suite}", f"logs/{suite}"):
        shutil.rmtree(ROOT / path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configfile", default="config/default.yaml")
    parser.add_argument("--keep", action="store_true", help="reuse existing results (no cold run)")
    parser.add_argument("--table-costs", action="store_true",
                        help="only the per-table costs of the run whose logs are in logs/<suite> (no run)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="the cores the run had (default: all)")
    parser.add_argument("--all", action="store_true",
                        help="after the headline table's numbers, time a cold reproduce_all (every embedded table; "
                             "the suite's results are deleted again first)")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / args.configfile).read_text())
    suite = config["suite"]
    numbers: dict = {"config": args.configfile}
    if args.all and args.keep:
        sys.exit("--all times a cold run; it cannot be combined with --keep")
    if args.table_costs:
        costs = table_costs_from_logs(config, args.configfile, args.cores)
        print_table_costs(costs)
        out_path = ROOT / f"reports/{suite}/table_costs.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(costs, indent=2) + "\n")
        print(f"wrote {out_path.relative_to(ROOT)}")
        return

    numbers["imports_beyond_torch_s"] = import_overhead()
    print(f"a sampling job's imports beyond torch: {numbers['imports_beyond_torch_s']['median_s']:.2f} s "
          f"(median of {numbers['imports_beyond_torch_s']['runs']} interleaved runs)")

    if not args.keep:
        clean(suite)
        cold, out = snakemake("--cores", "all", TARGET, "--configfile", args.configfile)
        numbers["cold_run_s"] = round(cold, 1)
        numbers["cold_run_jobs"] = job_counts(out)
        print(f"cold run: {cold:.1f} s ({sum(numbers['cold_run_jobs'].values())} jobs)")
        numbers["cold_run_phases"] = job_phases_summary(ROOT / f"logs/{suite}", cold, config["threads"])
        phases = numbers["cold_run_phases"]
        print(f"model compute: {phases['compute_share_of_job_time']:.1%} of the jobs' time; per setting "
              f"(sample + score), not compute: mean {phases['per_setting_overhead_s']['mean']:.2f} s, "
              f"max {phases['per_setting_overhead_s']['max']:.2f} s")

    warm, out = snakemake("--cores", "all", TARGET, "--configfile", args.configfile)
    numbers["second_run_s"] = round(warm, 2)
    numbers["second_run_nothing_to_do"] = "Nothing to be done" in out
    print(f"second run: {warm:.2f} s, nothing to be done: {numbers['second_run_nothing_to_do']}")

    changed = json.loads(json.dumps(config))
    ratios = changed["methods"]["tstitch"]["grid"]["ratio"]
    ratios[ratios.index(0.5)] = 0.55
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=ROOT / "config", delete=False) as f:
        yaml.safe_dump(changed, f)
    try:
        _, out = snakemake("-n", TARGET, "--configfile", f.name)
    finally:
        Path(f.name).unlink()
    numbers["one_ratio_changed_jobs"] = job_counts(out)
    print(f"ratio 0.5 -> 0.55, jobs a rerun would run: {numbers['one_ratio_changed_jobs']}")

    overheads = {}
    # one timing job per table: every ratio timed round-robin in the same rounds
    for timing in json.loads((ROOT / f"results/{suite}/timing/tstitch.json").read_text())["settings"]:
        overheads[timing["params"]["ratio"]] = {
            "p90_s": round(timing["p90_s"], 4), "measured_over_ideal": round(timing["ideal_ratio"], 4),
            "median_s": round(timing["median_s"], 4), "ideal_s": round(timing["ideal_s"], 4),
            "overhead_pct": round(100 * timing["overhead_fraction"], 2),
            "overhead_ci95_pct": [round(100 * v, 2) for v in timing["overhead_ci95"]],
            "loop_only_pct": round(100 * timing["loop_only_fraction"], 3),
            "threads": timing["threads"],
            "per_step_s": {k: round(v, 5) for k, v in timing["per_step_forward_s"].items()}}
    numbers["sampling_overhead"] = dict(sorted(overheads.items()))
    worst = max(abs(v["overhead_pct"]) for v in overheads.values())
    numbers["max_abs_overhead_pct"] = worst
    for ratio, v in sorted(overheads.items()):
        lo, hi = v["overhead_ci95_pct"]
        print(f"  r={ratio:<4} measured {v['median_s']:.4f} s  ideal {v['ideal_s']:.4f} s  "
              f"overhead {v['overhead_pct']:+.2f}% (95% CI {lo:+.1f}..{hi:+.1f})  "
              f"loop alone {v['loop_only_pct']:.2f}% of ideal")
    numbers["max_loop_only_pct"] = max(v["loop_only_pct"] for v in overheads.values())
    medians = [v["median_s"] for _, v in sorted(overheads.items())]
    numbers["time_decreases_with_r"] = all(b < a for a, b in zip(medians, medians[1:]))
    print(f"time decreases with r at every step: {numbers['time_decreases_with_r']}")
    print(f"max |overhead| = {worst:.2f}% (target: within 3%); "
          f"loop alone at most {numbers['max_loop_only_pct']:.2f}% of the ideal time")

    if args.all:
        clean(suite)
        cold_all, out = snakemake("--cores", "all", "reproduce_all", "--configfile", args.configfile)
        numbers["reproduce_all_cold_s"] = round(cold_all, 1)
        numbers["reproduce_all_jobs"] = job_counts(out)
        numbers["reproduce_all_phases"] = job_phases_summary(ROOT / f"logs/{suite}", cold_all, config["threads"])
        print(f"reproduce_all cold: {cold_all / 60:.1f} min ({sum(numbers['reproduce_all_jobs'].values())} jobs); "
              f"model compute {numbers['reproduce_all_phases']['compute_share_of_job_time']:.1%} of the jobs' time")
        numbers["reproduce_all_table_costs"] = table_costs_from_logs(config, args.configfile, args.cores)
        print_table_costs(numbers["reproduce_all_table_costs"])

    out_path = ROOT / f"reports/{suite}/workflow_benchmark.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
