"""Running Snakemake on a copy of the repository, for the workflow, cluster and report tests.

Each run works in a copy (a temporary directory), so the developer's results/ are never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COPIED = ["Snakefile", "config", "workflow", "reports/paper", "environment.yml", "profiles"]
SMOKE = ("--configfile", "config/smoke.yaml")


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_repository(work: Path) -> Path:
    for name in COPIED:
        src, dst = ROOT / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return work
