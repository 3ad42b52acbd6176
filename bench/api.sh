#!/usr/bin/env bash
# ECS API throughput and latency: Fleetport (SigV4 verification on) vs moto_server, same run,
# same signed requests, same load generator (one wrk thread on loopback, leaving a core for the server). Prints req/s, p50/p99, the ratio,
# and Fleetport's RSS before and after a long DescribeClusters run (memory must stay flat); then
# DescribeClusters signed by an IAM user (policies evaluated on every request) beside root.
#
#   bench/api.sh                # defaults: 64 connections, 15 s per phase, 1,000,000-request soak
#   CONNS=64 DURATION=15 SOAK_REQUESTS=1000000 bench/api.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-64}
DURATION=${DURATION:-15}
SOAK_REQUESTS=${SOAK_REQUESTS:-1000000}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
scripts/test-env
cargo build --release --locked -p fleetport -q
PY=.venv/bin/python
OUT=$(mktemp -d)
FP_PORT=${FP_PORT:-45660}
MOTO_PORT=${MOTO_PORT:-45661}
cleanup() { kill "${FP_PID:-}" "${MOTO_PID:-}" 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

# Start-up: time from exec to the ready banner, and idle RSS (targets: < 100 ms, < 30 MiB).
$PY - "$OUT/startup" <<'PY'
import re, subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen(["target/release/fleetport", "up", "--listen", "127.0.0.1:0", "--data-dir", sys.argv[1]],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
while "export AWS_ENDPOINT_URL" not in p.stdout.readline():
    pass
ready = (time.monotonic() - t) * 1000
time.sleep(0.5)
rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))
print(f"start-up: ready in {ready:.0f} ms, idle RSS {rss / 1024:.1f} MiB")
p.terminate(); p.wait()
PY

target/release/fleetport up --listen 127.0.0.1:$FP_PORT --data-dir "$OUT/data" >"$OUT/fp.log" 2>&1 &
FP_PID=$!
.venv/bin/moto_server -H 127.0.0.1 -p $MOTO_PORT >"$OUT/moto.log" 2>&1 &
MOTO_PID=$!
for i in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$FP_PORT/_fleetport/health" && curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" && break
  sleep 0.1
done

setup() { # endpoint
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PY - "$1" <<'PY'
import sys, boto3
ecs = boto3.client("ecs", endpoint_url=sys.argv[1], region_name="us-east-1")
ecs.create_cluster(clusterName="bench")
PY
}
setup "http://127.0.0.1:$FP_PORT"
setup "http://127.0.0.1:$MOTO_PORT"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# run NAME PORT OP BODY DURATION -> prints "rps p50 p99 non2xx"
run() {
  local name=$1 port=$2 op=$3 body=$4 dur=$5
  $PY bench/sign_request.py "http://127.0.0.1:$port" "$op" "$body" "$OUT/$name.lua"
  wrk -t1 -c"$CONNS" -d"${dur}s" --latency -s "$OUT/$name.lua" "http://127.0.0.1:$port/" >"$OUT/$name.txt" 2>&1
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$name.txt")
  p50=$(awk '$1=="50%" {print $2}' "$OUT/$name.txt")
  p99=$(awk '$1=="99%" {print $2}' "$OUT/$name.txt")
  non2xx=$(awk '/^non2xx/ {print $2}' "$OUT/$name.txt")
  echo "$rps $p50 $p99 ${non2xx:-?}"
}

DESCRIBE='{"clusters":["bench"],"include":["TAGS","SETTINGS"]}'
REGISTER='{"family":"bench","containerDefinitions":[{"name":"web","image":"localhost:4566/web:1","memory":256,"portMappings":[{"containerPort":3000}]}]}'

