"""Where a workflow job's wall time goes, for benchmarks/workflow_bench.py: the start (the
interpreter, Snakemake's script preamble, the imports and torch's set-up, measured from the
process's creation), model compute (sampling batches, scoring features, training iterations,
timed runs: the code paths wrapped in `compute()`), and the rest (loading, writing, arithmetic).
Every job's log ends with one `job phases: {...}` line (diffrepro.snakejob)."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path

PREFIX = "job phases: "
_compute_s = 0.0


@contextlib.contextmanager
def compute():
    """Count the enclosed time as model compute (not nested: the outermost block counts)."""
    global _compute_s
    began = time.perf_counter()
    try:
        yield
    finally:
        _compute_s += time.perf_counter() - began


def compute_seconds() -> float:
    return _compute_s


def process_started_s() -> float | None:
    """When this process was created, in seconds since boot (CLOCK_BOOTTIME), to the kernel's
    clock tick. Not psutil's create_time: that adds the boot time, which /proc/stat gives in
    whole seconds, so every age it implies is off by the same fraction of a second (0.7 s on
    the reference machine once), larger than the overheads measured here."""
    try:
        import os

        stat = open("/proc/self/stat").read()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # not Linux: the start is then not measured
        return None


def process_age_s() -> float | None:
    """Seconds since this job's process was created (None where it cannot be told); in the
    fork server (diffrepro.forkserver), since the job process that waits for this one was."""
    import os

    from .forkserver import CREATED_ENV

    started = float(os.environ[CREATED_ENV]) if os.environ.get(CREATED_ENV) else process_started_s()
    if started is None:
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)


def phases_line(started_s: float | None, body_s: float) -> str:
    """The log line: start_s (process creation -> job body ready), compute_s, rest_s, total_s."""
    compute_s = compute_seconds()
    record = {"start_s": None if started_s is None else round(started_s, 3), "compute_s": round(compute_s, 3),
              "rest_s": round(max(0.0, body_s - compute_s), 3),
              "total_s": None if started_s is None else round(started_s + body_s, 3)}
    return PREFIX + json.dumps(record, sort_keys=True)


def read_phases(log_text: str) -> dict | None:
    for line in reversed(log_text.splitlines()):
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    return None


def logged_phases(logs: Path) -> dict[Path, dict]:
    """The `job phases` of every job log under `logs` (a run's log folder), by path, in path
    order; logs without the line (a job killed before it) are left out."""
    found = {}
    for path in sorted(logs.rglob("*.log")):
        phases = read_phases(path.read_text(errors="replace"))
        if phases is not None:
            found[path] = phases
    return found


def table_costs(job_seconds: dict[str, float], job_cores: dict[str, int],
                table_jobs: dict[str, set[str]]) -> dict[str, dict]:
    """What each table costs in a cold run, in core-seconds (a job's wall time x the cores it
    reserves): `all` is every job of its DAG (the table built alone), `own` the jobs no other
    table needs (what dropping the table saves), `shared` the rest. `job_seconds` is keyed by
    log path (a run's `job phases` lines), `table_jobs` by table (the log paths of its DAG, from
    a dry run, diffrepro.snakejob.planned_jobs); jobs without a measured time count 0 and are
    counted in `unmeasured`."""
    users = Counter(log for logs in table_jobs.values() for log in logs)
    costs = {}
    for table, logs in table_jobs.items():
        core_s = {log: job_seconds.get(log, 0.0) * job_cores.get(log, 1) for log in logs}
        own = sum(s for log, s in core_s.items() if users[log] == 1)
        total = sum(core_s.values())
        costs[table] = {"jobs": len(logs), "all_core_s": round(total, 1), "own_core_s": round(own, 1),
                        "shared_core_s": round(total - own, 1),
                        "unmeasured": sum(1 for log in logs if log not in job_seconds)}
    return costs
