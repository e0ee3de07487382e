#!/usr/bin/env bash
# System packages for the cluster and report tests (tests/test_slurm.py, tests/test_report_html.py):
# Debian's SLURM and munge for a real single-node cluster, and Chromium to render the HTML
# report headless. Needs root and apt; elsewhere it says so and the tests that need these
# packages are skipped with that reason.
set -uo pipefail
packages=(slurm-wlm munge chromium)
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "note: not root with apt-get; ${packages[*]} not installed (their tests will be skipped)" >&2
    exit 0
fi
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/diffrepro-apt.log 2>&1; then
    apt-get update -q >>/tmp/diffrepro-apt.log 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/diffrepro-apt.log 2>&1 ||
        echo "note: apt-get could not install ${missing[*]} (see /tmp/diffrepro-apt.log); their tests will be skipped" >&2
fi
# Debian may start the daemons it has just installed, with its own config; the tests run
# their own. Daemons of a SLURM that was already here are left alone.
if [[ " ${missing[*]} " == *" slurm-wlm "* ]] && command -v systemctl >/dev/null 2>&1; then
    for service in munge slurmctld slurmd; do
        systemctl stop "$service" >/dev/null 2>&1
    done
fi
exit 0
