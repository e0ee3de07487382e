"""Glue for workflow/scripts: log to the rule's log file, set threads from the rule."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path


@contextlib.contextmanager
def job(snakemake, torch_threads: int | None = None, uses_torch: bool = True):
    """Redirect output to the rule's log and configure torch; yields a `log` function.
    `uses_torch=False` skips torch entirely (importing it takes seconds)."""
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        from .methods import register_aliases

        register_aliases(snakemake.config.get("methods", {}))
        if uses_torch:
            from .jobs import configure_runtime

            configure_runtime(torch_threads or snakemake.threads,
                              snakemake.config["allow_downloads"])

        def log(message: str) -> None:
            print(message, flush=True)

        try:
            yield log
        except BaseException:
            import traceback
            traceback.print_exc(file=f)
            raise


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table Snakemake prints (a run or a dry run)."""
    counts = {}
    for line in output.split("Job stats:")[-1].splitlines():
        match = re.match(r"^([a-z_0-9]+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts
