#!/usr/bin/env bash
# Service deployments: wrk through a Fleetport ALB during `update-service` of a 4-task service
# (two `fleetport agent` instances), printing requests, non-2xx answers and socket errors (target:
# 0 and 0) and the deployment's duration against its lower bound (healthy threshold × health-check
# interval + deregistration delay; target within 1.3x). Then the time to scale a service from 0
# to 50 tasks on the two agents against `docker run` of the same 50 containers in the same run
# (target within 1.3x).
#
#   bench/deploy.sh
#   INTERVAL=5 THRESHOLD=2 DELAY=5 TASKS=50 bench/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
scripts/test-env
cargo build --release --locked -p fleetport -q
exec .venv/bin/python bench/deploy.py target/release/fleetport
