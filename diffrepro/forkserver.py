"""A fork server for local workflow jobs: torch is imported once per Snakemake run, not once per job.

Importing torch takes about 1.5-2 s on the 2-core reference machine; the embedded default runs
dozens of small jobs, so that import was most of each job's overhead (issue: per-setting
overhead <= 2 s). For a local run the Snakefile's onstart starts this server (`python -m
diffrepro.forkserver`): it imports torch and nothing of diffrepro, then waits on a Unix socket.
A job script calls `delegate(snakemake, __file__)` first thing: where the server answers, the
script is sent to it; the server forks a child that runs the script from its first line (so
diffrepro and the job's code are imported fresh in every job, never stale), with the job's
working directory, environment and stdout / stderr (passed as file descriptors), and the
script's exit status goes back to the waiting job process, which exits with it.

- Where no server answers (a cluster job, a dry run, `local_forkserver: false`, a server not
  up yet) the script simply runs in its own process, as before: the server is never needed.
- Timing jobs are not sent to it: a measurement runs in its own fresh process, as before.
- The server runs no torch operation, so the child's thread pools start fresh and the job's
  own torch.set_num_threads applies. Every job seeds what it draws; its outputs are the bits a
  fresh process gives (tests/test_forkserver.py, and the tstitch table was compared whole).
- If the job process dies (Snakemake stops a job) the child sees its socket close and exits.
  The server exits when the Snakemake process that started it is gone.
- A job's `start` in its `job phases` line still counts from the job process's creation
  (DIFFREPRO_JOB_CREATED), so the benchmark's overhead includes the waiting process.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

SOCKET_ENV = "DIFFREPRO_FORKSERVER"
FORKED_ENV = "DIFFREPRO_FORKED"
CREATED_ENV = "DIFFREPRO_JOB_CREATED"
# third-party modules every torch job imports (never diffrepro's own: a job imports those fresh)
PRELOAD = ("torch", "numpy", "scipy.special", "scipy.linalg", "jsonschema", "snakemake.script", "diffusers",
           "safetensors.torch")
_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!i")


def socket_path(workdir: str | os.PathLike) -> Path:
    """Per working directory and Snakemake process (a Unix socket path is at most ~100 bytes)."""
    import hashlib

    digest = hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"diffrepro-forkserver-{digest}-{os.getpid()}.sock"


# -- the job's side ------------------------------------------------------------------------
def delegate(snakemake, script: str) -> None:
    """Run this job script in the fork server and exit with its status; return at once (the
    script then runs here) where there is no server or this already is the forked child."""
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(FORKED_ENV) or not os.path.exists(path):
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        return  # the server is gone: run here
    request = pickle.dumps({"script": os.path.realpath(script), "snakemake": snakemake, "cwd": os.getcwd(),
                            "env": dict(os.environ), "created": _created()}, protocol=4)
    sys.stdout.flush()
    sys.stderr.flush()
    socket.send_fds(connection, [_HEADER.pack(len(request))], [0, 1, 2])
    connection.sendall(request)
    status = _recv_exactly(connection, _STATUS.size)
    connection.close()
    if status is None:  # the child died without a word (a crash): a failed job
        print("diffrepro fork server: the job's process ended without an exit status", file=sys.stderr)
        os._exit(1)
    os._exit(_STATUS.unpack(status)[0])


def _created() -> float | None:
    from .job_phases import process_started_s

    return process_started_s()


def _recv_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# -- the server's side ---------------------------------------------------------------------
def serve(path: str | os.PathLike, parent: int, preload=PRELOAD, poll_s: float = 0.5) -> None:
    """Import `preload`, then fork one child per job until the parent process is gone."""
    import importlib

    for module in preload:
        importlib.import_module(module)
    path = Path(path)
    if path.exists():
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, _terminate)
    try:
        while _alive(parent):
            ready, _, _ = select.select([server], [], [], poll_s)
            if not ready:
                continue
            connection, _ = server.accept()
            if os.fork() == 0:
                server.close()
                for signum in (signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                _run_child(connection)  # never returns
            connection.close()
    finally:
        server.close()
        if path.exists():
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process under that pid: ours is gone
        return False
    return True


def _terminate(signum, frame):
    raise SystemExit(0)  # through serve's finally: the socket file is removed


def _run_child(connection: socket.socket) -> None:
    status = 1
    try:
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        request = pickle.loads(_recv_exactly(connection, size))
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[FORKED_ENV] = "1"
        if request["created"] is not None:
            os.environ[CREATED_ENV] = repr(request["created"])
        # the job process going away (Snakemake stopped the job) ends this one too
        threading.Thread(target=_exit_when_closed, args=(connection,), daemon=True).start()
        status = _run_script(request["script"], request["snakemake"])
    except BaseException:  # noqa: BLE001 - anything: reported as a failed job
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            connection.sendall(_STATUS.pack(status))
        finally:
            os._exit(status)


def _run_script(script: str, snakemake) -> int:
    """The script as Snakemake's preamble would run it: `snakemake` and `__file__` set."""
    import runpy

    sys.argv = [script]
    try:
        runpy.run_path(script, init_globals={"snakemake": snakemake}, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - printed as a fresh interpreter would
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _exit_when_closed(connection: socket.socket) -> None:
    try:
        while connection.recv(1):
            pass
    except OSError:
        pass
    os._exit(143)


# -- the Snakefile's side ------------------------------------------------------------------
_STARTED: list = []  # the servers this process started (stop_all ends them)


def start(workdir: str | os.PathLike, log: str | os.PathLike | None = None):
    """Start the server for this Snakemake process; jobs find it through SOCKET_ENV."""
    import subprocess

    path = socket_path(workdir)
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "diffrepro.forkserver", str(path), str(os.getpid())],
                               stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    os.environ[SOCKET_ENV] = str(path)
    _STARTED.append(process)
    return process


def stop_all() -> None:
    while _STARTED:
        stop(_STARTED.pop())


def stop(process) -> None:
    os.environ.pop(SOCKET_ENV, None)
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except Exception:  # noqa: BLE001
            process.kill()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
