"""ECS services on real containers: the scheduler keeps services at their desired count, rolls
deployments behind a real ALB without dropping requests, reports ECS's events, and the AWS CLI's
waiters work unchanged. Agents are `fleetport agent` processes; images are built here and pushed
into Fleetport's registry."""
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import botocore.exceptions
import pytest

import conformance
from conftest import Server, wait_for
from test_ecs_tasks import Agent, docker, env, remove_containers  # noqa: F401  (fixture)
from test_elb import free_port


def web(image, version, port=8080, **kw):
    """busybox httpd answering `version` on `port`."""
    return dict({
        "name": "web", "image": image, "memory": 32, "stopTimeout": 2, "essential": True,
        "command": ["sh", "-c", f"echo {version} > /www/index.html; exec httpd -f -p {port} -h /www"],
        "portMappings": [{"containerPort": port, "hostPort": 0}],
    }, **kw)


def service(ecs, cluster, name):
    out = ecs.describe_services(cluster=cluster, services=[name], include=["TAGS"])
    conformance.check("ecs", "DescribeServices", out)
    return out["services"][0]


def messages(ecs, cluster, name):
    return [e["message"] for e in service(ecs, cluster, name)["events"]]


def get(port, path="/", timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class Load:
    """Requests in a loop on one thread; counts answers and failures."""

    def __init__(self, port):
        self.port = port
        self.answers = {}
        self.failures = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                status, body = get(self.port)
                if status == 200:
                    self.answers[body] = self.answers.get(body, 0) + 1
                else:
                    self.failures.append((status, body))
            except Exception as e:  # noqa: BLE001 — every failure counts
                self.failures.append(repr(e))

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        return self.answers, self.failures


def alb(server, name, target_type="instance", delay=2):
    """An ALB with an HTTP listener on a free port, forwarding to a new target group."""
    elb = server.client("elbv2")
    lb = elb.create_load_balancer(Name=name, Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
    tg = elb.create_target_group(Name=name, Protocol="HTTP", Port=8080, VpcId="vpc-local", TargetType=target_type,
                                 HealthCheckPath="/", HealthCheckIntervalSeconds=5, HealthyThresholdCount=2,
                                 UnhealthyThresholdCount=2, HealthCheckTimeoutSeconds=2)["TargetGroups"][0]
    arn = tg["TargetGroupArn"]
    elb.modify_target_group_attributes(TargetGroupArn=arn, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}])
    port = free_port()
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}])
    return arn, port, lb["DNSName"]


def stable(server, cluster, name):
    server.cli("ecs", "wait", "services-stable", "--cluster", cluster, "--services", name)


