"""The Snakemake workflow end to end on config/smoke.yaml, plus dry runs of every target.

The smoke run works in a copy of the repository (tmp_path), so the developer's results/
are never touched, and checks: the table and plot exist with the expected rows; a
second run has nothing to do; changing one ratio reruns only that ratio and the reports.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from diffrepro.snakejob import job_counts

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COPIED = ["Snakefile", "config", "workflow", "reports/paper", "environment.yml", "profiles"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_repository(work: Path) -> Path:
    for name in COPIED:
        src, dst = ROOT / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return work


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_repository(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def smoke_run(workdir):
    snakemake(workdir, "--cores", "2", "reproduce_all", "--configfile", "config/smoke.yaml")
    return workdir


def test_smoke_dag_produces_table_plot_and_claims(smoke_run):
    reports = smoke_run / "reports/smoke"
    table = pd.read_csv(reports / "tstitch_table.csv")
    assert list(table["ratio"]) == [0.0, 0.4, 1.0]
    assert list(table["ours_small_steps"]) == [0, 4, 10]
    assert list(table["ours_large_steps"]) == [10, 6, 0]
    assert table["ours_fid"].notna().all() and (table["ours_fid"] >= 0).all()
    assert table.loc[0, "ours_speedup"] == 1.0
    assert list(table["paper_fid"]) == [9.20, 8.95, 33.46]  # the paper's group, kept apart
    markdown = (reports / "tstitch_table.md").read_text()
    assert "ours: FID (digits-CNN features)" in markdown and "paper: FID-5K (Inception)" in markdown
    assert "holds" in (reports / "tstitch_claims.md").read_text()
    for plot in ("tstitch_pareto.png", "tstitch_pareto.svg"):
        assert (reports / plot).stat().st_size > 1000


def test_score_files_carry_provenance(smoke_run):
    import json

    score = json.loads((smoke_run / "results/smoke/scores/tstitch/r0.4.json").read_text())
    prov = score["provenance"]
    assert score["num_samples"] == 40 and score["model_steps"] == {"small": 4, "large": 6}
    assert len(prov["config_sha256"]) == 64 and prov["packages"]["torch"]
    assert set(prov["file_sha256"]) == {"classifier", "reference_statistics",
                                       "checkpoint:small", "checkpoint:large"}
    assert prov["fid_implementation"].startswith("diffrepro.metrics.frechet_distance")
    assert "git" in prov and "device" in prov and "tf32_matmul" in prov


def test_timing_files_record_the_measurement(smoke_run):
    import json

    timing = json.loads((smoke_run / "results/smoke/timing/tstitch/r0.4.json").read_text())
    assert timing["batch_size"] == 8 and timing["threads"] == 1
    assert timing["model_steps"] == {"small": 4, "large": 6}
    assert len(timing["times_s"]) == len(timing["pair_ratios"]) == 2
    assert timing["ideal_s"] > 0 and 0 < timing["loop_only_fraction"] < 1
    lo, hi = timing["overhead_ci95"]
    assert lo <= timing["overhead_fraction"] <= hi
    assert timing["baseline"] == {"method": "tstitch", "params": {"ratio": 0.0}}
    assert len(timing["speedup_pairs"]) == 2
    assert timing["speedup_vs_baseline"] > 0


def test_parataa_table_compares_parallel_samplers_with_the_sequential_one(smoke_run):
    import json

    reports = smoke_run / "reports/smoke"
    table = pd.read_csv(reports / "parataa_table.csv")
    assert sorted(table["method"]) == ["parataa"] * 4 + ["picard", "sequential"]
    assert (table["steps"] == 6).all() and (table["iterations_mean"] <= 6).all()
    assert (table["nfe_mean"] >= table["iterations_mean"]).all()
    parallel = table[table["method"] != "sequential"]
    assert (parallel["converged_fraction"] == 1).all()
    # converged solutions are the sequential samples up to the tolerance, image by image
    assert (parallel["max_abs_dev"] < 0.05).all()
    sequential = table[table["method"] == "sequential"].iloc[0]
    assert sequential["max_abs_dev"] == 0 and sequential["speedup"] == 1
    score = json.loads((smoke_run / "results/smoke/scores/parataa/"
                                    "n6-w6-k6-m2-tol0.001-rtol0.001-it6.json").read_text())
    assert score["reference"] == {"method": "sequential", "params": {"steps": 6}, "setting": "n6"}
    assert score["num_samples"] == 12 and len(score["convergence"]["median_residual"]) >= 1
    timing = json.loads((smoke_run / "results/smoke/timing/parataa/"
                                     "n6-w6-k6-m2-tol0.001-rtol0.001-it6.json").read_text())
    assert timing["batch_size"] == 1 and timing["forward_s"]["window"] == 6
    assert timing["baseline"] == {"method": "sequential", "params": {"steps": 6}}
    assert "overhead_fraction" not in timing  # windows are not whole-batch steps
    claims = (reports / "parataa_claims.md").read_text()
    assert "4-14" in claims and "wall-clock gain on this device" in claims
    assert "Warm start needs fewer iterations" in claims and "no warm-start" not in claims
    for plot in ("parataa_pareto.png", "parataa_convergence.png", "parataa_convergence.svg"):
        assert (reports / plot).stat().st_size > 1000


def test_second_run_has_nothing_to_do(smoke_run):
    result = snakemake(smoke_run, "-n", "reproduce_all", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_ratio_reruns_only_that_ratio_and_reports(smoke_run):
    config = yaml.safe_load((smoke_run / "config/smoke.yaml").read_text())
    config["methods"]["tstitch"]["grid"]["ratio"] = [0.0, 0.4, 0.7, 1.0]
    changed = smoke_run / "config/smoke_changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(smoke_run, "-n", "reproduce_tstitch_table", "--configfile", str(changed))
    counts = job_counts(result.stdout)
    assert counts == {"sample": 2, "time": 1, "score": 1, "table": 1, "plot": 1,
                      "reproduce_tstitch_table": 1}, counts
    assert "r0.7" in result.stdout and "r0.4/" not in result.stdout


def test_invalid_config_fails_before_any_job(workdir):
    config = yaml.safe_load((workdir / "config/smoke.yaml").read_text())
    config["sampling"]["sampler"] = "euler"
    bad = workdir / "config/bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "1", "reproduce_tstitch_table", "--configfile", str(bad),
                       check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'euler' is not one of ['ddim', 'ddpm']" in output and "['sampling']['sampler']" in output
    assert "Job stats" not in output and "rule train_denoiser" not in output  # no DAG, no job


@pytest.mark.parametrize("config_file", ["config/default.yaml", "config/smoke.yaml"])
def test_every_reproduce_target_dry_runs(workdir, config_file):
    targets = re.findall(r"^rule (reproduce_\w+):", (ROOT / "Snakefile").read_text(), re.M)
    assert "reproduce_all" in targets and "reproduce_tstitch_table" in targets
    for target in targets:
        result = snakemake(workdir, "-n", target, "--configfile", config_file)
        output = result.stdout + result.stderr
        assert target in output or "Nothing to be done" in output


@pytest.mark.parametrize("kill_signal", ["SIGTERM", "SIGKILL"])
def test_killed_run_resumes(tmp_path, kill_signal):
    """Kill the whole run once sampling has started; rerunning finishes the DAG.

    SIGTERM (kill, a scheduler) lets Snakemake clean up, so a plain rerun resumes. After
    SIGKILL (or a power loss) Snakemake's directory lock remains and `--unlock` comes first,
    as Snakemake's own message says.
    """
    import os
    import signal
    import time

    work = copy_repository(tmp_path)
    args = [*SNAKEMAKE, "--cores", "2", "reproduce_tstitch_table", "--configfile", "config/smoke.yaml"]
    run = subprocess.Popen(args, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    samples = work / "results/smoke/samples"
    deadline = time.monotonic() + 600
    while not any(samples.glob("*/*/shard-*.npz")) and run.poll() is None:
        assert time.monotonic() < deadline, "sampling never started"
        time.sleep(0.2)
    assert run.poll() is None, "the run finished before it could be killed"
    if kill_signal == "SIGTERM":
        os.kill(run.pid, signal.SIGTERM)  # Snakemake stops its jobs itself
    else:
        os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=120)
    assert not (work / "reports/smoke/tstitch_table.csv").exists()

    if kill_signal == "SIGKILL":
        snakemake(work, "--unlock", *args[3:])
    snakemake(work, *args[3:])  # the default profile reruns incomplete outputs
    table = pd.read_csv(work / "reports/smoke/tstitch_table.csv")
    assert list(table["ratio"]) == [0.0, 0.4, 1.0] and table["ours_fid"].notna().all()
    for shard in samples.glob("*/*/shard-*.npz"):
        assert len(np.load(shard)["images"]) == 20
