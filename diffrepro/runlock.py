"""One timing job at a time per machine, whichever run of the project starts it.

Timings are only right when nothing else runs beside them. Within one run Snakemake sees
to it (a timing job reserves every core), but two runs in one directory can overlap: two
suites (disjoint outputs, so Snakemake's own lock lets both start) or a second run started
after `--unlock` beside a live one. Every timing job therefore holds an exclusive flock on
a file under results/. The kernel drops a flock when its process ends, however it ends, so
a lock file left behind is harmless and never needs deleting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator

HOST = socket.gethostname()


class LockHeld(RuntimeError):
    """Another process holds the lock: the message names the file, its holder and what to do."""


@contextlib.contextmanager
def hold(template: str, log=print) -> Iterator[Path]:
    """Hold an exclusive lock on `template` ({host}: this machine's name) for the block, or
    raise LockHeld at once if another process holds it. Where the file system has no flock
    (some cluster file systems), say so and go on unguarded rather than refuse every job."""
    path = Path(template.format(host=HOST))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                log(f"note: cannot lock {path} ({err.strerror}); timing runs without the guard")
                yield path
                return
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockHeld(
                f"{path} is held by {holder}: another run is timing on this machine, and timings must "
                f"not overlap. Wait for it to end, then rerun (the lock ends with its process; never "
                f"delete the file to get past it).") from None
        # who holds it, for the message above (flock has no owner to ask)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {HOST} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race other lockers)
