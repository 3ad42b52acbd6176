#!/usr/bin/env bash
# Footprint of the single-machine default, beside moto_server in the same run: time to ready
# and idle memory (RSS, anonymous), then memory with 10,000 tasks and 1,000 services in the
# state (memory per task), then after a reset (back to idle?). Targets: ready <= 20 ms, idle
# RSS <= 16 MiB with anonymous <= 8 MiB.
#
#   bench/footprint.sh            # TASKS=10000 SERVICES=1000
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-10000}
SERVICES=${SERVICES:-1000}
scripts/test-env
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p fleetport -q
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
.venv/bin/python - "$OUT" "$TASKS" "$SERVICES" <<'PY'
import atexit, json, os, shutil, socket, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import boto3, botocore.config

out, tasks, services = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def memory(pid):
    fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    kib = lambda k: int(fields[k].split()[0]) / 1024
    return kib("VmRSS"), kib("RssAnon")

def ready(url, started):
    while True:
        try:
            urllib.request.urlopen(url, timeout=0.2).read()
            return (time.monotonic() - started) * 1000
        except OSError:
            time.sleep(0.001)

started_processes = []
atexit.register(lambda: [q.kill() for q in started_processes if q.poll() is None])

def start_fleetport():
    port = free_port()
    d = os.path.join(out, "fp")
    shutil.rmtree(d, ignore_errors=True)
    started = time.monotonic()
    p = subprocess.Popen(["target/release/fleetport", "up", "--listen", f"127.0.0.1:{port}", "--data-dir", d,
                          "--enable-reset", "--agent-timeout", "3600"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started_processes.append(p)
    return p, port, ready(f"http://127.0.0.1:{port}/_fleetport/health", started)

rows = []
# Ready: the best of five starts (a fresh data directory each time).
times = []
for _ in range(5):
    p, port, ms = start_fleetport()
    times.append(ms)
    p.terminate(); p.wait()
p, port, _ = start_fleetport()
time.sleep(2)
idle = memory(p.pid)
mport = free_port()
started = time.monotonic()
moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(mport)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
moto_ready = ready(f"http://127.0.0.1:{mport}/moto-api/", started)
time.sleep(2)
moto_idle = memory(moto.pid)
moto.terminate(); moto.wait()

cfg = botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}, max_pool_connections=16)
ecs = boto3.client("ecs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test", config=cfg)
def fill():
    ecs.create_cluster(clusterName="big")
    ecs.register_task_definition(family="t", containerDefinitions=[
        {"name": "c", "image": "busybox", "memory": 6, "cpu": 0, "command": ["sleep", "1"]}])
    doc = json.dumps({"instanceId": "i-0123456789abcdef0", "region": "us-east-1"})
    ecs.register_container_instance(cluster="big", instanceIdentityDocument=doc, totalResources=[
        {"name": "CPU", "type": "INTEGER", "integerValue": 1 << 20},
        {"name": "MEMORY", "type": "INTEGER", "integerValue": 1 << 24}])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ecs.run_task(cluster="big", taskDefinition="t", count=10, launchType="EC2"),
                      range(tasks // 10)))
        list(pool.map(lambda i: ecs.create_service(cluster="big", serviceName=f"s{i:04d}", taskDefinition="t",
                                                   desiredCount=0, launchType="EC2"), range(services)))
fill()
arns = sum(len(page["taskArns"]) for page in ecs.get_paginator("list_tasks").paginate(cluster="big"))
time.sleep(2)
full = memory(p.pid)
sys.path.insert(0, "tests")
from raw import reset  # noqa: E402  (the signed POST /_fleetport/reset the tests use)
assert reset(f"http://127.0.0.1:{port}").status == 200
time.sleep(3)
after = memory(p.pid)
p.terminate(); p.wait()

print(f"{'':38} {'Fleetport':>12} {'moto_server':>12} {'ratio':>7}")
print(f"{'ready (ms, best of 5 / once)':38} {min(times):12.1f} {moto_ready:12.1f} {moto_ready / min(times):6.1f}x")
print(f"{'idle RSS (MiB)':38} {idle[0]:12.1f} {moto_idle[0]:12.1f} {moto_idle[0] / idle[0]:6.1f}x")
print(f"{'idle anonymous (MiB)':38} {idle[1]:12.1f} {moto_idle[1]:12.1f} {moto_idle[1] / idle[1]:6.1f}x")
print(f"{tasks} tasks ({arns} listed) and {services} services: RSS {full[0]:.1f} MiB, anonymous {full[1]:.1f} MiB; "
      f"{(full[0] - idle[0]) * 1024 * 1024 / arns:.0f} bytes of RSS per task (services included)")
print(f"after a reset: RSS {after[0]:.1f} MiB, anonymous {after[1]:.1f} MiB (idle was {idle[0]:.1f} / {idle[1]:.1f})")
print("targets: ready <= 20 ms; idle RSS <= 16 MiB, anonymous <= 8 MiB")
PY
