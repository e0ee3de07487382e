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