printf '%-26s %-9s %12s %10s %10s %8s\n' operation server req/s p50 p99 non-2xx
for op in DescribeClusters RegisterTaskDefinition; do
  body=$DESCRIBE; [ "$op" = RegisterTaskDefinition ] && body=$REGISTER
  read -r frps fp50 fp99 fbad < <(run "fp-$op" $FP_PORT "$op" "$body" "$DURATION")
  read -r mrps mp50 mp99 mbad < <(run "moto-$op" $MOTO_PORT "$op" "$body" "$DURATION")
  printf '%-26s %-9s %12s %10s %10s %8s\n' "$op" fleetport "$frps" "$fp50" "$fp99" "$fbad"
  printf '%-26s %-9s %12s %10s %10s %8s\n' "$op" moto "$mrps" "$mp50" "$mp99" "$mbad"
  ratio=$(awk -v a="$frps" -v b="$mrps" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "inf" }')
  echo "  ratio fleetport/moto: ${ratio}x"
done

# IAM enforcement: the same DescribeClusters signed by an IAM user with a managed policy (every
# request evaluates its policies) beside root credentials (no evaluation), same server, same run.
read -r IAM_KEY IAM_SECRET < <(AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PY - "http://127.0.0.1:$FP_PORT" <<'PY'
import sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1")
iam.create_user(UserName="bench")
iam.attach_user_policy(UserName="bench", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")
k = iam.create_access_key(UserName="bench")["AccessKey"]
print(k["AccessKeyId"], k["SecretAccessKey"])
PY
)
read -r rrps rp50 rp99 rbad < <(run "fp-root" $FP_PORT DescribeClusters "$DESCRIBE" "$DURATION")
read -r irps ip50 ip99 ibad < <(SIGN_KEY=$IAM_KEY SIGN_SECRET=$IAM_SECRET run "fp-iam" $FP_PORT DescribeClusters "$DESCRIBE" "$DURATION")
printf '%-26s %-9s %12s %10s %10s %8s\n' "DescribeClusters (root)" fleetport "$rrps" "$rp50" "$rp99" "$rbad"
printf '%-26s %-9s %12s %10s %10s %8s\n' "DescribeClusters (IAM)" fleetport "$irps" "$ip50" "$ip99" "$ibad"
ratio=$(awk -v a="$irps" -v b="$rrps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }')
echo "  ratio IAM user/root: ${ratio}x (target: at least 0.90)"

# Tenancy: the same DescribeClusters in another account and region (12-digit key, eu-central-1),
# whose calls go through the tenant map to their own ECS, beside the default tenant's.
AWS_ACCESS_KEY_ID=123456789012 AWS_SECRET_ACCESS_KEY=test $PY - "http://127.0.0.1:$FP_PORT" <<'PY'
import sys, boto3
boto3.client("ecs", endpoint_url=sys.argv[1], region_name="eu-central-1").create_cluster(clusterName="bench")
PY
read -r trps tp50 tp99 tbad < <(SIGN_KEY=123456789012 SIGN_REGION=eu-central-1 run "fp-tenant" $FP_PORT DescribeClusters "$DESCRIBE" "$DURATION")
printf '%-26s %-9s %12s %10s %10s %8s\n' "DescribeClusters (tenant)" fleetport "$trps" "$tp50" "$tp99" "$tbad"
ratio=$(awk -v a="$trps" -v b="$rrps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }')
echo "  ratio other account and region/default: ${ratio}x"

# Soak: about SOAK_REQUESTS DescribeClusters requests, RSS sampled before and after.
kill "$MOTO_PID" 2>/dev/null || true
before=$(rss_kib $FP_PID)
$PY bench/sign_request.py "http://127.0.0.1:$FP_PORT" DescribeClusters "$DESCRIBE" "$OUT/soak.lua"
total=0
while [ "$total" -lt "$SOAK_REQUESTS" ]; do
  wrk -t1 -c"$CONNS" -d20s -s "$OUT/soak.lua" "http://127.0.0.1:$FP_PORT/" >"$OUT/soak.txt" 2>&1
  n=$(awk '/requests in/ {print $1}' "$OUT/soak.txt")
  total=$((total + n))
  $PY bench/sign_request.py "http://127.0.0.1:$FP_PORT" DescribeClusters "$DESCRIBE" "$OUT/soak.lua"
done
after=$(rss_kib $FP_PID)
echo "soak: $total DescribeClusters requests; fleetport RSS ${before} KiB before, ${after} KiB after"
