#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and the smoke workflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
