"""Checks a cluster run makes before it submits anything.

A partition name that SLURM does not know makes sbatch fail, but only when the first job
of that rule is submitted, which can be hours into a run when only one rule (say, sampling
on a GPU partition) names it. The workflow's `onstart` handler calls
`check_slurm_partitions` with every job about to run, so a wrong name fails at once, with
the partitions that do exist. (Snakemake runs `onstart` for real runs only, not `-n`.)
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from typing import Iterable


class ClusterConfigError(ValueError):
    """The profile asks for something the cluster does not have."""


def available_partitions() -> set[str]:
    """Partition names from sinfo, hidden ones included (the default one carries a '*',
    dropped here)."""
    try:
        out = subprocess.run(["sinfo", "--all", "--noheader", "--format=%R"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ClusterConfigError(f"cannot list SLURM partitions with sinfo ({err}); is this "
                                 "a SLURM login node?") from err
    return {name.strip().rstrip("*") for name in out.split() if name.strip()}


def requested_partitions(jobs: Iterable) -> dict[str, set[str]]:
    """{partition: rules whose jobs ask for it} for jobs with a `slurm_partition` resource.
    Jobs sent to another cluster of a multi-cluster site (`clusters`, `slurm_cluster`) are
    left to sbatch: this host's sinfo does not list that cluster's partitions."""
    requested: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        partition = job.resources.get("slurm_partition")
        if job.resources.get("clusters") or job.resources.get("slurm_cluster"):
            continue
        if partition:
            requested[str(partition)].add(job.rule.name)
    return requested


def check_slurm_partitions(jobs: Iterable, available: set[str] | None = None) -> None:
    requested = requested_partitions(jobs)
    if not requested:
        return  # SLURM's default partition
    available = available_partitions() if available is None else available
    unknown = {name: rules for name, rules in requested.items() if name not in available}
    if unknown:
        wrong = "; ".join(f"{name!r} (rules: {', '.join(sorted(rules))})"
                          for name, rules in sorted(unknown.items()))
        raise ClusterConfigError(
            f"SLURM has no partition {wrong}. Partitions on this cluster: "
            f"{', '.join(sorted(available)) or 'none'}. Set slurm_partition in your profile "
            "(default-resources, or set-resources per rule; see docs/cluster.md, 'Adapting the profile "
            "to your site'). Nothing was submitted.")
