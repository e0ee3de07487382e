"""The smoke DAG through profiles/slurm on a real single-node SLURM cluster.

The cluster (tests/slurm_cluster.py) runs munged, slurmctld and slurmd on this host with
accounting off, so the profile's squeue-based status is what sees jobs finish. Skipped,
with the reason, where SLURM cannot run (not installed, not root, a real cluster's config).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diffrepro.snakejob import job_counts
from slurm_cluster import PARTITION, LocalSlurmCluster, unavailable_reason
from workflow_run import SMOKE, copy_repository, snakemake

# A group job (three score jobs) must fit on the test node, and status checks start after
# 1 s rather than the profile's 40 (jobs here take seconds).
CLUSTER = ("--profile", "profiles/slurm", "--cores", "4",
           "--slurm-init-seconds-before-status-checks", "1")
# Timing columns differ between any two runs; everything else is a function of the seeds.
TIMING_COLUMN = re.compile(r"time|speedup|overhead|ideal|per_s|_p50|_p90")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    test_cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        test_cluster.start()
        yield test_cluster
    finally:
        test_cluster.stop()


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory):
    """The whole table's DAG through SLURM, from an empty results directory."""
    work = copy_repository(tmp_path_factory.mktemp("cluster_run"))
    result = snakemake(work, "reproduce_tstitch_table", *CLUSTER, *SMOKE)
    return work, result.stdout + result.stderr


def submitted_rules(output: str) -> dict[str, int]:
    """SLURM submissions per rule (or group) from the plugin's messages."""
    counts: dict[str, int] = {}
    for name in re.findall(r"submitted with SLURM jobid \d+ \(log: \S+/slurm_logs/(\w+)/", output):
        counts[name] = counts.get(name, 0) + 1
    return counts


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in table.columns if not TIMING_COLUMN.search(c)]]


@pytest.mark.slow
def test_cluster_run_equals_a_local_run(cluster_run, smoke_run):
    work, output = cluster_run
    submitted = submitted_rules(output)
    # training, every sampling shard and the table's one timing job are SLURM jobs of their
    # own; the three score jobs are grouped; tables, figures and report pages run locally
    assert submitted.pop("rule_sample") == 6 and submitted.pop("rule_time_table") == 1
    assert submitted.pop("rule_train_denoiser") == 2 and submitted.pop("rule_train_classifier") == 1
    assert submitted.pop("rule_reference_stats") == 1
    assert 1 <= submitted.pop("group_scoring_score") <= 2 and submitted == {}, submitted
    ours = pd.read_csv(work / "reports/smoke/tstitch_table.csv")
    local = pd.read_csv(smoke_run / "reports/smoke/tstitch_table.csv")
    assert len(comparable(ours).columns) >= 8  # FIDs, IS, accuracy, steps, paper columns
    pd.testing.assert_frame_equal(comparable(ours), comparable(local))
    assert (work / "reports/smoke/tstitch_table.html").stat().st_size > 1000


@pytest.mark.slow
def test_a_missing_partition_fails_before_anything_is_submitted(cluster, tmp_path):
    """A site profile sends sampling to a partition that does not exist: the run stops before
    the first submission (not hours later, when sampling would start), naming the partition,
    the rules that ask for it and the partitions there are."""
    work = copy_repository(tmp_path)
    site = work / "profiles/mysite"
    shutil.copytree(work / "profiles/slurm", site)
    profile = yaml.safe_load((site / "config.yaml").read_text())
    profile["set-resources"]["sample"] = {"slurm_partition": "gpu_nosuch"}
    (site / "config.yaml").write_text(yaml.safe_dump(profile))
    args = [a if a != "profiles/slurm" else "profiles/mysite" for a in CLUSTER]
    result = snakemake(work, "reproduce_tstitch_table", *args, *SMOKE, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "SLURM has no partition 'gpu_nosuch' (rules: sample)" in output
    assert f"Partitions on this cluster: {PARTITION}" in output
    assert "submitted with SLURM jobid" not in output
    assert not (work / "results").exists() and not (work / "resources").exists()


@pytest.mark.slow
def test_failed_cluster_job_names_its_logs_and_the_rerun_redoes_only_it(cluster_run):
    """A shard job fails on the cluster (its checkpoint is corrupt on the shared disk): the
    run fails naming the job's logs; after the file is fixed, only that shard and what
    depends on it run again."""
    work, _ = cluster_run
    checkpoint = work / "resources/checkpoints/smoke/small.safetensors"
    good, stat = checkpoint.read_bytes(), checkpoint.stat()
    shard = work / "results/smoke/samples/tstitch/r0.4/shard-0.npz"
    # As if the run had not got that far: the shard, its score and the table are missing
    # (Snakemake does not rebuild a missing intermediate file whose consumers exist).
    for lost in (shard, *work.glob("results/smoke/scores/tstitch/r0.4.*"),
                 work / "reports/smoke/tstitch_table.csv"):
        lost.unlink()
    checkpoint.write_bytes(good[:-64] + bytes(64))
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only the bytes changed

    failed = snakemake(work, "reproduce_tstitch_table", *CLUSTER, *SMOKE, check=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    job_log = "logs/smoke/sample/tstitch/r0.4/shard-0.log"
    assert job_log in output
    assert "sha256" in (work / job_log).read_text()  # the job's own error, in its log
    slurm_logs = re.findall(r"(/\S+/slurm_logs/rule_sample/\S+\.log)", output)
    assert slurm_logs and all(Path(p).exists() for p in slurm_logs)  # kept for a failed job

    checkpoint.write_bytes(good)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    planned = snakemake(work, "-n", "reproduce_tstitch_table", *CLUSTER, *SMOKE)
    assert job_counts(planned.stdout) == {"sample": 1, "score": 1, "table": 1, "table_page": 1,
                                          "figure": 1, "reproduce_tstitch_table": 1}
    # the failed job itself now succeeds on the cluster (the rest is the dry run above)
    snakemake(work, str(shard.relative_to(work)), *CLUSTER, *SMOKE)
    assert shard.exists()


class FakeJob:
    def __init__(self, rule: str, partition: str | None):
        self.rule = type("Rule", (), {"name": rule})()
        self.resources = {"slurm_partition": partition} if partition else {}


def test_partition_check_names_the_unknown_partition_its_rules_and_the_known_ones():
    from diffrepro.cluster import ClusterConfigError, check_slurm_partitions

    jobs = [FakeJob("train_denoiser", "cpu"), FakeJob("sample", "gpu_a100"),
            FakeJob("time", "gpu_a100"), FakeJob("score", None)]
    with pytest.raises(ClusterConfigError) as err:
        check_slurm_partitions(jobs, available={"cpu", "gpu"})
    message = str(err.value)
    assert "'gpu_a100' (rules: sample, time)" in message and "cpu, gpu" in message
    assert "set-resources" in message and "'cpu'" not in message
    check_slurm_partitions(jobs[:1] + jobs[3:], available={"cpu"})  # all known: no error
    check_slurm_partitions([FakeJob("score", None)], available=set())  # default partition
