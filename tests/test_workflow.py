"""The Snakemake workflow end to end on config/smoke.yaml, plus dry runs of every target.

The smoke run works in a copy of the repository (tmp_path), so the developer's results/
are never touched, and checks: the table and plot exist with the expected rows; a
second run has nothing to do; changing one ratio reruns only that ratio and the reports.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from diffrepro.snakejob import job_counts
from workflow_run import ROOT, SNAKEMAKE, copy_repository, snakemake


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_timing_files_record_the_measurement(smoke_run):
    import json

    table = json.loads((smoke_run / "results/smoke/timing/tstitch.json").read_text())
    timing = next(row for row in table["settings"] if row["setting"] == "r0.4")
    assert timing["batch_size"] == 8 and timing["threads"] == 1
    assert timing["model_steps"] == {"small": 4, "large": 6}
    assert len(timing["times_s"]) == len(timing["pair_ratios"]) == 2
    assert timing["ideal_s"] > 0 and 0 < timing["loop_only_fraction"] < 1
    lo, hi = timing["overhead_ci95"]
    assert lo <= timing["overhead_fraction"] <= hi
    assert timing["baseline"] == {"method": "tstitch", "params": {"ratio": 0.0}}
    assert len(timing["speedup_pairs"]) == 2
    assert timing["speedup_vs_baseline"] > 0


def test_every_job_log_says_where_its_time_went(smoke_run):
    """diffrepro.job_phases: start (process creation to the job's body), model compute, the rest;
    benchmarks/workflow_bench.py sums them."""
    from diffrepro.job_phases import read_phases

    logs = {rule: sorted((smoke_run / "logs/smoke" / rule).rglob("*.log")) for rule in ("sample", "score", "time")}
    assert all(logs.values()), logs
    forked = {rule: 0 for rule in logs}
    for rule, paths in logs.items():
        for path in paths:
            text = path.read_text()
            phases = read_phases(text)
            assert phases is not None, path
            forked[rule] += "started from the fork server" in text
            # the start counts from the job process's creation, also where a forked child ran it
            assert phases["compute_s"] > 0 and phases["start_s"] > 0.05, (path, phases)
            assert phases["total_s"] == pytest.approx(phases["start_s"] + phases["compute_s"] + phases["rest_s"],
                                                      abs=0.01)
    # a local run starts its jobs from the fork server once it is up (diffrepro.forkserver);
    # timing jobs never: a measurement runs in its own process
    assert forked["sample"] > 0 and forked["score"] > 0 and forked["time"] == 0, forked


@pytest.mark.slow
def test_parataa_table_compares_parallel_samplers_with_the_sequential_one(smoke_run):
    import json

    reports = smoke_run / "reports/smoke"
    table = pd.read_csv(reports / "parataa_table.csv")
    assert sorted(table["method"]) == ["parataa"] * 5 + ["picard", "sequential"]
    assert (table["steps"] == 6).all() and (table["iterations_mean"] <= table["solved_steps"]).all()
    assert (table["nfe_mean"] >= table["iterations_mean"]).all()
    parallel = table[table["method"] != "sequential"]
    assert (parallel["converged_fraction"] == 1).all()
    # converged solutions are the sequential samples up to the tolerance, image by image;
    # a variation (the last 2 steps from another class's trajectory) is not
    variation = parallel["variation_steps"] > 0
    assert (parallel[~variation]["max_abs_dev"] < 0.05).all()
    assert parallel[variation]["solved_steps"].tolist() == [2] and (parallel[variation]["max_abs_dev"] > 0.05).all()
    assert parallel[parallel["window_init"] == "release"]["taa_history"].tolist() == ["release"]
    markdown = (reports / "parataa_table.md").read_text()
    assert "## Window entry and TAA history" in markdown and "## Variation" in markdown
    sequential = table[table["method"] == "sequential"].iloc[0]
    assert sequential["max_abs_dev"] == 0 and sequential["speedup"] == 1
    score = json.loads((smoke_run / "results/smoke/scores/parataa/"
                                    "n6-w6-k6-m2-tol0.001-rtol0.001-it6.json").read_text())
    assert score["reference"] == {"method": "sequential", "params": {"steps": 6}, "setting": "n6"}
    assert score["num_samples"] == 12 and len(score["convergence"]["median_residual"]) >= 1
    table = json.loads((smoke_run / "results/smoke/timing/parataa.json").read_text())
    timing = next(row for row in table["settings"] if row["setting"] == "n6-w6-k6-m2-tol0.001-rtol0.001-it6")
    assert timing["batch_size"] == 1 and timing["forward_s"]["window"] == 6
    assert timing["baseline"] == {"method": "sequential", "params": {"steps": 6}}
    assert "overhead_fraction" not in timing  # windows are not whole-batch steps
    claims = (reports / "parataa_claims.md").read_text()
    assert "4-14" in claims and "wall-clock gain on this device" in claims
    assert "Warm start needs fewer iterations" in claims and "no warm-start" not in claims
    for plot in ("parataa_pareto.png", "parataa_convergence.png", "parataa_convergence.svg"):
        assert (reports / plot).stat().st_size > 1000


@pytest.mark.slow
def test_training_tables_curves_and_scores(smoke_run):
    """Every training method trained per seed, scored at every snapshot, tabled and plotted."""
    config = yaml.safe_load((smoke_run / "config/smoke.yaml").read_text())
    training, reports = config["training"], smoke_run / "reports/smoke"
    for table_name in ("speedit", "immiscible"):
        entry = config["tables"][table_name]
        table = pd.read_csv(reports / f"{table_name}_table.csv")
        assert list(table["method"]) == entry["methods"]
        assert (table["seeds"] == len(training["seeds"])).all()
        assert table["fid_final_mean"].notna().all() and (table["iteration_ms"] > 0).all()
        assert table.set_index("method").loc["uniform", "speedup"] == 1.0
        for part in ("curves", "schedules", "cost"):
            assert (reports / f"{table_name}_{part}.png").stat().st_size > 10_000
        assert "paper" in (reports / f"{table_name}_table.md").read_text()
        assert "Limits of this test" in (reports / f"{table_name}_claims.md").read_text()
    speed_row = pd.read_csv(reports / "speedit_table.csv").set_index("method").loc["speed_v1"]
    assert speed_row["paper_speedup"] == 3.3
    table_methods = {m for t in ("speedit", "immiscible") for m in config["tables"][t]["methods"]}
    for method in table_methods:
        score = json.loads((smoke_run / f"results/smoke/training/scores/{method}.json").read_text())
        pairs = {(r["seed"], r["iteration"]) for r in score["rows"]}
        assert pairs == {(s, i) for s in training["seeds"] for i in training["snapshots"]}
        assert all(len(r["validation_loss_by_bin"]) == training["validation"]["bins"] for r in score["rows"])
        hashed = score["provenance"]["file_sha256"]
        assert sum(k.startswith("checkpoint:") for k in hashed) == len(pairs)
        assert score["provenance"]["num_samples"] == training["evaluation"]["num_samples"]
    timing = json.loads((smoke_run / "results/smoke/training/timing.json").read_text())
    assert set(timing["methods"]) == table_methods


@pytest.mark.slow
def test_second_run_has_nothing_to_do(smoke_run):
    result = snakemake(smoke_run, "-n", "reproduce_all", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_changing_one_ratio_reruns_only_that_ratio_and_reports(smoke_run):
    config = yaml.safe_load((smoke_run / "config/smoke.yaml").read_text())
    config["methods"]["tstitch"]["grid"]["ratio"] = [0.0, 0.4, 0.7, 1.0]
    changed = smoke_run / "config/smoke_changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(smoke_run, "-n", "reproduce_tstitch_table", "--configfile", str(changed))
    counts = job_counts(result.stdout)
    assert counts == {"sample": 2, "time_table": 1, "score": 1, "table": 1, "table_page": 1, "figure": 1,
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
    assert "config error: sampling.sampler = 'euler'\n  in: config/bad.yaml, line " in output
    assert "allowed: one of ddim, ddpm, dpmsolver++" in output and len(output.splitlines()) <= 22
    assert "Job stats" not in output and "rule train_denoiser" not in output  # no DAG, no job


@pytest.mark.parametrize("config_file", ["config/default.yaml", "config/smoke.yaml"])
def test_every_reproduce_target_dry_runs(workdir, config_file):
    from diffrepro.report.kinds import table_targets

    tables = yaml.safe_load((ROOT / config_file).read_text())["tables"]
    targets = ["reproduce_all", *table_targets(tables)]
    assert "reproduce_tstitch_table" in targets and "reproduce_speedit_curve" in targets
    # one dry run for all targets: each parse of the Snakefile costs seconds. --forceall plans
    # every job of every target whatever is already built (a target whose config has no
    # table of its kind is an empty target, planned too).
    result = snakemake(workdir, "-n", "--forceall", *targets, "--configfile", config_file)
    planned = job_counts(result.stdout)
    assert all(planned.get(t) == 1 for t in targets), planned


def test_the_lcm_paper_config_plans_one_table_per_step_count(workdir):
    """2, 4 and 8 steps as the released script runs them: separate settings and tables, so no
    step count overwrites another's samples."""
    result = snakemake(workdir, "-n", "reproduce_tstitch_sd_table", "--configfile", "config/paper/tstitch_lcm.yaml")
    planned = job_counts(result.stdout)
    assert planned["table"] == 3 and planned["time_table"] == 3, planned


def test_the_controlnet_paper_config_plans_a_table_per_controlnet(workdir):
    """T-Stitch's SDXL canny / depth / pose scripts: one ControlNet each, fetched as a hub model
    beside SDXL-base and SSD-1B, one table each."""
    targets = [f"reproduce_tstitch_controlnet_{kind}_table" for kind in ("canny", "depth", "pose")]
    result = snakemake(workdir, "-n", *targets, "--configfile", "config/paper/tstitch_controlnet_sdxl.yaml")
    planned = job_counts(result.stdout)
    assert planned["table"] == 3 and planned["fetch_hub_model"] == 5, planned  # 2 U-Nets + 3 ControlNets
    # each ControlNet's control images, made once from the captions' COCO images for its 6 ratios
    assert planned["control_images"] == 3, planned
    for repository in ("controlnet_canny_sdxl", "controlnet_depth_sdxl", "controlnet_pose_sdxl"):
        assert f"{repository}.hub.json" in result.stdout
        assert f"control/{repository}.zip" in result.stdout


@pytest.mark.slow
def test_killed_run_resumes(smoke_run, tmp_path):
    """Kill a run with SIGTERM once sampling has started, resume it, kill the resumed run
    with SIGKILL a few shards later, and resume again: the job graph finishes.

    SIGTERM (kill, a scheduler) lets Snakemake clean up, so a plain rerun resumes. After
    SIGKILL (or a power loss) Snakemake's directory lock remains and `--unlock` comes first,
    as Snakemake's own message says. To keep the suite short the smoke run's models are
    reused (its T-Stitch samples and scores removed) and the target is one setting's score:
    its four shards and the two score jobs.
    """
    import os
    import signal
    import time

    work = tmp_path / "work"
    shutil.copytree(smoke_run, work, symlinks=True)
    for lost in ("results/smoke/samples/tstitch", "results/smoke/scores/tstitch"):
        shutil.rmtree(work / lost)
    # r0.4 is scored against its reference r0: four shards and two score jobs
    target = "results/smoke/scores/tstitch/r0.4.json"
    args = ["--cores", "2", target, "--configfile", "config/smoke.yaml"]
    samples = work / "results/smoke/samples/tstitch"
    planned = job_counts(snakemake(work, "-n", *args).stdout)
    assert planned == {"sample": 4, "score": 2}, planned  # nothing else is redone

    def start_and_kill_after(shards: int, kill) -> None:
        run = subprocess.Popen([*SNAKEMAKE, *args], cwd=work, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 600
        while len(list(samples.glob("*/shard-*.npz"))) < shards and run.poll() is None:
            assert time.monotonic() < deadline, f"{shards} shards never appeared"
            time.sleep(0.1)
        assert run.poll() is None, f"the run finished before {shards} shards were written"
        kill(run.pid)
        run.wait(timeout=120)
        assert not (work / target).exists()

    start_and_kill_after(1, lambda pid: os.kill(pid, signal.SIGTERM))
    start_and_kill_after(3, lambda pid: os.killpg(pid, signal.SIGKILL))
    snakemake(work, "--unlock", *args)
    snakemake(work, *args)  # the default profile reruns incomplete outputs
    score = json.loads((work / target).read_text())
    assert score["num_samples"] == 40 and score["metrics"]["fid"] >= 0
    shards = sorted(samples.glob("*/shard-*.npz"))
    assert len(shards) == 4 and all(len(np.load(s)["images"]) == 20 for s in shards)


@pytest.mark.slow
def test_results_from_elsewhere_are_reused_after_touch(smoke_run, tmp_path):
    """A fresh clone given the result files of another run (a cluster's, copied over) has no
    Snakemake metadata and arbitrary modification times; `--touch` marks the files up to
    date without running a job, after which nothing is to be done."""
    fresh = copy_repository(tmp_path)
    for name in ("results", "resources", "reports/smoke"):
        shutil.copytree(smoke_run / name, fresh / name, copy_function=shutil.copy)
    for checkpoint in (fresh / "resources").rglob("*.safetensors"):
        checkpoint.touch()  # copied last: everything downstream now looks out of date
    table = (fresh / "reports/smoke/tstitch_table.csv").read_bytes()

    planned = snakemake(fresh, "-n", "reproduce_all", "--configfile", "config/smoke.yaml")
    assert job_counts(planned.stdout).get("sample", 0) > 0
    snakemake(fresh, "--touch", "--cores", "1", "reproduce_all", "--configfile", "config/smoke.yaml")
    again = snakemake(fresh, "-n", "reproduce_all", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert (fresh / "reports/smoke/tstitch_table.csv").read_bytes() == table
    assert not any(log.stat().st_size for log in (fresh / "logs").rglob("*.log"))  # no job ran
