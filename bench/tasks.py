"""Driver for bench/tasks.sh (see there)."""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3

BIN = sys.argv[1]
COUNTS = (1, 20)
work = tempfile.mkdtemp(prefix="fleetport-bench-tasks-")
procs = []


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def answers(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200
    except OSError:
        return False


def wait_ports(ports):
    pending = set(ports)
    while pending:
        pending = {p for p in pending if not answers(p)}
        if pending:
            time.sleep(0.005)


def main():
    up = subprocess.Popen([BIN, "up", "--listen", "127.0.0.1:0", "--data-dir", f"{work}/fp",
                           "--no-managed-capacity"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(up)
    endpoint = None
    while endpoint is None:
        line = up.stdout.readline()
        if "AWS_ENDPOINT_URL=" in line:
            endpoint = line.strip().split("AWS_ENDPOINT_URL=")[1]
    port = endpoint.rsplit(":", 1)[1]
    creds = dict(region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test", endpoint_url=endpoint)
    ecs, ecr = boto3.client("ecs", **creds), boto3.client("ecr", **creds)
    ecs.create_cluster(clusterName="bench")
    ecr.create_repository(repositoryName="web")
    # The image: busybox-static serving a page, pushed into Fleetport's registry.
    ctx = f"{work}/ctx"
    os.makedirs(f"{ctx}/bin")
    os.makedirs(f"{ctx}/www")
    shutil.copy(shutil.which("busybox") or "/bin/busybox", f"{ctx}/bin/busybox")
    open(f"{ctx}/www/index.html", "w").write("ok\n")
    image = f"localhost:{port}/web:1"
    tar = sh("tar", "-C", ctx, "-c", ".").stdout
    sh("docker", "import", "-", image, input=tar)
    password = __import__("base64").b64decode(
        ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode().split(":", 1)[1]
    denv = dict(os.environ, DOCKER_CONFIG=f"{work}/docker")
    sh("docker", "login", "-u", "AWS", "--password-stdin", f"localhost:{port}", input=password.encode(), env=denv)
    sh("docker", "push", image, env=denv)
    cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
    ecs.register_task_definition(family="web", containerDefinitions=[{
        "name": "web", "image": image, "memory": 32, "command": cmd, "stopTimeout": 1,
        "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    agent = subprocess.Popen([BIN, "agent", "--cluster", "bench", "--endpoint", endpoint, "--cpu", "65536",
                              "--memory", "65536", "--state-dir", f"{work}/agent"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    procs.append(agent)
    agent.stdout.readline()
    # Warm-up: one task, so both sides start with the image in the engine.
    fleetport_run(ecs, 1)
    rows = []
    for n in COUNTS:
        fp_running, fp_port = fleetport_run(ecs, n)
        d_running, d_port = docker_run(image, cmd, n)
        rows.append((n, fp_running, fp_port, d_running, d_port))
    print(f"\n{'tasks':>5} {'fleetport RUNNING':>18} {'fleetport port':>15} {'docker run':>11} {'docker port':>12} {'ratio (port)':>13}")
    for n, a, b, c, d in rows:
        print(f"{n:>5} {a:>17.2f}s {b:>14.2f}s {c:>10.2f}s {d:>11.2f}s {b / d:>12.2f}x")


def fleetport_run(ecs, n):
    t0 = time.monotonic()
    arns = []
    left = n
    while left:
        out = ecs.run_task(cluster="bench", taskDefinition="web", count=min(left, 10))
        assert not out["failures"], out["failures"]
        arns += [t["taskArn"] for t in out["tasks"]]
        left -= min(left, 10)
    while True:
        tasks = ecs.describe_tasks(cluster="bench", tasks=arns)["tasks"]
        if all(t["lastStatus"] == "RUNNING" for t in tasks):
            break
        time.sleep(0.01)
    running = time.monotonic() - t0
    wait_ports([t["containers"][0]["networkBindings"][0]["hostPort"] for t in tasks])
    port = time.monotonic() - t0
    for a in arns:
        ecs.stop_task(cluster="bench", task=a)
    while any(t["lastStatus"] != "STOPPED" for t in ecs.describe_tasks(cluster="bench", tasks=arns)["tasks"]):
        time.sleep(0.1)
    ids = sh("docker", "ps", "-aq", "--filter", "label=com.amazonaws.ecs.cluster=bench").stdout.split()
    if ids:
        sh("docker", "rm", "-f", *ids)
    return running, port


def free_ports(n):
    import socket
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def docker_run(image, cmd, n):
    t0 = time.monotonic()

    # Host ports are chosen here so that finding them costs docker nothing: ports the kernel
    # hands out as free (all held at once, so they differ), not a fixed range that another
    # process (or a Fleetport task's dynamic port) may already hold.
    ports = free_ports(n)

    def one(p):
        return sh("docker", "run", "-d", "-m", "32m", "-p", f"127.0.0.1:{p}:8080", image, *cmd, text=True).stdout.strip()

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        ids = list(pool.map(one, ports))
    running = time.monotonic() - t0
    wait_ports(ports)
    port = time.monotonic() - t0
    sh("docker", "rm", "-f", *ids)
    return running, port


try:
    main()
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.amazonaws.ecs.cluster=bench"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
