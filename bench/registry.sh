#!/usr/bin/env bash
# Registry throughput: push and pull one image with a ~500 MB layer via skopeo, into Fleetport
# (ECR auth on) and into Debian's docker-registry (CNCF Distribution, no auth), in one run.
# Prints MB/s for each, the ratio, each server's peak RSS, and this machine's single-core
# sha256 MB/s (every pushed byte must be hashed: the physical limit for a verifying registry).
#
#   bench/registry.sh              # SIZE_MB=500
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-500}
need=()
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-registry >/dev/null || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
scripts/test-env
cargo build --release --locked -p fleetport -q
PY=.venv/bin/python
W=$(mktemp -d)
FP_PORT=${FP_PORT:-45680}
REG_PORT=${REG_PORT:-45681}
cleanup() { kill "${FP_PID:-}" "${REG_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

echo "building a ${SIZE_MB} MB single-layer OCI image..."
LAYER_BYTES=$($PY bench/make_oci_image.py "$W/image" "$SIZE_MB")
LAYER_FILE=$(ls -S "$W/image/blobs/sha256/" | head -1)
MB=$(awk -v b="$LAYER_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')

target/release/fleetport up --listen 127.0.0.1:$FP_PORT --data-dir "$W/fp" >"$W/fp.log" 2>&1 &
FP_PID=$!
cat >"$W/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $W/distribution
http:
  addr: 127.0.0.1:$REG_PORT
YML
docker-registry serve "$W/registry.yml" >"$W/reg.log" 2>&1 &
REG_PID=$!
for i in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$FP_PORT/_fleetport/health" && curl -s -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" && break
  sleep 0.1
done
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$FP_PORT
.venv/bin/aws ecr create-repository --repository-name bench >/dev/null
PW=$(.venv/bin/aws ecr get-login-password)

secs() { # command... -> wall seconds; the command's CPU seconds (user+sys) go to $W/cpu
  local t0 t1 TIMEFORMAT='%U %S'
  t0=$(date +%s.%N)
  { time "$@" >/dev/null 2>"$W/err"; } 2>"$W/time" || { cat "$W/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk '{ printf "%.2f", $1 + $2 }' "$W/time" >"$W/cpu"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rate() { awk -v mb="$MB" -v s="$1" 'BEGIN { printf "%.0f", mb / s }'; }

fp_push=$(secs skopeo copy --dest-tls-verify=false --dest-creds "AWS:$PW" "oci:$W/image:bench" "docker://127.0.0.1:$FP_PORT/bench:1")
fp_push_rss=$(hwm $FP_PID)
skopeo_cpu=$(cat "$W/cpu")
reg_push=$(secs skopeo copy --dest-tls-verify=false "oci:$W/image:bench" "docker://127.0.0.1:$REG_PORT/bench:1")
reg_push_rss=$(hwm $REG_PID)
fp_pull=$(secs skopeo copy --src-tls-verify=false --src-creds "AWS:$PW" "docker://127.0.0.1:$FP_PORT/bench:1" "oci:$W/pull-fp:x")
reg_pull=$(secs skopeo copy --src-tls-verify=false "docker://127.0.0.1:$REG_PORT/bench:1" "oci:$W/pull-reg:x")
# The server's own ingest ceiling, without skopeo's hashing and compression checks on the
# client side: one monolithic blob PUT streamed by curl into each server.
raw_put() { # port auth-args... -> seconds for POST + streamed PUT of the layer
  local port=$1; shift
  local loc
  loc=$(curl -sf "$@" -X POST -D - -o /dev/null "http://127.0.0.1:$port/v2/raw/blobs/uploads/" |
    awk 'tolower($1) == "location:" { sub(/\r$/, "", $2); print $2 }')
  case $loc in http*) ;; *) loc="http://127.0.0.1:$port$loc" ;; esac
  case $loc in *\?*) loc="$loc&" ;; *) loc="$loc?" ;; esac
  secs curl -sf "$@" -X PUT -T "$W/image/blobs/sha256/$LAYER_FILE" \
    -H 'Content-Type: application/octet-stream' "${loc}digest=sha256:$LAYER_FILE"
}
.venv/bin/aws ecr create-repository --repository-name raw >/dev/null
fp_raw=$(raw_put "$FP_PORT" -u "AWS:$PW")
reg_raw=$(raw_put "$REG_PORT")
# Writing the bytes once to this disk, flushed, is the other physical limit.
disk_secs=$(secs dd if="$W/image/blobs/sha256/$LAYER_FILE" of="$W/dd.out" bs=1M conv=fsync)
rm -f "$W/dd.out"
# OpenSSL's sha256 through Python (uses the CPU's SHA extensions, like Fleetport's sha2).
sha_secs=$(secs $PY -c "import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], 'rb') as f:
    for b in iter(lambda: f.read(1 << 20), b''):
        h.update(b)" "$W/image/blobs/sha256/$LAYER_FILE")

printf '\nlayer: %s MB\n' "$MB"
printf '%-12s %12s %12s %16s\n' server "push MB/s" "pull MB/s" "peak RSS (KiB)"
printf '%-12s %12s %12s %16s\n' fleetport "$(rate "$fp_push")" "$(rate "$fp_pull")" "$(hwm $FP_PID)"
printf '%-12s %12s %12s %16s\n' distribution "$(rate "$reg_push")" "$(rate "$reg_pull")" "$(hwm $REG_PID)"
printf 'ratio fleetport/distribution: push %sx, pull %sx\n' \
  "$(awk -v a="$reg_push" -v b="$fp_push" 'BEGIN { printf "%.2f", a / b }')" \
  "$(awk -v a="$reg_pull" -v b="$fp_pull" 'BEGIN { printf "%.2f", a / b }')"
printf 'peak RSS during push: fleetport %s KiB, distribution %s KiB\n' "$fp_push_rss" "$reg_push_rss"
printf 'skopeo itself used %s CPU s for the Fleetport push: no server can take a push faster than %s MB/s from it here\n' \
  "$skopeo_cpu" "$(rate "$skopeo_cpu")"
printf 'raw blob PUT (curl, streamed): fleetport %s MB/s, distribution %s MB/s, ratio %sx\n' \
  "$(rate "$fp_raw")" "$(rate "$reg_raw")" "$(awk -v a="$reg_raw" -v b="$fp_raw" 'BEGIN { printf "%.2f", a / b }')"
printf 'disk write + fsync (dd): %s MB/s; fleetport raw PUT is %s%% of it\n' "$(rate "$disk_secs")" \
  "$(awk -v p="$(rate "$fp_raw")" -v s="$(rate "$disk_secs")" 'BEGIN { printf "%.0f", 100 * p / s }')"
printf 'single-core sha256 (OpenSSL, page cache): %s MB/s; skopeo push is %s%%, raw PUT %s%% of it\n' "$(rate "$sha_secs")" \
  "$(awk -v p="$(rate "$fp_push")" -v s="$(rate "$sha_secs")" 'BEGIN { printf "%.0f", 100 * p / s }')" \
  "$(awk -v p="$(rate "$fp_raw")" -v s="$(rate "$sha_secs")" 'BEGIN { printf "%.0f", 100 * p / s }')"
