"""The fork server of local runs (diffrepro.forkserver): a job script sent to it runs in a child
forked from a process that imported torch, with the job's working directory, environment,
stdout / stderr and exit status; where no server answers, the script runs in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diffrepro import forkserver

JOB = textwrap.dedent('''
    import os, sys, types
    from diffrepro.forkserver import delegate
    snakemake = types.SimpleNamespace(output=[sys.argv[2]], params={"exit": int(sys.argv[3])})
    delegate(snakemake, sys.argv[1])
    # reached only where the job runs in its own process
    exec(open(sys.argv[1]).read(), {"snakemake": snakemake, "__file__": sys.argv[1], "__name__": "__main__"})
''')

SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from diffrepro.job_phases import process_age_s
    record = {"pid": os.getpid(), "age": process_age_s(), "cwd": os.getcwd(), "env": os.environ.get("JOB_VALUE"),
              "torch_loaded_before": "torch" in sys.modules, "forked": os.environ.get("DIFFREPRO_FORKED")}
    with open(snakemake.output[0], "w") as f:
        json.dump(record, f)
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    code = snakemake.params["exit"]
    if code == 99:
        time.sleep(60)
    if code == 98:
        raise RuntimeError("the job failed")
    sys.exit(code)
''')


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setattr(forkserver, "socket_path", lambda workdir: tmp_path / "fs.sock")
    process = forkserver.start(tmp_path, log=tmp_path / "logs" / "forkserver.log")
    for _ in range(200):  # torch's import
        if (tmp_path / "fs.sock").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / "fs.sock").exists(), (tmp_path / "logs" / "forkserver.log").read_text()
    yield process
    forkserver.stop(process)
    monkeypatch.delenv(forkserver.SOCKET_ENV, raising=False)


def run_job(tmp_path, code: int, env=None, wait=True):
    (tmp_path / "script.py").write_text(SCRIPT)
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "work").mkdir(exist_ok=True)
    out = tmp_path / f"out-{code}.json"
    args = [sys.executable, str(tmp_path / "job.py"), str(tmp_path / "script.py"), str(out), str(code)]
    environment = {**os.environ, "JOB_VALUE": "from the job", **(env or {})}
    if not wait:
        return subprocess.Popen(args, cwd=tmp_path / "work", env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True), out
    done = subprocess.run(args, cwd=tmp_path / "work", env=environment, capture_output=True, text=True, timeout=60)
    return done, json.loads(out.read_text()) if out.exists() else None


def test_a_job_runs_in_a_forked_child_with_its_own_cwd_env_streams_and_status(tmp_path, server):
    done, record = run_job(tmp_path, 0)
    assert done.returncode == 0, done.stderr
    assert record["forked"] == "1" and record["torch_loaded_before"]  # forked from the server
    assert record["cwd"] == str(tmp_path / "work") and record["env"] == "from the job"
    # the job's age counts from the waiting job process's creation, not the fork
    assert 0.01 < record["age"] < 5
    assert done.stdout == "to stdout\n" and "to stderr" in done.stderr
    done, _ = run_job(tmp_path, 3)
    assert done.returncode == 3
    done, _ = run_job(tmp_path, 98)
    assert done.returncode == 1 and "RuntimeError: the job failed" in done.stderr


def test_a_process_age_is_measured_to_the_clock_tick():
    """A fresh interpreter is well under a second old when it asks (psutil's create_time,
    built on a boot time in whole seconds, was off by up to a second)."""
    done = subprocess.run([sys.executable, "-c", "from diffrepro.job_phases import process_age_s; "
                           "print(process_age_s())"], capture_output=True, text=True, check=True)
    assert 0 < float(done.stdout) < 0.5


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path):
    env = {forkserver.SOCKET_ENV: str(tmp_path / "none.sock")}
    done, record = run_job(tmp_path, 0, env=env)
    assert done.returncode == 0, done.stderr
    assert record["forked"] is None and not record["torch_loaded_before"]
    done, _ = run_job(tmp_path, 4, env=env)
    assert done.returncode == 4


def test_a_stopped_job_stops_its_child_and_the_server_ends_with_its_parent(tmp_path, server):
    process, out = run_job(tmp_path, 99, wait=False)
    for _ in range(200):
        if out.exists() and out.read_text():
            break
        time.sleep(0.05)
    child = json.loads(out.read_text())["pid"]
    assert child != process.pid
    process.send_signal(signal.SIGTERM)  # as Snakemake stops a job
    process.wait(timeout=10)
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    # a server whose parent is gone exits and removes its socket
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    serving = subprocess.Popen([sys.executable, "-m", "diffrepro.forkserver", str(tmp_path / "o.sock"), str(orphan.pid)])
    orphan.wait()
    assert serving.wait(timeout=30) == 0
    assert not (tmp_path / "o.sock").exists()
