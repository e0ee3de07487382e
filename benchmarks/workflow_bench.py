"""Workflow benchmark: cold run, no-op rerun, one-ratio change, sampling-loop overhead.

    .venv/bin/python benchmarks/workflow_bench.py [--configfile config/default.yaml] [--keep]

Run it alone on the machine (timings). It deletes the suite's results, checkpoints,
reports and logs first (unless --keep, which skips the cold run), then prints the numbers
REPRODUCIBILITY.md quotes and writes them to reports/<suite>/workflow_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffrepro.snakejob import job_counts

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configfile", default="config/default.yaml")
    parser.add_argument("--keep", action="store_true", help="reuse existing results (no cold run)")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / args.configfile).read_text())
    suite = config["suite"]
    numbers: dict = {"config": args.configfile}

    if not args.keep:
        for path in (f"results/{suite}", f"resources/checkpoints/{suite}", f"reports/{suite}", f"logs/{suite}"):
            shutil.rmtree(ROOT / path, ignore_errors=True)
        cold, out = snakemake("--cores", "all", TARGET, "--configfile", args.configfile)
        numbers["cold_run_s"] = round(cold, 1)
        numbers["cold_run_jobs"] = job_counts(out)
        print(f"cold run: {cold:.1f} s ({sum(numbers['cold_run_jobs'].values())} jobs)")

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

    out_path = ROOT / f"reports/{suite}/workflow_benchmark.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
