"""Glue for workflow/scripts: log to the rule's log file, set threads from the rule."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


@contextlib.contextmanager
def job(snakemake, torch_threads: int | None = None):
    """Redirect output to the rule's log and configure torch; yields a `log` function."""
    from .jobs import configure_runtime

    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        configure_runtime(torch_threads or snakemake.threads,
                          snakemake.config.get("allow_downloads", False))

        def log(message: str) -> None:
            print(message, flush=True)

        try:
            yield log
        except BaseException:
            import traceback
            traceback.print_exc(file=f)
            raise
    sys.stdout.flush()
