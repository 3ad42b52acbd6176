#!/usr/bin/env bash
# Load-balancer throughput: wrk (keep-alive HTTP/1.1, 64 connections) against a Fleetport ALB,
# HAProxy and nginx configured alike (round robin over the same 2 backends, keep-alive to them,
# X-Forwarded-For/-Proto/-Port added, no access logs), plus the backends directly as the ceiling.
# Runs are interleaved (direct, haproxy, nginx, fleetport, direct, ...) and the median run of
# each column is printed with p50/p99, errors, RSS, the proxy's CPU seconds and the ratios.
#
#   bench/lb.sh                      # unpinned: 2 proxy threads/workers, REPEATS=3
#   PIN=1 PROXY_WORKERS=1 bench/lb.sh   # wrk alone on CPU 0; backends and proxy on CPU 1
#   TLS=1 bench/lb.sh                # clients speak HTTPS (TLS 1.3, one self-signed RSA 2048
#                                    # certificate, imported into ACM for Fleetport); the
#                                    # proxies still reach the backends over plain HTTP
#   PEERS_BATCH=1 bench/lb.sh        # HAProxy and nginx run as SCHED_BATCH too, as Fleetport's
#                                    # ELB workers do by default
#   FLEETPORT_ELB_SCHEDULING=normal bench/lb.sh   # Fleetport's workers keep the default policy
#   KEEP_W=1 bench/lb.sh             # keep the work directory (configs, logs) for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
PROXY_WORKERS=${PROXY_WORKERS:-2}
PIN=${PIN:-0}
TLS=${TLS:-0}
PEERS_BATCH=${PEERS_BATCH:-0}
SCHEME=http
[ "$TLS" = 1 ] && SCHEME=https
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
scripts/test-env
cargo build --release --locked -p fleetport -q
W=$(mktemp -d)
chmod 755 "$W"
B1=${B1:-46101} B2=${B2:-46102} HA=${HA:-46110} NG=${NG:-46111} LB=${LB:-46112} FP=${FP:-46120}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_W:-}" ] || rm -rf "$W"; }
trap cleanup EXIT
# exec: a backgrounded function is a subshell, and its $! must be the server itself.
on_proxy_cpu() { if [ "$PIN" = 1 ]; then exec taskset -c 1 "$@"; else exec "$@"; fi; }
on_peer_cpu() { if [ "$PEERS_BATCH" = 1 ]; then on_proxy_cpu chrt -b 0 "$@"; else on_proxy_cpu "$@"; fi; }
on_wrk_cpu() { if [ "$PIN" = 1 ]; then taskset -c 0 "$@"; else "$@"; fi; }

printf 'ok\n' >"$W/index.html"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 \
  -subj /CN=bench.localhost 2>/dev/null
cat "$W/cert.pem" "$W/key.pem" >"$W/combined.pem"
NG_LISTEN="listen 127.0.0.1:$NG;"
HA_BIND="bind 127.0.0.1:$HA"
if [ "$TLS" = 1 ]; then
  NG_LISTEN="listen 127.0.0.1:$NG ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;"
  HA_BIND="bind 127.0.0.1:$HA ssl crt $W/combined.pem alpn h2,http/1.1"
fi
# Shared by the nginx backend and the nginx proxy: no logs, temp files in $W, and keep-alive
# connections that last the whole run.
NGINX_HTTP_COMMON="  access_log off;
  client_body_temp_path $W/tmp;
  proxy_temp_path $W/tmp;
  fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp;
  scgi_temp_path $W/tmp;
  keepalive_requests 1000000;"
cat >"$W/backend.conf" <<EOF
user root;
daemon off;
worker_processes 1;
pid $W/backend.pid;
error_log $W/backend.err warn;
events { worker_connections 4096; }
http {
$NGINX_HTTP_COMMON
  server { listen 127.0.0.1:$B1; root $W; add_header X-Backend b1; }
  server { listen 127.0.0.1:$B2; root $W; add_header X-Backend b2; }
}
EOF
cat >"$W/nginx.conf" <<EOF
user root;
daemon off;
worker_processes $PROXY_WORKERS;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 4096; }
http {
$NGINX_HTTP_COMMON
  upstream backends { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 128; keepalive_requests 1000000; }
  server {
    $NG_LISTEN
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Port \$server_port;
    }
  }
}
EOF
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread $PROXY_WORKERS
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  $HA_BIND
  option forwardfor
  http-request set-header X-Forwarded-Proto $SCHEME
  http-request set-header X-Forwarded-Port %[dst_port]
  default_backend be
backend be
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
EOF
mkdir -p "$W/tmp"
on_proxy_cpu nginx -c "$W/backend.conf" -p "$W" & pids+=($!); BACKEND_PID=$!
on_peer_cpu haproxy -f "$W/haproxy.cfg" -db & pids+=($!); HA_PID=$!
on_peer_cpu nginx -c "$W/nginx.conf" -p "$W" & pids+=($!); NG_PID=$!
on_proxy_cpu target/release/fleetport up --listen 127.0.0.1:$FP --data-dir "$W/fp" \
  --elb-workers "$PROXY_WORKERS" >"$W/fp.log" 2>&1 & pids+=($!); FP_PID=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$FP/_fleetport/health" && curl -s -o /dev/null "http://127.0.0.1:$B1/" && break
  sleep 0.1
done

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$FP
aws() { .venv/bin/aws "$@"; }
lb=$(aws elbv2 create-load-balancer --name bench --subnets subnet-a subnet-b --query 'LoadBalancers[0].LoadBalancerArn' --output text)
tg=$(aws elbv2 create-target-group --name bench --protocol HTTP --port 80 --target-type ip --vpc-id vpc-local \
  --health-check-interval-seconds 10 --query 'TargetGroups[0].TargetGroupArn' --output text)
