#!/usr/bin/env bash
# Create .venv with the pinned environment (idempotent: a second call only re-checks).
# torch and torchvision come as a matched pair from the package index; with Python 3.11
# every transitive package is pinned by requirements/lock-py3.11.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "error: diffrepro needs Python >= 3.11 (Snakemake 8+ does); none found on PATH." >&2
    echo "Install Python 3.11 or point PYTHON=/path/to/python3.11 at one, then rerun." >&2
    exit 1
}

if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
version=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
constraints=()
if [ -f "requirements/lock-py${version}.txt" ]; then
    constraints=(-c "requirements/lock-py${version}.txt")
else
    echo "note: no lock file for Python ${version}; installing the top-level pins of pyproject.toml" >&2
fi
# pip's own notes about extra index locations on some machines are noise here.
.venv/bin/python -m pip install -q --disable-pip-version-check "${constraints[@]}" -e ".[test]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -c "import torch, torchvision, timm, diffusers; print('environment ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
