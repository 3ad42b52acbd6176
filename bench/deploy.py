"""Driver for bench/deploy.sh (see there)."""
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import boto3

BIN = sys.argv[1]
INTERVAL = int(os.environ.get("INTERVAL", "5"))
THRESHOLD = int(os.environ.get("THRESHOLD", "2"))
DELAY = int(os.environ.get("DELAY", "5"))
TASKS = int(os.environ.get("TASKS", "50"))
work = tempfile.mkdtemp(prefix="fleetport-bench-deploy-")
procs = []


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service(ecs, name):
    return ecs.describe_services(cluster="bench", services=[name])["services"][0]


def wait_stable(ecs, name, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = service(ecs, name)
        if len(s["deployments"]) == 1 and s["runningCount"] == s["desiredCount"] \
                and s["deployments"][0]["rolloutState"] == "COMPLETED":
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} not stable")


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
    creds = dict(region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test",
                 endpoint_url=endpoint)
    ecs, ecr, elb = (boto3.client(s, **creds) for s in ("ecs", "ecr", "elbv2"))
    ecs.create_cluster(clusterName="bench")
    ecr.create_repository(repositoryName="web")
    ctx = f"{work}/ctx"
    os.makedirs(f"{ctx}/bin")
    os.makedirs(f"{ctx}/www")
    shutil.copy(shutil.which("busybox") or "/bin/busybox", f"{ctx}/bin/busybox")
    open(f"{ctx}/www/index.html", "w").write("ok\n")
    image = f"localhost:{port}/web:1"
    sh("docker", "import", "-", image, input=sh("tar", "-C", ctx, "-c", ".").stdout)
    password = __import__("base64").b64decode(
        ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode().split(":", 1)[1]
    denv = dict(os.environ, DOCKER_CONFIG=f"{work}/docker")
    sh("docker", "login", "-u", "AWS", "--password-stdin", f"localhost:{port}", input=password.encode(), env=denv)
    sh("docker", "push", image, env=denv)
    for version in ("v1", "v2"):
        ecs.register_task_definition(family="web", containerDefinitions=[{
            "name": "web", "image": image, "memory": 32, "stopTimeout": 2,
            "command": ["/bin/busybox", "sh", "-c",
                        f"echo {version} > /www/index.html; exec /bin/busybox httpd -f -p 8080 -h /www"],
            "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    for name in ("a", "b"):
        agent = subprocess.Popen([BIN, "agent", "--cluster", "bench", "--endpoint", endpoint, "--cpu", "65536",
                                  "--memory", "65536", "--state-dir", f"{work}/agent-{name}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        procs.append(agent)
        agent.stdout.readline()

    # 1. A rolling deployment under load.
    lb = elb.create_load_balancer(Name="bench", Subnets=["s-a", "s-b"])["LoadBalancers"][0]
    tg = elb.create_target_group(Name="bench", Protocol="HTTP", Port=8080, VpcId="vpc-local", TargetType="instance",
                                 HealthCheckIntervalSeconds=INTERVAL, HealthyThresholdCount=THRESHOLD,
                                 HealthCheckTimeoutSeconds=2)["TargetGroups"][0]["TargetGroupArn"]
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": str(DELAY)}])
    lb_port = free_port()
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=lb_port,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    ecs.create_service(cluster="bench", serviceName="web", taskDefinition="web:1", desiredCount=4,
                       loadBalancers=[{"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}])
    wait_stable(ecs, "web")
    bound = THRESHOLD * INTERVAL + DELAY
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", f"-d{bound * 3 + 20}s", f"http://127.0.0.1:{lb_port}/"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    t0 = time.monotonic()
    wall0 = time.time()
    ecs.update_service(cluster="bench", service="web", taskDefinition="web:2")
    if os.environ.get("TRACE_HEALTH"):
        seen = {}
        while not (lambda s: len(s["deployments"]) == 1 and s["runningCount"] == 4)(service(ecs, "web")):
            for h in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]:
                k = (h["Target"]["Id"], h["Target"]["Port"])
                v = (h["TargetHealth"]["State"], h["TargetHealth"].get("Reason"))
                if seen.get(k) != v:
                    seen[k] = v
                    print(f"  {time.monotonic() - t0:6.2f}s {k} {v}")
            time.sleep(0.2)
    wait_stable(ecs, "web")
    took = time.monotonic() - t0
    timeline = [(e["createdAt"].timestamp() - wall0, e["message"])
                for e in service(ecs, "web")["events"] if e["createdAt"].timestamp() >= wall0]
    out = wrk.communicate()[0]
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in sock.groups()) if sock else 0
    print("\nRolling deployment of 4 tasks under wrk (2 threads, 16 connections):")
    print(f"  requests {requests}, non-2xx {non2xx}, socket errors {socket_errors}")
    print(f"  deployment {took:.1f}s; lower bound {bound}s (healthy threshold {THRESHOLD} x interval {INTERVAL}s "
          f"+ deregistration delay {DELAY}s); ratio {took / bound:.2f}x")
    print("  the deployment's events:")
    for at, message in sorted(timeline):
        print(f"    {at:6.2f}s  {message[:110]}")

    if TASKS == 0:
        return
    # 2. Scaling from 0 to TASKS tasks on the two agents, against docker run of as many.
    ecs.register_task_definition(family="plain", containerDefinitions=[{
        "name": "web", "image": image, "memory": 32, "stopTimeout": 1,
        "command": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])
    ecs.create_service(cluster="bench", serviceName="scale", taskDefinition="plain", desiredCount=0)
    wait_stable(ecs, "scale")
    t0 = time.monotonic()
    ecs.update_service(cluster="bench", service="scale", desiredCount=TASKS)
    while service(ecs, "scale")["runningCount"] < TASKS:
        time.sleep(0.05)
    fp = time.monotonic() - t0
    ecs.update_service(cluster="bench", service="scale", desiredCount=0)
    d = docker_run(image, TASKS)
    print(f"\nScaling a service from 0 to {TASKS} tasks on 2 agents: fleetport {fp:.2f}s, "
          f"docker run x{TASKS} {d:.2f}s, ratio {fp / d:.2f}x")


def docker_run(image, n):
    t0 = time.monotonic()

    def one(_):
        return sh("docker", "run", "-d", "-m", "32m", "-p", "127.0.0.1::8080", image,
                  "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www", text=True).stdout.strip()

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        ids = list(pool.map(one, range(n)))
    took = time.monotonic() - t0
    sh("docker", "rm", "-f", *ids)
    return took


try:
    main()
finally:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.amazonaws.ecs.cluster=bench"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
