#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and the smoke workflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# SLURM, munge and Chromium for the cluster and report tests (skipped, with the reason, where
# they cannot be installed).
bash scripts/install_test_cluster.sh
exec .venv/bin/python -m pytest "$@"