aws elbv2 register-targets --target-group-arn "$tg" --targets Id=127.0.0.1,Port=$B1 Id=127.0.0.1,Port=$B2
if [ "$TLS" = 1 ]; then
  cert=$(aws acm import-certificate --certificate "fileb://$W/cert.pem" --private-key "fileb://$W/key.pem" \
    --query CertificateArn --output text)
  aws elbv2 create-listener --load-balancer-arn "$lb" --protocol HTTPS --port $LB \
    --certificates CertificateArn="$cert" --ssl-policy ELBSecurityPolicy-TLS13-1-2-2021-06 \
    --default-actions Type=forward,TargetGroupArn="$tg" >/dev/null
else
  aws elbv2 create-listener --load-balancer-arn "$lb" --protocol HTTP --port $LB \
    --default-actions Type=forward,TargetGroupArn="$tg" >/dev/null
fi
aws elbv2 wait target-in-service --target-group-arn "$tg"

# Every proxy must show both backends before anything is measured.
for port in $HA $NG $LB; do
  seen=$(for _ in 1 2 3 4 5 6; do curl -sk -D - -o /dev/null "$SCHEME://127.0.0.1:$port/"; done | tr -d '\r' |
    awk 'tolower($1) == "x-backend:" { print $2 }' | sort -u | tr '\n' ' ')
  [ "$seen" = "b1 b2 " ] || { echo "proxy on port $port does not reach both backends (saw: $seen)" >&2; exit 1; }
done

cpu_of() { # pid... -> user+sys clock ticks of these processes and their children threads
  local t=0 p
  for p in "$@"; do
    for s in /proc/"$p"/task/*/stat; do
      t=$((t + $(awk '{ print $14 + $15 }' "$s" 2>/dev/null || echo 0)))
    done
  done
  echo "$t"
}
tree_of() { echo "$1" $(pgrep -P "$1" || true); }
rss_of() { # pid... -> summed VmRSS in KiB
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '/VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo "$t"
}
declare -A URL=([direct]="http://127.0.0.1:$B1/" [haproxy]="$SCHEME://127.0.0.1:$HA/"
  [nginx]="$SCHEME://127.0.0.1:$NG/" [fleetport]="$SCHEME://127.0.0.1:$LB/")
declare -A PROCS=([direct]="$(tree_of $BACKEND_PID)" [haproxy]="$HA_PID" [nginx]="$(tree_of $NG_PID)" [fleetport]="$FP_PID")
COLUMNS_=(direct haproxy nginx fleetport)
for c in "${COLUMNS_[@]}"; do
  on_wrk_cpu wrk -t2 -c64 -d2s "${URL[$c]}" >/dev/null
done
tck=$(getconf CLK_TCK)
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); PIN=$PIN PROXY_WORKERS=$PROXY_WORKERS REPEATS=$REPEATS TLS=$TLS PEERS_BATCH=$PEERS_BATCH FLEETPORT_ELB_SCHEDULING=${FLEETPORT_ELB_SCHEDULING:-batch}"
for r in $(seq "$REPEATS"); do
  for c in "${COLUMNS_[@]}"; do
    # shellcheck disable=SC2086
    c0=$(cpu_of ${PROCS[$c]})
    on_wrk_cpu wrk -t2 -c64 -d"${DURATION}s" --latency --timeout 5s "${URL[$c]}" >"$W/$c.$r.txt"
    # shellcheck disable=SC2086
    c1=$(cpu_of ${PROCS[$c]})
    # shellcheck disable=SC2086
    echo "cpu $(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN { printf "%.1f", (b - a) / t }') rss $(rss_of ${PROCS[$c]})" >>"$W/$c.$r.txt"
    printf '.'
  done
done
echo
python3 - "$W" "$REPEATS" "$DURATION" "${COLUMNS_[@]}" <<'PY'
import re, statistics, sys
w, repeats, cols = sys.argv[1], int(sys.argv[2]), sys.argv[4:]

def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

def run(path):
    t = open(path).read()
    errs = sum(map(int, re.findall(r"(?:connect|read|write|timeout) (\d+)", t)))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
        "p50": ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1)),
        "p99": ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1)),
        "err": errs + (int(non2xx.group(1)) if non2xx else 0),
        "cpu": float(re.search(r"^cpu ([\d.]+)", t, re.M).group(1)),
        "rss": int(re.search(r"rss (\d+)", t).group(1)) / 1024,
    }

med = {}
for c in cols:
    runs = sorted((run(f"{w}/{c}.{r}.txt") for r in range(1, repeats + 1)), key=lambda x: x["rps"])
    med[c] = runs[len(runs) // 2]
    med[c]["all"] = " ".join(f"{x['rps']:.0f}" for x in runs)
print(f"{'column':<10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'RSS MiB':>8} {'CPU s':>6} {'CPU us/req':>10}"
      f" {'xHAProxy':>8} {'xnginx':>7}  runs")
duration = float(sys.argv[3])
for c in cols:
    m = med[c]
    per_req = m['cpu'] / (m['rps'] * duration) * 1e6
    print(f"{c:<10} {m['rps']:>9.0f} {m['p50']:>7.2f} {m['p99']:>7.2f} {m['err']:>6} {m['rss']:>8.1f} {m['cpu']:>6.1f} {per_req:>10.1f}"
          f" {m['rps'] / med['haproxy']['rps']:>8.2f} {m['rps'] / med['nginx']['rps']:>7.2f}  {m['all']}")
print("CPU s: the column's own processes during one run (for 'direct', the backend); CPU us/req: that per request"
      " served (user + system; most of it is the kernel's TCP work, alike for every proxy); the fleetport RSS is"
      " the whole server process (control plane, registry and ECS included).")
PY
