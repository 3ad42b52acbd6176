"""Tasks on real containers: `fleetport agent` processes as EC2 container instances, images built
here from busybox-static and pushed into Fleetport's own registry, tasks driven with the AWS CLI
and boto3, containers checked with the Docker CLI and reached with HTTP."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid

import botocore.exceptions
import pytest

import conformance
from conftest import BIN, wait_for
from test_registry import push_foreign_image

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {r.stderr}")
    return r


def remove_containers(cluster):
    """Removes every container Fleetport agents started for `cluster`."""
    ids = docker("ps", "-aq", "--filter", f"label=com.amazonaws.ecs.cluster={cluster}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)


class Agent:
    def __init__(self, server, cluster, state_dir, *extra, endpoint=None):
        env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        # The log goes to a file: a pipe nobody reads fills up and blocks the agent's logging.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([BIN, "agent", "--cluster", cluster, "--endpoint", endpoint or server.endpoint,
                                      "--state-dir", state_dir, *extra],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        assert "container instance" in line, self.logs() if self.proc.poll() is not None else line
        self.arn = line.strip().rsplit(" ", 1)[1]

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)


@pytest.fixture
def env(server):
    """A cluster, a registry login, an image in Fleetport's registry, and cleanup of every
    container and agent the test made."""
    cluster = f"t{uuid.uuid4().hex[:10]}"
    ecs = server.client("ecs")
    ecs.create_cluster(clusterName=cluster)
    tmp = tempfile.mkdtemp(prefix="fleetport-agent-")
    agents = []
    state = {"server": server, "ecs": ecs, "cluster": cluster, "tmp": tmp, "agents": agents}

    def agent(name="a", *extra):
        a = Agent(server, cluster, os.path.join(tmp, name), *extra)
        agents.append(a)
        return a

    state["agent"] = agent
    state["image"] = push_image(server, tmp)
    yield state
    for a in agents:
        a.stop(signal.SIGKILL)
    remove_containers(cluster)
    shutil.rmtree(tmp, ignore_errors=True)


def push_image(server, tmp):
    """busybox-static with its applets and a web root, pushed to <registry>/app:1; the local copy is
    removed so that tasks must pull it from Fleetport."""
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="app")
    ctx = os.path.join(tmp, "ctx")
    os.makedirs(f"{ctx}/bin")
    os.makedirs(f"{ctx}/www")
    shutil.copy(BUSYBOX, f"{ctx}/bin/busybox")
    for applet in ("sh", "sleep", "httpd", "cat", "echo", "true", "false", "trap", "wget"):
        os.symlink("busybox", f"{ctx}/bin/{applet}")
    with open(f"{ctx}/www/index.html", "w") as f:
        f.write("hello from a task\n")
    ref = f"localhost:{server.port}/app:1"
    tar = subprocess.run(["tar", "-C", ctx, "-c", "."], capture_output=True, check=True).stdout
    subprocess.run(["docker", "import", "-c", 'ENV PATH=/bin', "-", ref], input=tar, capture_output=True, check=True)
    config = os.path.join(tmp, "docker")
    os.makedirs(config)
    password = server.cli("ecr", "get-login-password").stdout.strip()
    denv = dict(os.environ, DOCKER_CONFIG=config)
    subprocess.run(["docker", "login", "-u", "AWS", "--password-stdin", f"localhost:{server.port}"], input=password,
                   capture_output=True, text=True, env=denv, check=True)
    subprocess.run(["docker", "push", ref], capture_output=True, env=denv, check=True)
    docker("rmi", ref)
    return ref


def register(ecs, family, containers, **kw):
    return ecs.register_task_definition(family=family, containerDefinitions=containers, **kw)["taskDefinition"]


def describe(ecs, cluster, arns):
    out = ecs.describe_tasks(cluster=cluster, tasks=arns, include=["TAGS"])
    conformance.check("ecs", "DescribeTasks", out)
    return out["tasks"]


def task_status(ecs, cluster, arn, status, seconds=30):
    return wait_for(lambda: next((t for t in describe(ecs, cluster, [arn]) if t["lastStatus"] == status), None), seconds)


def httpd(image, name="web", **kw):
    return dict({"name": name, "image": image, "memory": 64, "stopTimeout": 2,
                 "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                 "portMappings": [{"containerPort": 8080, "hostPort": 0}]}, **kw)


def test_seed_workflow_run_serve_stop(env):
    """The issue's walkthrough: an agent with declared resources, run-task --count 2, the waiter,
    networkBindings, curl on each host port, stop-task with a reason, tasks-stopped."""
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    agent = env["agent"]("a", "--cpu", "2048", "--memory", "1024")
    register(ecs, "web", [httpd(env["image"])])
    out = json.loads(server.cli("ecs", "run-task", "--cluster", cluster, "--task-definition", "web:1",
                                "--launch-type", "EC2", "--count", "2", "--tags", "key=team,value=a").stdout)
    conformance.check_raw("ecs", "RunTask", out)
    assert out["failures"] == [] and len(out["tasks"]) == 2
    arns = [t["taskArn"] for t in out["tasks"]]
    for t in out["tasks"]:
        assert t["taskArn"].startswith(f"arn:aws:ecs:us-east-1:000000000000:task/{cluster}/")
        assert t["group"] == "family:web" and t["launchType"] == "EC2" and t["containerInstanceArn"] == agent.arn
    server.cli("ecs", "wait", "tasks-running", "--cluster", cluster, "--tasks", *arns)
    tasks = describe(ecs, cluster, arns)
    ports = set()
    for t in tasks:
        assert t["lastStatus"] == "RUNNING" and t["tags"] == [{"key": "team", "value": "a"}]
        assert t["createdAt"] <= t["pullStartedAt"] <= t["pullStoppedAt"] <= t["startedAt"]
        (c,) = t["containers"]
        (b,) = c["networkBindings"]
        assert b["bindIP"] == "127.0.0.1" and b["containerPort"] == 8080 and b["hostPort"] > 1024
        ports.add(b["hostPort"])
        body = urllib.request.urlopen(f"http://127.0.0.1:{b['hostPort']}/", timeout=5).read()
        assert body == b"hello from a task\n"
        # The container carries the ECS agent's labels.
        labels = json.loads(docker("inspect", c["runtimeId"], "--format", "{{json .Config.Labels}}").stdout)
        assert labels["com.amazonaws.ecs.task-arn"] == t["taskArn"]
        assert labels["com.amazonaws.ecs.container-name"] == "web"
        assert labels["com.amazonaws.ecs.task-definition-family"] == "web"
        assert labels["com.amazonaws.ecs.task-definition-version"] == "1"
    assert len(ports) == 2, "dynamic host ports differ"
    inst = ecs.describe_container_instances(cluster=cluster, containerInstances=[agent.arn])
    conformance.check("ecs", "DescribeContainerInstances", inst)
    ci = inst["containerInstances"][0]
    remaining = {r["name"]: r for r in ci["remainingResources"]}
    assert ci["agentConnected"] and ci["runningTasksCount"] == 2
    assert remaining["MEMORY"]["integerValue"] == 1024 - 2 * 64
    # StopTask answers at once, keeps the reason, and the stop finishes in the background.
    started = time.monotonic()
    stopped = ecs.stop_task(cluster=cluster, task=arns[0], reason="done")["task"]
    assert time.monotonic() - started < 1.5
    assert stopped["desiredStatus"] == "STOPPED" and stopped["stoppedReason"] == "done"
    server.cli("ecs", "wait", "tasks-stopped", "--cluster", cluster, "--tasks", arns[0])
    t = describe(ecs, cluster, [arns[0]])[0]
    assert t["stopCode"] == "UserInitiated" and t["stoppedReason"] == "done"
    # httpd as PID 1 ignores SIGTERM: SIGKILL after stopTimeout (2 s).
    assert t["containers"][0]["exitCode"] == 137
    assert 1.5 <= (t["stoppedAt"] - t["stoppingAt"]).total_seconds() < 10
    ci = ecs.describe_container_instances(cluster=cluster, containerInstances=[agent.arn])["containerInstances"][0]
    assert ci["runningTasksCount"] == 1
    assert {r["name"]: r for r in ci["remainingResources"]}["MEMORY"]["integerValue"] == 1024 - 64
    listed = ecs.list_tasks(cluster=cluster)["taskArns"]
    assert listed == [arns[1]]
    assert ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"] == [arns[0]]


def test_essential_and_non_essential_exits(env):
    ecs, cluster = env["ecs"], env["cluster"]
    env["agent"]()
    image = env["image"]
    register(ecs, "exits", [
        {"name": "app", "image": image, "memory": 32, "command": ["sh", "-c", "echo app-started; sleep 1; exit 3"]},
        {"name": "side", "image": image, "memory": 32, "essential": False, "stopTimeout": 2,
         "command": ["sleep", "1000"]},
    ])
    arn = ecs.run_task(cluster=cluster, taskDefinition="exits")["tasks"][0]["taskArn"]
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert t["stopCode"] == "EssentialContainerExited"
    assert t["stoppedReason"] == "Essential container in task exited"
    by_name = {c["name"]: c for c in t["containers"]}
    assert by_name["app"]["exitCode"] == 3
    assert by_name["side"]["lastStatus"] == "STOPPED"
    # `fleetport logs` prints what the task's containers wrote, kept after the task stopped.
    logs = subprocess.run([BIN, "logs", arn], capture_output=True, text=True, timeout=30)
    assert logs.returncode == 0 and "app | app-started" in logs.stdout, (logs.stdout, logs.stderr)
    # A non-essential container exiting leaves the task running.
    register(ecs, "sidecar-exits", [
        {"name": "app", "image": image, "memory": 32, "stopTimeout": 2, "command": ["sleep", "1000"]},
        {"name": "init", "image": image, "memory": 32, "essential": False, "command": ["true"]},
    ])
    arn = ecs.run_task(cluster=cluster, taskDefinition="sidecar-exits")["tasks"][0]["taskArn"]
    task_status(ecs, cluster, arn, "RUNNING")
    wait_for(lambda: {c["name"]: c for c in describe(ecs, cluster, [arn])[0]["containers"]}["init"].get("exitCode") == 0)
    time.sleep(1)
    assert describe(ecs, cluster, [arn])[0]["lastStatus"] == "RUNNING"


def test_depends_on_orders_starts(env):
    ecs, cluster = env["ecs"], env["cluster"]
    env["agent"]()
    image = env["image"]
    register(ecs, "ordered", [
        {"name": "init", "image": image, "memory": 32, "essential": False, "command": ["sh", "-c", "sleep 2"]},
        {"name": "app", "image": image, "memory": 32, "stopTimeout": 2, "command": ["sleep", "1000"],
         "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]},
    ])
    arn = ecs.run_task(cluster=cluster, taskDefinition="ordered")["tasks"][0]["taskArn"]
    t = task_status(ecs, cluster, arn, "RUNNING")
    ids = {c["name"]: c["runtimeId"] for c in t["containers"]}
    init_finished = docker("inspect", ids["init"], "--format", "{{.State.FinishedAt}}").stdout.strip()
    app_started = docker("inspect", ids["app"], "--format", "{{.State.StartedAt}}").stdout.strip()
    assert init_finished < app_started, (init_finished, app_started)
    # A SUCCESS dependency that fails stops the task before it starts, leaving no container.
    register(ecs, "broken", [
        {"name": "init", "image": image, "memory": 32, "essential": False, "command": ["false"]},
        {"name": "app", "image": image, "memory": 32, "command": ["sleep", "1000"],
         "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]},
    ])
    arn = ecs.run_task(cluster=cluster, taskDefinition="broken")["tasks"][0]["taskArn"]
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert t["stopCode"] == "TaskFailedToStart" and "SUCCESS" in t["stoppedReason"]
    assert docker("ps", "-aq", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}").stdout.strip() == ""


def test_placement_failures_and_strategies(env):
    ecs, cluster = env["ecs"], env["cluster"]
    register(ecs, "x", [httpd(env["image"])])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.run_task(cluster=cluster, taskDefinition="x")
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    assert e.value.response["Error"]["Message"] == "No Container Instances were found in your cluster."
    agents = [env["agent"](n, "--cpu", "1024", "--memory", "256", "--attribute", f"stack={s}")
              for n, s in (("a", "prod"), ("b", "prod"), ("c", "dev"))]
    image = env["image"]
    register(ecs, "big", [{"name": "m", "image": image, "memory": 512, "command": ["sleep", "1000"]}])
    out = ecs.run_task(cluster=cluster, taskDefinition="big")
    conformance.check("ecs", "RunTask", out)
    assert out["tasks"] == [] and {f["reason"] for f in out["failures"]} == {"RESOURCE:MEMORY"}
    assert {f["arn"] for f in out["failures"]} == {a.arn for a in agents}
    # memberOf keeps tasks on matching instances; spread by instanceId puts one on each.
    register(ecs, "small", [{"name": "s", "image": image, "memory": 16, "stopTimeout": 1, "command": ["sleep", "1000"]}])
    out = ecs.run_task(cluster=cluster, taskDefinition="small", count=2,
                       placementConstraints=[{"type": "memberOf", "expression": "attribute:stack == prod"}],
                       placementStrategy=[{"type": "spread", "field": "instanceId"}])
    placed = {t["containerInstanceArn"] for t in out["tasks"]}
    assert placed == {agents[0].arn, agents[1].arn}
    # distinctInstance: a third task of the group has only the dev instance left.
    out = ecs.run_task(cluster=cluster, taskDefinition="small", count=2,
                       placementConstraints=[{"type": "distinctInstance"}])
    assert [t["containerInstanceArn"] for t in out["tasks"]] == [agents[2].arn]
    assert len(out["failures"]) == 3
    # Static host ports: the second task on one instance fails RESOURCE:PORTS.
    register(ecs, "static", [httpd(image, portMappings=[{"containerPort": 8080, "hostPort": 18080}], memory=16)])
    first = ecs.run_task(cluster=cluster, taskDefinition="static",
                         placementConstraints=[{"type": "memberOf", "expression": "attribute:stack == dev"}])
    assert len(first["tasks"]) == 1
    second = ecs.run_task(cluster=cluster, taskDefinition="static",
                          placementConstraints=[{"type": "memberOf", "expression": "attribute:stack == dev"}])
    assert second["tasks"] == [] and "RESOURCE:PORTS" in {f["reason"] for f in second["failures"]}
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.run_task(cluster=cluster, taskDefinition="small",
                     placementConstraints=[{"type": "memberOf", "expression": "attribute:stack ~~ prod"}])
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    # A DRAINING instance gets no new tasks.
    ecs.update_container_instances_state(cluster=cluster, containerInstances=[agents[2].arn], status="DRAINING")
    out = ecs.run_task(cluster=cluster, taskDefinition="small",
                       placementConstraints=[{"type": "memberOf", "expression": "attribute:stack == dev"}])
    assert out["tasks"] == [] and {f["reason"] for f in out["failures"]} >= {"INACTIVE"}


def test_spread_by_zone_random_and_the_query_language(env):
    ecs, cluster = env["ecs"], env["cluster"]
    layout = (("a", "us-east-1a", "t3.small"), ("b", "us-east-1a", "t3.large"), ("c", "us-east-1b", "m5.large"))
    agents = {n: env["agent"](n, "--cpu", "1024", "--memory", "256", "--instance-type", kind,
                              "--attribute", f"ecs.availability-zone={zone}")
              for n, zone, kind in layout}
    zone_of = {agents[n].arn: zone for n, zone, _ in layout}
    register(ecs, "tiny", [{"name": "s", "image": env["image"], "memory": 8, "stopTimeout": 1,
                            "command": ["sleep", "1000"]}])
    # spread over zones: two zones, two tasks each, although zone a has two instances.
    out = ecs.run_task(cluster=cluster, taskDefinition="tiny", count=4, group="zonal",
                       placementStrategy=[{"type": "spread", "field": "attribute:ecs.availability-zone"}])
    zones = [zone_of[t["containerInstanceArn"]] for t in out["tasks"]]
    assert sorted(zones) == ["us-east-1a", "us-east-1a", "us-east-1b", "us-east-1b"], zones
    # random scatters ten tasks: all ten on one instance would happen 1 time in 20,000 (asking
    # for all three instances, as this test once did, fails 1 time in 20 by chance alone).
    out = ecs.run_task(cluster=cluster, taskDefinition="tiny", count=10, group="scatter",
                       placementStrategy=[{"type": "random"}])
    used = {t["containerInstanceArn"] for t in out["tasks"]}
    assert len(out["tasks"]) == 10 and len(used) >= 2 and used <= set(zone_of), out["failures"]

    def listed(expr):
        arns = ecs.list_container_instances(cluster=cluster, filter=expr)["containerInstanceArns"]
        return {n for n, _, _ in layout if agents[n].arn in arns}

    assert listed("attribute:ecs.instance-type =~ t3\\..* and not(attribute:ecs.availability-zone == us-east-1b)") == {"a", "b"}
    assert listed("(attribute:ecs.instance-type == m5.large or ec2InstanceId !exists) && agentConnected == true") == {"c"}
    # One task on each instance (random may have left one empty), then every instance counts.
    out = ecs.run_task(cluster=cluster, taskDefinition="tiny", count=3, group="each",
                       placementConstraints=[{"type": "distinctInstance"}])
    assert {t["containerInstanceArn"] for t in out["tasks"]} == set(zone_of), out["failures"]
    wait_for(lambda: listed("runningTasksCount >= 1 and registeredAt > 2020-01-01") == {"a", "b", "c"}, 30)
    assert listed("task:group == zonal and attribute:ecs.availability-zone == us-east-1b") == {"c"}
    assert listed("runningTasksCount > 100") == set()
    # memberOf with parentheses and a regex.
    out = ecs.run_task(cluster=cluster, taskDefinition="tiny", count=3, placementConstraints=[
        {"type": "memberOf", "expression": "(attribute:ecs.instance-type =~ .*large) and !(attribute:ecs.availability-zone in [us-east-1b])"}])
    assert {t["containerInstanceArn"] for t in out["tasks"]} == {agents["b"].arn}
    for bad in ("registeredAt > yesterday", "ec2InstanceId > i-1", "(attribute:x == 1", "colour == red"):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ecs.list_container_instances(cluster=cluster, filter=bad)
        assert e.value.response["Error"]["Code"] == "InvalidParameterException", bad


def test_agent_restart_readopts_and_faults(env):
    ecs, cluster = env["ecs"], env["cluster"]
    agent = env["agent"]("a")
    register(ecs, "web", [httpd(env["image"])])
    arn = ecs.run_task(cluster=cluster, taskDefinition="web")["tasks"][0]["taskArn"]
    runtime_id = task_status(ecs, cluster, arn, "RUNNING")["containers"][0]["runtimeId"]
    agent.stop(signal.SIGKILL)
    again = env["agent"]("a")
    assert again.arn == agent.arn, "the instance keeps its identity"
    time.sleep(1)
    t = describe(ecs, cluster, [arn])[0]
    assert t["lastStatus"] == "RUNNING" and t["containers"][0]["runtimeId"] == runtime_id
    assert docker("ps", "-q", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}").stdout.split() == [runtime_id[:12]]
    # A container killed outside Fleetport stops its task with the reason.
    docker("kill", runtime_id)
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert t["stoppedReason"] == "Essential container in task exited" and t["containers"][0]["exitCode"] == 137
    # A missing image: the task never runs, the reason names the pull, nothing is left behind.
    register(ecs, "missing", [{"name": "m", "image": f"localhost:{env['server'].port}/app:nope", "memory": 16}])
    arn = ecs.run_task(cluster=cluster, taskDefinition="missing")["tasks"][0]["taskArn"]
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert t["stopCode"] == "TaskFailedToStart"
    assert t["containers"][0]["reason"].startswith("CannotPullContainerError:")
    assert docker("ps", "-aq", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}").stdout.strip() == ""


def test_health_checks_drive_container_and_task_health(env):
    ecs, cluster = env["ecs"], env["cluster"]
    env["agent"]()
    image = env["image"]
    for family, check in (("healthy", "true"), ("sick", "false")):
        register(ecs, family, [{"name": "app", "image": image, "memory": 16, "stopTimeout": 1,
                                "command": ["sleep", "1000"],
                                "healthCheck": {"command": ["CMD-SHELL", check], "interval": 5, "retries": 1,
                                                "timeout": 2}}])
    good = ecs.run_task(cluster=cluster, taskDefinition="healthy")["tasks"][0]["taskArn"]
    bad = ecs.run_task(cluster=cluster, taskDefinition="sick")["tasks"][0]["taskArn"]
    assert describe(ecs, cluster, [good])[0]["healthStatus"] == "UNKNOWN"
    wait_for(lambda: describe(ecs, cluster, [good])[0]["healthStatus"] == "HEALTHY", 30)
    t = wait_for(lambda: next((t for t in describe(ecs, cluster, [bad]) if t["healthStatus"] == "UNHEALTHY"), None), 30)
    assert t["containers"][0]["healthStatus"] == "UNHEALTHY"
    # A standalone task keeps running while unhealthy.
    assert t["lastStatus"] == "RUNNING"


def test_fargate_awsvpc_on_the_managed_capacity(env):
    """`fleetport up` runs FARGATE tasks itself: one network namespace and address per task, shared
    by its containers (they reach each other on localhost), reported as an ENI attachment."""
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    image = env["image"]
    register(ecs, "api", [
        httpd(image, portMappings=[{"containerPort": 8080}]),
        {"name": "probe", "image": image, "essential": False,
         "command": ["sh", "-c", "sleep 1; wget -q -O /dev/null http://localhost:8080/"]},
    ], requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="512")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.run_task(cluster=cluster, taskDefinition="api", launchType="FARGATE")
    assert e.value.response["Error"]["Message"] == \
        "Network Configuration must be provided when networkMode 'awsvpc' is specified."
    out = json.loads(server.cli("ecs", "run-task", "--cluster", cluster, "--task-definition", "api:1",
                                "--launch-type", "FARGATE", "--network-configuration",
                                "awsvpcConfiguration={subnets=[subnet-local]}").stdout)
    conformance.check_raw("ecs", "RunTask", out)
    t = out["tasks"][0]
    assert t["lastStatus"] == "PROVISIONING" and t["launchType"] == "FARGATE"
    assert "containerInstanceArn" not in t and t["platformVersion"] == "1.4.0"
    arn = t["taskArn"]
    server.cli("ecs", "wait", "tasks-running", "--cluster", cluster, "--tasks", arn)
    t = describe(ecs, cluster, [arn])[0]
    (att,) = t["attachments"]
    details = {d["name"]: d["value"] for d in att["details"]}
    assert att["type"] == "ElasticNetworkInterface" and att["status"] == "ATTACHED"
    assert details["subnetId"] == "subnet-local" and details["networkInterfaceId"].startswith("eni-")
    ip = details["privateIPv4Address"]
    for c in t["containers"]:
        assert c["networkInterfaces"] == [{"attachmentId": att["id"], "privateIpv4Address": ip}]
        assert c["networkBindings"] == []
    assert urllib.request.urlopen(f"http://{ip}:8080/", timeout=5).read() == b"hello from a task\n"
    # The sidecar reached the web container on localhost and exited 0.
    wait_for(lambda: {c["name"]: c for c in describe(ecs, cluster, [arn])[0]["containers"]}["probe"].get("exitCode") == 0)
    ecs.stop_task(cluster=cluster, task=arn)
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert t["stoppedReason"] == "Task stopped by user" and t["stopCode"] == "UserInitiated"
    assert docker("ps", "-aq", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}",
                  "--filter", "label=com.amazonaws.ecs.container-name=~internal~ecs~pause").stdout.strip() == ""


def test_start_task_server_restart_platform_and_deregister(env):
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    agent = env["agent"]("a")
    image = env["image"]
    register(ecs, "web", [httpd(image)])
    out = ecs.start_task(cluster=cluster, taskDefinition="web",
                         containerInstances=[agent.arn, "0" * 32], startedBy="me")
    conformance.check("ecs", "StartTask", out)
    assert [f["reason"] for f in out["failures"]] == ["MISSING"]
    (t,) = out["tasks"]
    assert t["containerInstanceArn"] == agent.arn and t["startedBy"] == "me"
    arn = t["taskArn"]
    runtime_id = task_status(ecs, cluster, arn, "RUNNING")["containers"][0]["runtimeId"]
    assert ecs.list_tasks(cluster=cluster, startedBy="me", containerInstance=agent.arn)["taskArns"] == [arn]
    # `fleetport up` restarted on the same port: the task and its state are intact, the agent
    # carries on, and the container was never restarted.
    port = server.port
    server.stop()
    server.start(port=port)
    ecs = server.client("ecs")
    t = describe(ecs, cluster, [arn])[0]
    assert t["lastStatus"] == "RUNNING" and t["containers"][0]["runtimeId"] == runtime_id
    started = docker("inspect", runtime_id, "--format", "{{.State.StartedAt}}").stdout.strip()
    ecs.stop_task(cluster=cluster, task=arn)
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert docker("inspect", runtime_id, "--format", "{{.State.StartedAt}}").stdout.strip() == started
    # An image built for another platform is refused before it starts, naming both platforms.
    push_foreign_image(server, "app", "arm")
    register(ecs, "arm", [{"name": "m", "image": f"localhost:{port}/app:arm", "memory": 16}])
    arn = ecs.run_task(cluster=cluster, taskDefinition="arm")["tasks"][0]["taskArn"]
    t = task_status(ecs, cluster, arn, "STOPPED")
    reason = t["containers"][0]["reason"]
    assert t["stopCode"] == "TaskFailedToStart" and reason.startswith("CannotPullContainerError:")
    assert "arm64" in reason and "amd64" in reason, reason
    assert docker("ps", "-aq", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}").stdout.strip() == ""
    docker("rmi", "-f", f"localhost:{port}/app:arm", check=False)
    # Deregistering: refused while tasks run unless forced; then INACTIVE and unlisted.
    arn = ecs.run_task(cluster=cluster, taskDefinition="web")["tasks"][0]["taskArn"]
    task_status(ecs, cluster, arn, "RUNNING")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.deregister_container_instance(cluster=cluster, containerInstance=agent.arn)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    out = ecs.deregister_container_instance(cluster=cluster, containerInstance=agent.arn, force=True)
    conformance.check("ecs", "DeregisterContainerInstance", out)
    assert out["containerInstance"]["status"] == "INACTIVE"
    assert ecs.list_container_instances(cluster=cluster)["containerInstanceArns"] == []


def test_task_api_bad_inputs(server):
    """Clear AWS-shaped errors, and nothing stored, for bad task and instance requests."""
    ecs = server.client("ecs")
    ecs.create_cluster(clusterName="bad")
    ecs.register_task_definition(family="f", containerDefinitions=[{"name": "c", "image": "x", "memory": 8}])
    cases = [
        ("run_task", dict(cluster="bad", taskDefinition="f", count=11), "InvalidParameterException"),
        ("run_task", dict(cluster="bad", taskDefinition="nope"), "ClientException"),
        ("run_task", dict(cluster="nope", taskDefinition="f"), "ClusterNotFoundException"),
        ("run_task", dict(cluster="bad", taskDefinition="f", launchType="EXTERNAL"), "InvalidParameterException"),
        ("run_task", dict(cluster="bad", taskDefinition="f", placementStrategy=[{"type": "binpack", "field": "disk"}]),
         "InvalidParameterException"),
        ("start_task", dict(cluster="bad", taskDefinition="f", containerInstances=[]), "InvalidParameterException"),
        ("stop_task", dict(cluster="bad", task="0" * 32), "InvalidParameterException"),
        ("register_container_instance", dict(cluster="bad", containerInstanceArn="arn:aws:ecs:us-east-1:000000000000:container-instance/bad/é"),
         "InvalidParameterException"),
        ("update_container_instances_state", dict(cluster="bad", containerInstances=["x"], status="INACTIVE"),
         "InvalidParameterException"),
        ("list_container_instances", dict(cluster="bad", filter="attribute:x ~ y"), "InvalidParameterException"),
    ]
    for op, kw, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            getattr(ecs, op)(**kw)
        assert e.value.response["Error"]["Code"] == code, (op, kw, e.value.response)
    out = ecs.describe_tasks(cluster="bad", tasks=["0" * 32])
    conformance.check("ecs", "DescribeTasks", out)
    assert out["tasks"] == [] and out["failures"][0]["reason"] == "MISSING"
    assert ecs.list_tasks(cluster="bad")["taskArns"] == []
    assert ecs.list_container_instances(cluster="bad")["containerInstanceArns"] == []


def test_container_settings_are_applied(env):
    ecs, cluster = env["ecs"], env["cluster"]
    env["agent"]()
    register(ecs, "settings", [{
        "name": "app", "image": env["image"], "memory": 48, "memoryReservation": 24, "cpu": 128,
        "command": ["sleep", "1000"], "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "td"}],
        "workingDirectory": "/www", "user": "1000:1000", "stopTimeout": 3,
        "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 2048}],
        "dockerLabels": {"team": "core"},
    }])
    arn = ecs.run_task(cluster=cluster, taskDefinition="settings", overrides={"containerOverrides": [
        {"name": "app", "environment": [{"name": "B", "value": "override"}]}]})["tasks"][0]["taskArn"]
    t = task_status(ecs, cluster, arn, "RUNNING")
    c = json.loads(docker("inspect", t["containers"][0]["runtimeId"]).stdout)[0]
    env_vars = dict(e.split("=", 1) for e in c["Config"]["Env"])
    assert env_vars["A"] == "1" and env_vars["B"] == "override"
    assert c["Config"]["WorkingDir"] == "/www" and c["Config"]["User"] == "1000:1000"
    assert c["Config"]["StopTimeout"] == 3 and c["Config"]["Labels"]["team"] == "core"
    hc = c["HostConfig"]
    assert hc["Memory"] == 48 * 1024 * 1024 and hc["MemoryReservation"] == 24 * 1024 * 1024
    assert hc["CpuShares"] == 128
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert {o["name"]: o for o in t["overrides"]["containerOverrides"]}["app"]["environment"] == [{"name": "B", "value": "override"}]


def test_silent_agent_is_disconnected_and_skipped(data_dir):
    """An agent that stops polling shows agentConnected false and gets no tasks; its running tasks
    are untouched; when it comes back it is connected again."""
    from conftest import Server
    server = Server(data_dir, ["--agent-timeout", "3", "--no-managed-capacity"]).start()
    ecs = server.client("ecs")
    cluster = f"t{uuid.uuid4().hex[:10]}"
    ecs.create_cluster(clusterName=cluster)
    tmp = tempfile.mkdtemp(prefix="fleetport-agent-")
    agent = Agent(server, cluster, os.path.join(tmp, "a"))
    try:
        image = push_image(server, tmp)
        register(ecs, "web", [httpd(image)])
        arn = ecs.run_task(cluster=cluster, taskDefinition="web")["tasks"][0]["taskArn"]
        task_status(ecs, cluster, arn, "RUNNING")
        connected = lambda: ecs.describe_container_instances(  # noqa: E731
            cluster=cluster, containerInstances=[agent.arn])["containerInstances"][0]["agentConnected"]
        time.sleep(4)
        assert connected(), "a long-polling agent stays connected"
        agent.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: not connected(), 10)
        out = ecs.run_task(cluster=cluster, taskDefinition="web")
        assert out["tasks"] == [] and out["failures"] == [{"arn": agent.arn, "reason": "AGENT"}]
        assert describe(ecs, cluster, [arn])[0]["lastStatus"] == "RUNNING"
        agent.proc.send_signal(signal.SIGCONT)
        wait_for(connected, 10)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        agent.stop(signal.SIGKILL)
        remove_containers(cluster)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_stopped_containers_and_tasks_are_cleaned_up(data_dir):
    """The agent removes a stopped task's containers after its cleanup wait (not those of tasks
    still running), and the server forgets stopped tasks after their retention."""
    from conftest import Server
    server = Server(data_dir, ["--stopped-task-retention", "12", "--no-managed-capacity"]).start()
    ecs = server.client("ecs")
    cluster = f"t{uuid.uuid4().hex[:10]}"
    ecs.create_cluster(clusterName=cluster)
    tmp = tempfile.mkdtemp(prefix="fleetport-agent-")
    agent = Agent(server, cluster, os.path.join(tmp, "a"), "--task-cleanup-wait", "4")
    by_task = lambda arn: docker("ps", "-aq", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}").stdout.split()  # noqa: E731
    try:
        image = push_image(server, tmp)
        register(ecs, "once", [{"name": "job", "image": image, "memory": 16, "command": ["echo", "done"]}])
        register(ecs, "keep", [
            {"name": "main", "image": image, "memory": 16, "stopTimeout": 1, "command": ["sleep", "1000"]},
            {"name": "side", "image": image, "memory": 16, "essential": False, "command": ["true"]}])
        once = ecs.run_task(cluster=cluster, taskDefinition="once")["tasks"][0]["taskArn"]
        keep = ecs.run_task(cluster=cluster, taskDefinition="keep")["tasks"][0]["taskArn"]
        task_status(ecs, cluster, once, "STOPPED")
        task_status(ecs, cluster, keep, "RUNNING")
        assert len(by_task(once)) == 1, "kept for the cleanup wait, for logs and inspect"
        wait_for(lambda: by_task(once) == [], 20)
        assert describe(ecs, cluster, [once])[0]["lastStatus"] == "STOPPED", "still describable"
        assert len(by_task(keep)) == 2, "a running task's exited non-essential container stays"
        wait_for(lambda: ecs.describe_tasks(cluster=cluster, tasks=[once])["failures"] == [
            {"arn": once, "reason": "MISSING"}], 30)
        assert once not in ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]
        assert describe(ecs, cluster, [keep])[0]["lastStatus"] == "RUNNING"
    finally:
        agent.stop(signal.SIGKILL)
        remove_containers(cluster)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_sigterm_handler_and_binpack(env):
    ecs, cluster = env["ecs"], env["cluster"]
    small = env["agent"]("small", "--memory", "256")
    env["agent"]("big", "--memory", "4096")
    image = env["image"]
    # binpack on memory: the instance with the least memory left that still fits.
    register(ecs, "term", [{"name": "app", "image": image, "memory": 32, "stopTimeout": 30,
                            "command": ["sh", "-c", "trap 'exit 5' TERM; while true; do sleep 0.1; done"]}])
    out = ecs.run_task(cluster=cluster, taskDefinition="term", count=2,
                       placementStrategy=[{"type": "binpack", "field": "memory"}])
    assert [t["containerInstanceArn"] for t in out["tasks"]] == [small.arn, small.arn]
    arn = out["tasks"][0]["taskArn"]
    task_status(ecs, cluster, arn, "RUNNING")
    # A container that handles SIGTERM exits with its own code, long before stopTimeout.
    started = time.monotonic()
    ecs.stop_task(cluster=cluster, task=arn)
    t = task_status(ecs, cluster, arn, "STOPPED")
    assert time.monotonic() - started < 10
    assert t["containers"][0]["exitCode"] == 5
