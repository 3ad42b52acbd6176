#!/usr/bin/env bash
# Task start overhead: time from RunTask to RUNNING, and to the container's port answering, for 1
# and for 20 tasks on one `fleetport agent`, against plain `docker run` of the same image with the
# same published port in the same run. Prints seconds and the ratio (target: within 1.25x).
#
#   bench/tasks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env
cargo build --release --locked -p fleetport -q
exec .venv/bin/python bench/tasks.py target/release/fleetport
