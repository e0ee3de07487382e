"""Two runs in one directory: a timing job refuses to start while another holds the timing
lock, and starts once it is released; two writers of one output never leave it corrupt."""

import os
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from diffrepro.io import write_npz
from diffrepro.plan import TIMING_LOCK
from diffrepro.runlock import HOST, LockHeld, hold
from diffrepro.snakejob import job

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path(TIMING_LOCK.format(host=HOST))  # relative to the working directory, as in a run


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the lock lives under results/ of the run's directory
    return tmp_path


def fake_snakemake(**params):
    return SimpleNamespace(log=["logs/time.log"], threads=1, params=SimpleNamespace(**params),
                           config={"threads": 1, "methods": {}}, input={}, output=["out.json"])


def test_a_second_holder_is_refused_at_once_with_who_holds_it():
    with hold(TIMING_LOCK):
        start = time.monotonic()
        # flock is per open file: a second open() in this process conflicts like another run
        with pytest.raises(LockHeld) as refused, hold(TIMING_LOCK):
            pass
        assert time.monotonic() - start < 1
    message = str(refused.value)
    assert message.startswith(f"{LOCK} is held by pid {os.getpid()} on {HOST} since ")
    assert "Wait for it to end, then rerun" in message
    with hold(TIMING_LOCK):  # released: the next job gets it
        pass


def test_a_lock_held_by_another_process_ends_with_it():
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from diffrepro.runlock import hold\nwith hold({TIMING_LOCK!r}):\n"
                               f"    print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeld, match=f"held by pid {holder.pid} on {HOST}"), hold(TIMING_LOCK):
            pass
    finally:
        holder.kill()  # no cleanup runs: the kernel still releases the lock
        holder.wait()
    assert LOCK.exists()  # the file stays behind, harmless
    with hold(TIMING_LOCK):
        pass


def test_a_timing_job_is_refused_on_the_terminal_and_in_its_log(capsys):
    with hold(TIMING_LOCK):
        with pytest.raises(SystemExit) as refused, \
                job(fake_snakemake(), uses_torch=False, exclusive=TIMING_LOCK):
            pytest.fail("the job ran beside another timing job")
    assert str(refused.value).startswith(f"error: {LOCK} is held by pid")
    assert f"{LOCK} is held by pid" in Path("logs/time.log").read_text()
    ran = []
    with job(fake_snakemake(), uses_torch=False, exclusive=TIMING_LOCK):
        ran.append(True)
        with pytest.raises(LockHeld):  # held for the whole job
            with hold(TIMING_LOCK):
                pass
    assert ran


@pytest.mark.parametrize("script, params", [
    ("time.py", {"methods": '{"m": {"timing": {"threads": 1}}}'}),
    ("time_training.py", {}),
])
def test_the_timing_scripts_take_the_lock_first(script, params):
    with hold(TIMING_LOCK):
        start = time.monotonic()
        with pytest.raises(SystemExit, match=f"{LOCK} is held by pid"):
            runpy.run_path(str(ROOT / "workflow/scripts" / script),
                           init_globals={"snakemake": fake_snakemake(**params)})
        assert time.monotonic() - start < 10  # before any model is loaded


def test_two_writers_of_one_output_leave_one_whole_file():
    arrays = [np.full((64, 64), i, dtype=np.float32) for i in range(4)]
    writers = [threading.Thread(target=lambda a=a: [write_npz("same.npz", x=a) for _ in range(20)])
               for a in arrays]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    with np.load("same.npz") as data:
        assert any(np.array_equal(data["x"], a) for a in arrays)
    assert sorted(p.name for p in Path(".").iterdir()) == ["same.npz"]  # no temporary file left


def test_without_flock_support_the_job_runs_unguarded(monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # e.g. a cluster file system mounted without flock
    notes = []
    with hold(TIMING_LOCK, log=notes.append):
        pass
    assert notes == [f"note: cannot lock {LOCK} (No locks available); timing runs without the guard"]
