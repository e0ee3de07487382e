#!/usr/bin/env bash
# Set up (if needed) and run a reproduce_* target on the embedded default (offline, CPU).
#   bash scripts/reproduce.sh                       -> reproduce_tstitch_table
#   bash scripts/reproduce.sh reproduce_all --configfile config/smoke.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
target=${1:-reproduce_tstitch_table}
shift || true
exec .venv/bin/snakemake --cores all "$target" "$@"
