#!/usr/bin/env bash
# Scale-out: DescribeClusters throughput of one `fleetport up` on SQLite (the default), one on
# PostgreSQL and three replicas on one PostgreSQL database, in the same run (wrk, one thread and
# CONNS connections per replica, run together against the three), then how long the leader's
# death takes to hand the lease over (kill -9, then poll the survivors' health).
#
#   bench/scale.sh                 # CONNS=32 DURATION=10 FAILOVERS=3
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-32}
DURATION=${DURATION:-10}
FAILOVERS=${FAILOVERS:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
scripts/test-env
PG=$(scripts/postgres)
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p fleetport -q
PY=.venv/bin/python
OUT=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

pg_param() { echo "$PG" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
PGHOST=$(pg_param host); PGPORT=$(pg_param port); PGUSER=$(pg_param user)
PSQL=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql | tail -1)
new_db() {
  local name="fp_bench_$RANDOM$RANDOM"
  "$PSQL" -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -qc "CREATE DATABASE $name" >/dev/null
  echo "postgres://$PGUSER@$PGHOST:$PGPORT/$name"
}

# start NAME PORT [--store URL] -> starts a release fleetport, keys shared through $OUT/keys
start() {
  local name=$1 port=$2; shift 2
  mkdir -p "$OUT/$name"
  if [ -d "$OUT/keys" ]; then cp "$OUT"/keys/*.key "$OUT/$name/"; fi
  target/release/fleetport up --listen 127.0.0.1:"$port" --data-dir "$OUT/$name" --no-managed-capacity "$@" \
    >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$port/_fleetport/health" && break
    sleep 0.05
  done
  if [ ! -d "$OUT/keys" ] && [ "$#" -gt 0 ]; then mkdir -p "$OUT/keys"; cp "$OUT/$name"/*.key "$OUT/keys/"; fi
}

cluster() { # port
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PY - "http://127.0.0.1:$1" <<'PY'
import sys, boto3
boto3.client("ecs", endpoint_url=sys.argv[1], region_name="us-east-1").create_cluster(clusterName="bench")
PY
}

DESCRIBE='{"clusters":["bench"],"include":["TAGS","SETTINGS"]}'
# load PORT... -> total req/s of wrk run against every port at once
load() {
  local i=0 pids=()
  for port in "$@"; do
    $PY bench/sign_request.py "http://127.0.0.1:$port" DescribeClusters "$DESCRIBE" "$OUT/w$i.lua"
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$OUT/w$i.lua" "http://127.0.0.1:$port/" >"$OUT/w$i.txt" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
  wait "${pids[@]}"
  local total=0 bad=0
  for j in $(seq 0 $((i - 1))); do
    total=$(awk -v t="$total" '/Requests\/sec/ {printf "%.0f", t + $2}' "$OUT/w$j.txt")
    bad=$((bad + $(awk '/^non2xx/ {print $2}' "$OUT/w$j.txt")))
  done
  echo "$total $bad"
}

start sqlite 45670
cluster 45670
read -r sq sqbad < <(load 45670)
kill "$PID_sqlite"

URL=$(new_db)
start one 45671 --store "$URL"
cluster 45671
read -r p1 p1bad < <(load 45671)
kill "$PID_one"; sleep 1

URL=$(new_db)
rm -rf "$OUT/keys"
start r1 45672 --store "$URL"
start r2 45673 --store "$URL"
start r3 45674 --store "$URL"
cluster 45672
sleep 2
read -r p3 p3bad < <(load 45672 45673 45674)

printf '%-34s %12s %8s\n' setup "req/s" non-2xx
printf '%-34s %12s %8s\n' "1 replica, SQLite (default)" "$sq" "$sqbad"
printf '%-34s %12s %8s\n' "1 replica, PostgreSQL" "$p1" "$p1bad"
printf '%-34s %12s %8s\n' "3 replicas, one PostgreSQL" "$p3" "$p3bad"
awk -v a="$p3" -v b="$p1" 'BEGIN { printf "  3 replicas / 1 replica on PostgreSQL: %.2fx (target 1.5x; all share this machine'"'"'s 2 cores)\n", a / b }'
awk -v a="$p1" -v b="$sq" 'BEGIN { printf "  PostgreSQL / SQLite, one replica: %.2fx (reads come from the same in-memory copy)\n", a / b }'

# Fail-over: kill the leader, time until a survivor leads; the killed one is started again.
leader_port() {
  for port in 45672 45673 45674; do
    if curl -s "http://127.0.0.1:$port/_fleetport/health" 2>/dev/null | grep -q '"leader":true'; then echo "$port"; return; fi
  done
}
for round in $(seq "$FAILOVERS"); do
  for _ in $(seq 100); do l=$(leader_port); [ -n "$l" ] && break; sleep 0.1; done
  name=r$((l - 45671))
  pid_var="PID_$name"
  kill -9 "${!pid_var}"
  t0=$(date +%s.%N)
  while true; do
    now=$(leader_port)
    if [ -n "$now" ] && [ "$now" != "$l" ]; then break; fi
    sleep 0.05
  done
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v r="$round" 'BEGIN { printf "fail-over %d: a new leader %.2f s after kill -9 (target 5 s)\n", r, b - a }'
  start "$name" "$l" --store "$URL"
done

# 1,000 services' reconcile latency after a leader change: the leader is paused (SIGSTOP), every
# service is updated to a new task definition through another replica, the paused leader is
# killed -9; timed from the kill until a new leader has completed all 1,000 deployments.
SERVICES=${SERVICES:-1000}
for _ in $(seq 100); do l=$(leader_port); [ -n "$l" ] && break; sleep 0.1; done
name=r$((l - 45671)); pid_var="PID_$name"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PY - "$l" "${!pid_var}" "$SERVICES" <<'PY'
import json, os, signal, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import boto3, botocore.config

leader_port, leader_pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ports = [45672, 45673, 45674]
cfg = botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}, max_pool_connections=16)
def ecs(port):
    return boto3.client("ecs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", config=cfg)
def leads(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fleetport/health", timeout=1) as r:
            return json.loads(r.read())["leader"]
    except OSError:
        return False
other = next(p for p in ports if p != leader_port)
api = ecs(other)
api.create_cluster(clusterName="many")
for v in ("one", "two"):
    api.register_task_definition(family="many", containerDefinitions=[
        {"name": "c", "image": "busybox", "memory": 8, "command": ["echo", v]}])
names = [f"s{i:04d}" for i in range(n)]
def converged(client, revision):
    done = 0
    for i in range(0, n, 10):
        for s in client.describe_services(cluster="many", services=names[i:i + 10])["services"]:
            d = s["deployments"]
            done += len(d) == 1 and d[0]["rolloutState"] == "COMPLETED" and d[0]["taskDefinition"].endswith(revision)
    return done == n
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda s: api.create_service(cluster="many", serviceName=s, taskDefinition="many:1",
                                               desiredCount=0, launchType="EC2"), names))
while not converged(api, ":1"):
    time.sleep(0.5)
os.kill(leader_pid, signal.SIGSTOP)
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda s: api.update_service(cluster="many", service=s, taskDefinition="many:2"), names))
killed = time.monotonic()
os.kill(leader_pid, signal.SIGKILL)
while not any(leads(p) for p in ports if p != leader_port):
    time.sleep(0.05)
led = time.monotonic()
while not converged(api, ":2"):
    time.sleep(0.2)
done = time.monotonic()
print(f"{n} services: a new leader {led - killed:.2f} s after kill -9; all {n} deployments completed "
      f"{done - led:.2f} s later ({done - killed:.2f} s after the kill)")
PY
