"""Glue for workflow/scripts: log to the rule's log file, set threads from the rule."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path


@contextlib.contextmanager
def job(snakemake, torch_threads: int | None = None, uses_torch: bool = True, exclusive: str | None = None):
    """Redirect output to the rule's log and configure torch; yields a `log` function.
    `uses_torch=False` skips torch entirely (importing it takes seconds). `exclusive`: a lock
    file (diffrepro.runlock) held for the whole job; held elsewhere, the job stops at once."""
    from .forkserver import FORKED_ENV
    from .job_phases import phases_line, process_age_s

    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f, _exclusive(exclusive, f), \
            contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        from .methods import register_aliases

        register_aliases(snakemake.config.get("methods", {}))
        if uses_torch:
            from .jobs import configure_runtime

            configure_runtime(torch_threads or snakemake.threads,
                              snakemake.config["allow_downloads"])
        started, ready = process_age_s(), time.perf_counter()
        if os.environ.get(FORKED_ENV):
            print("started from the fork server (diffrepro.forkserver): torch was imported there", flush=True)

        def log(message: str) -> None:
            print(message, flush=True)

        try:
            yield log
        except BaseException:
            import traceback
            traceback.print_exc(file=f)
            raise
        print(phases_line(started, time.perf_counter() - ready), flush=True)


@contextlib.contextmanager
def _exclusive(template: str | None, log_file):
    """Hold the lock, or exit with its message: on the terminal (Snakemake shows a script's
    stderr) and in the job's log, without a traceback."""
    if template is None:
        yield
        return
    from .runlock import LockHeld, hold

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold(template, log=lambda message: print(message, file=log_file, flush=True)))
        except LockHeld as err:
            print(err, file=log_file, flush=True)
            raise SystemExit(f"error: {err}") from None
        yield


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table Snakemake prints (a run or a dry run)."""
    counts = {}
    for line in output.split("Job stats:")[-1].splitlines():
        match = re.match(r"^([a-z_0-9]+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def planned_jobs(output: str) -> dict[str, int]:
    """The jobs a (dry) run lists, as {log path: cores it reserves}: each job block's `log:`
    (the first, where a rule names several) and its `cpus_per_task` resource (1 where absent).
    Jobs without a log (the reproduce_* targets) are left out."""
    jobs = {}
    for block in re.split(r"\n\s*\n", output):
        if not re.search(r"^\s*(local)?rule \w+:", block, flags=re.MULTILINE):
            continue
        log = re.search(r"^\s*log: ([^,\n]+)", block, flags=re.MULTILINE)
        if log is None:
            continue
        cores = re.search(r"cpus_per_task=(\d+)", block)
        jobs[log.group(1).strip()] = int(cores.group(1)) if cores else 1
    return jobs
