"""A real single-node SLURM cluster on this host, for tests/test_slurm.py.

Needs Debian's slurm-wlm and munge (`bash scripts/install_test_cluster.sh`, which .ci/run
calls) and root (slurmd runs jobs as their user). The daemons run from a temporary
directory: their own munge key and socket, state, spool, logs and ports. Only the
configuration file has to sit at SLURM's compiled-in path, /etc/slurm/slurm.conf: the
executor plugin's job step drops SLURM_CONF from the environment of the `srun` it starts
(snakemake-executor-plugin-slurm-jobstep 0.6.1 removes every SLURM_* variable but the job's
identity), so a config named only by SLURM_CONF is not found inside jobs. An existing
/etc/slurm/slurm.conf that we did not write is never touched: the cluster is then unavailable.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by diffrepro tests/slurm_cluster.py"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
PARTITION = "debug"


def unavailable_reason() -> str | None:
    """Why a test cluster cannot run here, or None."""
    missing = [tool for tool in DAEMONS if not _sbin(tool)]
    if missing:
        return (f"SLURM/munge not installed (missing {', '.join(missing)}); "
                "run `bash scripts/install_test_cluster.sh` (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; run the tests as root to include this one"
    if SYSTEM_CONF.exists() and MARKER not in SYSTEM_CONF.read_text():
        return f"{SYSTEM_CONF} exists and is not ours; not overwriting a real cluster's config"
    running = subprocess.run(["pgrep", "-x", "slurmd|slurmctld"], capture_output=True, text=True)
    if running.stdout.strip():
        return "SLURM daemons already run on this host (a real or configless node); not touching them"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _sbin(tool: str) -> str | None:
    """The tool's path; daemons live in sbin, which a non-login PATH may lack."""
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class LocalSlurmCluster:
    """munged + slurmctld + slurmd with one node (this host, 90% of its memory) in one
    partition. Accounting is off, as on many small clusters: sacct sees no jobs.

    The node declares twice the host's cores (`oversubscribe`), so two 2-thread jobs run at
    once: a test job spends most of its time starting Snakemake and importing torch, which
    overlaps well, and results do not depend on it (each job keeps its own thread count).
    """

    def __init__(self, root: Path, oversubscribe: int = 2):
        self.root = root
        self.pids: dict[str, int] = {}
        self.cpus = (os.cpu_count() or 1) * oversubscribe

    def config_text(self) -> str:
        host, r = socket.gethostname(), self.root
        return "\n".join([
            MARKER,
            "ClusterName=diffrepro-test",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge.socket",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",  # no cgroups in a container
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=300",
            "SlurmdParameters=config_overrides",  # the node may declare more CPUs than it has
            f"NodeName={host} CPUs={self.cpus} RealMemory={int(_memory_mb() * 0.9)} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def start(self, timeout_s: float = 30) -> None:
        r = self.root
        for sub in ("state", "spool"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(self.config_text())
        key = r / "munge.key"
        subprocess.run([_sbin("mungekey"), "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o600)
        subprocess.run([_sbin("munged"), "--force", f"--key-file={key}", f"--socket={r}/munge.socket",
                        f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log",
                        f"--seed-file={r}/munged.seed"], check=True)
        self._record_pid("munged")
        subprocess.run([_sbin("slurmctld")], check=True)
        self._record_pid("slurmctld")
        subprocess.run([_sbin("slurmd")], check=True)
        self._record_pid("slurmd")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the test cluster's node never became idle; logs: {self.logs()}")

    def _record_pid(self, daemon: str) -> None:
        pid_file = self.root / f"{daemon}.pid"
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{daemon} wrote no pid file; logs: {self.logs()}")
            time.sleep(0.05)
        self.pids[daemon] = int(pid_file.read_text().split()[0])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        """Stop the daemons by PID (newest first) and remove our slurm.conf."""
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(daemon, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if SYSTEM_CONF.exists() and MARKER in SYSTEM_CONF.read_text():
            SYSTEM_CONF.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (a daemon we forked) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