def test_service_behind_an_alb_rolls_without_dropping_requests(env):
    """The course's practice: an EC2 service behind an ALB, scaled, updated to v2 while requests
    keep flowing, with ECS's events and deployments."""
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    env["agent"]("a")
    image = env["image"]
    ecs.register_task_definition(family="web", containerDefinitions=[web(image, "v1")])
    ecs.register_task_definition(family="web", containerDefinitions=[web(image, "v2")])
    tg, port, dns = alb(server, "web")
    out = json.loads(server.cli(
        "ecs", "create-service", "--cluster", cluster, "--service-name", "web", "--task-definition", "web:1",
        "--desired-count", "2", "--launch-type", "EC2",
        "--load-balancers", f"targetGroupArn={tg},containerName=web,containerPort=8080").stdout)
    conformance.check_raw("ecs", "CreateService", out)
    svc = out["service"]
    assert svc["status"] == "ACTIVE" and svc["desiredCount"] == 2 and svc["launchType"] == "EC2"
    assert svc["deploymentConfiguration"]["maximumPercent"] == 200
    assert svc["deploymentConfiguration"]["minimumHealthyPercent"] == 100
    (dep,) = svc["deployments"]
    assert dep["status"] == "PRIMARY" and dep["rolloutState"] == "IN_PROGRESS" and dep["id"].startswith("ecs-svc/")
    assert svc["roleArn"].endswith("role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS")
    stable(server, cluster, "web")
    svc = service(ecs, cluster, "web")
    assert svc["runningCount"] == 2 and svc["pendingCount"] == 0
    assert svc["deployments"][0]["rolloutState"] == "COMPLETED"
    tasks = ecs.list_tasks(cluster=cluster, serviceName="web")["taskArns"]
    described = ecs.describe_tasks(cluster=cluster, tasks=tasks)["tasks"]
    assert {t["group"] for t in described} == {"service:web"}
    assert {t["startedBy"] for t in described} == {dep["id"]}
    # Both tasks are targets, healthy, answering through the load balancer.
    elb = server.client("elbv2")
    health = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert len(health) == 2 and {h["TargetHealth"]["State"] for h in health} == {"healthy"}
    assert {get(port)[1] for _ in range(6)} == {"v1"}
    msgs = messages(ecs, cluster, "web")
    assert msgs[0] == "(service web) has reached a steady state."
    assert f"(service web) registered 2 targets in (target-group {tg})" in msgs or \
        f"(service web) registered 1 targets in (target-group {tg})" in msgs
    assert any(m.startswith("(service web) has started 2 tasks: (task ") for m in msgs)
    assert f"(service web) (deployment {dep['id']}) deployment completed." in msgs
    assert dns.endswith(".elb.amazonaws.com") or dns

    # A rolling update under load: no request fails, v2 takes over.
    load = Load(port)
    time.sleep(1)
    out = json.loads(server.cli("ecs", "update-service", "--cluster", cluster, "--service", "web",
                                "--task-definition", "web:2").stdout)
    deployments = out["service"]["deployments"]
    assert [d["status"] for d in deployments] == ["PRIMARY", "ACTIVE"]
    new_id = deployments[0]["id"]
    stable(server, cluster, "web")
    wait_for(lambda: get(port)[1] == "v2", 10)
    time.sleep(1)
    answers, failures = load.finish()
    assert failures == [], failures[:5]
    assert answers.get("v1") and answers.get("v2"), answers
    svc = service(ecs, cluster, "web")
    assert [d["id"] for d in svc["deployments"]] == [new_id]
    assert svc["taskDefinition"].endswith("task-definition/web:2")
    msgs = messages(ecs, cluster, "web")
    assert "(service web) has begun draining connections on 2 tasks." in msgs or \
        "(service web) has begun draining connections on 1 tasks." in msgs
    assert any(m.startswith(f"(service web) deregistered ") and tg in m for m in msgs)
    assert any(m.startswith("(service web) has stopped ") and "running tasks: (task " in m for m in msgs)
    assert f"(service web) (deployment {new_id}) deployment completed." in msgs
    # The old tasks stopped with ECS's reason.
    stopped = ecs.list_tasks(cluster=cluster, serviceName="web", desiredStatus="STOPPED")["taskArns"]
    old = ecs.describe_tasks(cluster=cluster, tasks=stopped)["tasks"]
    assert len(old) == 2
    assert {t["stoppedReason"] for t in old} == {f"Scaling activity initiated by (deployment {new_id})"}
    assert {t["stopCode"] for t in old} == {"ServiceSchedulerInitiated"}

    # Service deployments and revisions read the same state.
    sds = ecs.list_service_deployments(cluster=cluster, service="web")["serviceDeployments"]
    assert [s["status"] for s in sds] == ["SUCCESSFUL", "SUCCESSFUL"]
    full = ecs.describe_service_deployments(serviceDeploymentArns=[sds[0]["serviceDeploymentArn"]])
    conformance.check("ecs", "DescribeServiceDeployments", full)
    assert full["serviceDeployments"][0]["targetServiceRevision"]["runningTaskCount"] == 2
    assert svc["currentServiceDeployment"] == sds[0]["serviceDeploymentArn"]
    revs = ecs.describe_service_revisions(serviceRevisionArns=[sds[0]["targetServiceRevisionArn"]])
    assert revs["serviceRevisions"][0]["taskDefinition"].endswith("web:2")

    # Scale in: targets drain, then two tasks stop; scale to 0 and delete.
    ecs.update_service(cluster=cluster, service="web", desiredCount=1)
    stable(server, cluster, "web")
    assert len(elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]) >= 1
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.delete_service(cluster=cluster, service="web")
    assert e.value.response["Error"]["Message"] == "The service cannot be stopped while it is scaled above 0."
    out = ecs.delete_service(cluster=cluster, service="web", force=True)["service"]
    assert out["status"] == "DRAINING"
    server.cli("ecs", "wait", "services-inactive", "--cluster", cluster, "--services", "web")
    assert ecs.list_services(cluster=cluster)["serviceArns"] == []
    assert service(ecs, cluster, "web")["status"] == "INACTIVE"
    assert ecs.delete_service(cluster=cluster, service="web")["service"]["status"] == "INACTIVE"
    wait_for(lambda: elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"] == [], 20)
