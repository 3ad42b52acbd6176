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
cargo build --release --locked -p fleetport -q
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
