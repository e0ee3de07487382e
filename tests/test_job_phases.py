"""diffrepro.job_phases: the time a job spends in model compute, and its log line."""

import time

import pytest

from diffrepro import job_phases


def test_compute_blocks_add_up_and_the_line_reads_back(monkeypatch):
    monkeypatch.setattr(job_phases, "_compute_s", 0.0)
    with job_phases.compute():
        time.sleep(0.05)
    with job_phases.compute():
        time.sleep(0.02)
    spent = job_phases.compute_seconds()
    assert 0.07 <= spent < 0.5
    phases = job_phases.read_phases("a log line\n" + job_phases.phases_line(1.5, body_s=spent + 0.25) + "\n")
    assert phases["start_s"] == 1.5 and phases["compute_s"] == round(spent, 3)
    assert phases["rest_s"] == pytest.approx(0.25, abs=0.002) and phases["total_s"] == round(1.75 + spent, 3)
    assert job_phases.read_phases("no phases here") is None


def test_the_process_age_is_measured():
    age = job_phases.process_age_s()
    assert age is not None and 0 < age < 24 * 3600


def test_the_workflow_benchmark_sums_the_phases_per_rule_and_setting(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from workflow_bench import job_phases_summary

    def write(rel, start, compute, rest):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("work\n" + job_phases.PREFIX +
                        f'{{"compute_s": {compute}, "rest_s": {rest}, "start_s": {start}, "total_s": {start + compute + rest}}}\n')

    write("sample/tstitch/r0/shard-0.log", 3.0, 20.0, 1.0)
    write("sample/tstitch/r0/shard-1.log", 3.0, 20.0, 1.0)
    write("score/tstitch/r0.log", 3.5, 2.0, 0.5)
    write("score/tstitch/r0.5.log", 3.5, 1.0, 0.5)
    write("train_denoiser/large.log", 3.0, 100.0, 0.0)
    (tmp_path / "table.log").write_text("a job killed before its phases line\n")
    summary = job_phases_summary(tmp_path, wall_s=100.0, threads=2)
    assert summary["per_rule"]["sample"] == {"jobs": 2, "start_s": 6.0, "compute_s": 40.0, "rest_s": 2.0}
    assert summary["per_setting_overhead_s"]["settings"] == {"r0": 12.0, "r0.5": 4.0}
    assert summary["per_setting_overhead_s"]["max"] == 12.0
    assert summary["compute_share_of_job_time"] == round(143 / (143 + 16 + 3), 4)  # compute / (compute + start + rest)


# A dry run's job blocks as Snakemake 9 prints them (abridged): a 2-core job, a 1-core job with
# two logs, and the target, which has no log.
DRY_RUN = """Building DAG of jobs...

[Fri Dec  4 14:51:23 2026]
rule train_denoiser:
    output: resources/checkpoints/digits/large.safetensors
    log: logs/digits/train_denoiser/large.log
    jobid: 3
    threads: 2
    resources: tmpdir=/tmp, runtime=60, gpu=0, cpus_per_task=2, mem_mb=4000

[Fri Dec  4 14:51:23 2026]
rule sample:
    output: results/digits/samples/tstitch/r0/shard-0.npz
    log: logs/digits/sample/tstitch/r0/shard-0.log, logs/digits/sample/tstitch/r0/shard-0.err
    jobid: 2
    resources: tmpdir=/tmp, runtime=60, gpu=0, cpus_per_task=1, mem_mb=4000

[Fri Dec  4 14:51:23 2026]
localrule reproduce_tstitch_table:
    input: reports/digits/tstitch_table.csv
    jobid: 0
    resources: tmpdir=/tmp

Job stats:
job      count
-----  -------
total        3
"""


def test_a_dry_runs_jobs_are_read_as_log_and_cores():
    from diffrepro.snakejob import planned_jobs

    assert planned_jobs(DRY_RUN) == {"logs/digits/train_denoiser/large.log": 2,
                                     "logs/digits/sample/tstitch/r0/shard-0.log": 1}


def test_table_costs_split_each_tables_jobs_into_its_own_and_shared_ones():
    seconds = {"train/large.log": 100.0, "train/small.log": 20.0, "sample/a.log": 30.0, "sample/b.log": 7.0}
    cores = {"train/large.log": 2, "train/small.log": 2}
    tables = {"a": {"train/large.log", "train/small.log", "sample/a.log"},
              "b": {"train/large.log", "sample/b.log", "sample/never_ran.log"}}
    costs = job_phases.table_costs(seconds, cores, tables)
    assert costs["a"] == {"jobs": 3, "all_core_s": 270.0, "own_core_s": 70.0, "shared_core_s": 200.0,
                          "unmeasured": 0}
    assert costs["b"] == {"jobs": 3, "all_core_s": 207.0, "own_core_s": 7.0, "shared_core_s": 200.0,
                          "unmeasured": 1}
