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


def healthy_targets(elb, tg):
    """The target group's targets that are healthy now."""
    return [h for h in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
            if h["TargetHealth"]["State"] == "healthy"]


def stable_now(ecs, cluster, name):
    """The services-stable waiter's success condition, checked once."""
    s = service(ecs, cluster, name)
    return len(s["deployments"]) == 1 and s["runningCount"] == s["desiredCount"]


def stable(server, cluster, name):
    # The waiter polls every 15 s, up to 40 times.
    server.cli("ecs", "wait", "services-stable", "--cluster", cluster, "--services", name, timeout=600)


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
    server.cli("ecs", "wait", "services-inactive", "--cluster", cluster, "--services", "web", timeout=600)
    assert ecs.list_services(cluster=cluster)["serviceArns"] == []
    assert service(ecs, cluster, "web")["status"] == "INACTIVE"
    assert ecs.delete_service(cluster=cluster, service="web")["service"]["status"] == "INACTIVE"
    wait_for(lambda: elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"] == [], 20)


def code_and_message(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["Error"].get("Message", "")


def test_service_bad_inputs_get_ecs_errors_and_store_nothing(server):
    """Invalid service requests get ECS's error codes (and texts where ECS's are known); none of
    them leaves a service behind."""
    ecs, elb = server.client("ecs"), server.client("elbv2")
    ecs.create_cluster(clusterName="bad")
    ecs.register_task_definition(family="web", containerDefinitions=[web("img", "v1")])
    ecs.register_task_definition(family="vpc", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                 cpu="256", memory="512",
                                 containerDefinitions=[web("img", "v1", portMappings=[{"containerPort": 8080}])])
    lonely = elb.create_target_group(Name="lonely", Protocol="HTTP", Port=80, VpcId="vpc-local",
                                     TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
    tg, _, _ = alb(server, "good")
    base = dict(cluster="bad", serviceName="s", taskDefinition="web", desiredCount=1)

    def create(**kw):
        args = dict(base, **kw)
        return lambda: ecs.create_service(**{k: v for k, v in args.items() if v is not None})

    def lbs(**kw):
        return [dict({"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}, **kw)]

    cases = [
        (create(serviceName="a b"), "InvalidParameterException", None),
        (create(cluster="nope"), "ClusterNotFoundException", "Cluster not found."),
        (create(taskDefinition="missing"), "ClientException", "TaskDefinition not found."),
        (create(launchType="EC2", capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}]),
         "InvalidParameterException",
         "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again."),
        (create(desiredCount=-1), "InvalidParameterException", None),
        (create(desiredCount=None), "InvalidParameterException", None),
        (create(schedulingStrategy="DAEMON"), "InvalidParameterException",
         "The daemon scheduling strategy does not support a desired count for services. Remove the desired count value and try again"),
        (create(desiredCount=None, schedulingStrategy="DAEMON", placementStrategy=[{"type": "random"}]),
         "InvalidParameterException",
         "The daemon scheduling strategy does not support placement strategies. Remove the placement strategy and try again"),
        (create(desiredCount=None, schedulingStrategy="DAEMON", deploymentConfiguration={"maximumPercent": 200}),
         "InvalidParameterException",
         "The daemon scheduling strategy does not support values above 100 for maximumPercent on a deployment configuration. Change the maximumPercent value to 100, and try again"),
        (create(loadBalancers=lbs(containerName="")), "InvalidParameterException", "Container Name can not be blank."),
        (create(loadBalancers=lbs(containerName="db")), "InvalidParameterException",
         "The container db does not exist in the task definition."),
        (create(loadBalancers=lbs(containerPort=9999)), "InvalidParameterException",
         "The container web did not have a container port 9999 defined."),
        (create(loadBalancers=lbs(targetGroupArn=tg.replace("good", "gone"))), "InvalidParameterException", None),
        (create(loadBalancers=lbs(targetGroupArn=lonely)), "InvalidParameterException", None),
        (create(taskDefinition="vpc", launchType="FARGATE"), "InvalidParameterException",
         "Network Configuration must be provided when networkMode 'awsvpc' is specified."),
        (create(networkConfiguration={"awsvpcConfiguration": {"subnets": ["s-1"]}}), "InvalidParameterException",
         "Network Configuration is not valid for the given networkMode of this task definition."),
        (create(deploymentConfiguration={"strategy": "BLUE_GREEN"}), "InvalidParameterException", None),
        (create(placementStrategy=[{"type": "pack"}]), "InvalidParameterException", None),
        (create(placementConstraints=[{"type": "memberOf", "expression": "attribute:x ==="}]),
         "InvalidParameterException", None),
        (create(capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}]),
         "InvalidParameterException", None),
        (create(deploymentController={"type": "CODE_DEPLOY"}), "InvalidParameterException", None),
        (create(deploymentConfiguration={"minimumHealthyPercent": 150}), "InvalidParameterException", None),
        (create(taskDefinition="vpc", launchType="FARGATE", platformVersion="9.9.9",
                networkConfiguration={"awsvpcConfiguration": {"subnets": ["s-1"]}}), "PlatformUnknownException", None),
        (lambda: ecs.update_service(cluster="bad", service="none", desiredCount=1),
         "ServiceNotFoundException", "Service not found."),
        (lambda: ecs.delete_service(cluster="bad", service="none"), "ServiceNotFoundException", "Service not found."),
        (lambda: ecs.list_service_deployments(cluster="bad", service="none"), "ServiceNotFoundException", None),
        (lambda: ecs.stop_service_deployment(
            serviceDeploymentArn="arn:aws:ecs:us-east-1:000000000000:service-deployment/bad/none/x"),
         "ServiceDeploymentNotFoundException", None),
    ]
    for call, code, message in cases:
        got = code_and_message(call)
        assert got[0] == code, (got, code, message)
        if message:
            assert got[1] == message, got
    assert ecs.list_services(cluster="bad")["serviceArns"] == []
    assert ecs.describe_services(cluster="bad", services=["s"])["failures"] == [
        {"arn": "arn:aws:ecs:us-east-1:000000000000:service/bad/s", "reason": "MISSING"}]

    # A repeated identical create is idempotent; a different one is not.
    first = ecs.create_service(**base)["service"]
    assert ecs.create_service(**base)["service"]["serviceArn"] == first["serviceArn"]
    assert code_and_message(create(desiredCount=3)) == (
        "InvalidParameterException", "Creation of service was not idempotent.")
    # UpdateService changes only what it names; bad updates store nothing.
    assert code_and_message(lambda: ecs.update_service(cluster="bad", service="s", taskDefinition="missing"))[0] == \
        "ClientException"
    assert code_and_message(lambda: ecs.update_service(cluster="bad", service="s", loadBalancers=lbs(containerPort=1))) \
        == ("InvalidParameterException", "The container web did not have a container port 1 defined.")
    svc = service(ecs, "bad", "s")
    assert svc["desiredCount"] == 1 and len(svc["deployments"]) == 1
    # desiredCount alone starts no deployment; forceNewDeployment does.
    ecs.update_service(cluster="bad", service="s", desiredCount=0)
    assert len(service(ecs, "bad", "s")["deployments"]) == 1
    out = ecs.update_service(cluster="bad", service="s", forceNewDeployment=True)["service"]
    assert len(out["deployments"]) == 2
    # Tags on services.
    ecs.tag_resource(resourceArn=first["serviceArn"], tags=[{"key": "team", "value": "a"}])
    assert ecs.list_tags_for_resource(resourceArn=first["serviceArn"])["tags"] == [{"key": "team", "value": "a"}]
    assert service(ecs, "bad", "s")["tags"] == [{"key": "team", "value": "a"}]
    # A DRAINING service: not ACTIVE for updates, its name not reusable yet; delete repeats.
    ecs.delete_service(cluster="bad", service="s")
    assert code_and_message(lambda: ecs.update_service(cluster="bad", service="s", desiredCount=1)) == (
        "ServiceNotActiveException", "Service was not ACTIVE.")
    wait_for(lambda: service(ecs, "bad", "s")["status"] == "INACTIVE", 20)
    assert ecs.delete_service(cluster="bad", service="s")["service"]["status"] == "INACTIVE"
    # Once INACTIVE the name can be used again.
    assert ecs.create_service(**base)["service"]["status"] == "ACTIVE"
    # ListServices pages; DescribeCapacityProviders lists the built-in providers.
    for n in ("s2", "s3"):
        ecs.create_service(**dict(base, serviceName=n))
    page = ecs.list_services(cluster="bad", maxResults=2)
    rest = ecs.list_services(cluster="bad", maxResults=2, nextToken=page["nextToken"])
    assert len(page["serviceArns"]) == 2 and len(rest["serviceArns"]) == 1 and "nextToken" not in rest
    assert ecs.list_services(cluster="bad", launchType="FARGATE")["serviceArns"] == []
    cps = ecs.describe_capacity_providers()
    conformance.check("ecs", "DescribeCapacityProviders", cps)
    assert [c["name"] for c in cps["capacityProviders"]] == ["FARGATE", "FARGATE_SPOT"]
    assert ecs.describe_capacity_providers(capacityProviders=["nope"])["failures"][0]["reason"] == "MISSING"
    # The cluster cannot go while the service is active.
    assert code_and_message(lambda: ecs.delete_cluster(cluster="bad"))[0] == "ClusterContainsServicesException"


def test_circuit_breaker_rolls_back_a_crashing_deployment(env):
    """A task definition whose container exits at once trips the breaker after the threshold
    (3 for 2 tasks); the service rolls back to the last completed deployment, with ECS's
    events, states and service deployment record."""
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    env["agent"]("a")
    image = env["image"]
    ecs.register_task_definition(family="app", containerDefinitions=[web(image, "good")])
    ecs.register_task_definition(family="app", containerDefinitions=[
        web(image, "bad", command=["sh", "-c", "exit 3"])])
    ecs.create_service(cluster=cluster, serviceName="app", taskDefinition="app:1", desiredCount=2,
                       deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    stable(server, cluster, "app")
    good_id = service(ecs, cluster, "app")["deployments"][0]["id"]
    ecs.update_service(cluster=cluster, service="app", taskDefinition="app:2")
    bad_id = service(ecs, cluster, "app")["deployments"][0]["id"]

    def rolled_back():
        s = service(ecs, cluster, "app")
        return s if s["deployments"][0]["id"] not in (good_id, bad_id) else None

    svc = wait_for(rolled_back, 90, 0.5)
    primary = svc["deployments"][0]
    assert primary["rolloutStateReason"] == f"ECS deployment circuit breaker: rolling back to deploymentId {good_id}."
    assert primary["taskDefinition"].endswith("app:1")
    # The failed deployment stays listed (ACTIVE, FAILED) while it has tasks left.
    for d in svc["deployments"][1:]:
        if d["id"] == bad_id:
            assert d["rolloutState"] == "FAILED" and d["failedTasks"] >= 3
            assert d["rolloutStateReason"] == "ECS deployment circuit breaker: tasks failed to start."
    stable(server, cluster, "app")
    msgs = messages(ecs, cluster, "app")
    assert f"(service app) (deployment {bad_id}) deployment failed: tasks failed to start." in msgs
    assert f"(service app) rolling back to deployment {good_id}." in msgs
    svc = service(ecs, cluster, "app")
    assert svc["taskDefinition"].endswith("app:1") and svc["runningCount"] == 2
    sds = ecs.list_service_deployments(cluster=cluster, service="app")["serviceDeployments"]
    assert sds[0]["status"] == "ROLLBACK_SUCCESSFUL", sds
    full = ecs.describe_service_deployments(serviceDeploymentArns=[sds[0]["serviceDeploymentArn"]])
    conformance.check("ecs", "DescribeServiceDeployments", full)
    sd = full["serviceDeployments"][0]
    assert sd["rollback"]["reason"] == f"ECS deployment circuit breaker: rolling back to deploymentId {good_id}."
    assert sd["deploymentCircuitBreaker"]["status"] == "TRIGGERED"
    assert sd["deploymentCircuitBreaker"]["failureCount"] >= 3 and sd["deploymentCircuitBreaker"]["threshold"] == 3
    # The good tasks kept serving throughout: minimumHealthyPercent 100 never let them go.
    running = ecs.list_tasks(cluster=cluster, serviceName="app")["taskArns"]
    assert {t["startedBy"] for t in ecs.describe_tasks(cluster=cluster, tasks=running)["tasks"]} <= {good_id, primary["id"]}


def fargate_web(ecs, image, family="fweb"):
    ecs.register_task_definition(family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                 cpu="256", memory="512",
                                 containerDefinitions=[web(image, "fargate", portMappings=[{"containerPort": 8080}])])


def test_fargate_service_ip_targets_capacity_providers_and_spot_interruption(env):
    """The same service on FARGATE (awsvpc, `ip` targets), then on a FARGATE/FARGATE_SPOT
    strategy; interrupting a Spot task drains and stops it with SpotInterruption, and the
    scheduler replaces it."""
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    fargate_web(ecs, env["image"])
    tg, port, _ = alb(server, "fweb", target_type="ip", delay=1)
    net = "awsvpcConfiguration={subnets=[subnet-a],assignPublicIp=ENABLED}"
    server.cli("ecs", "create-service", "--cluster", cluster, "--service-name", "fweb", "--task-definition", "fweb",
               "--desired-count", "2", "--launch-type", "FARGATE", "--network-configuration", net,
               "--load-balancers", f"targetGroupArn={tg},containerName=web,containerPort=8080")
    stable(server, cluster, "fweb")
    svc = service(ecs, cluster, "fweb")
    assert svc["launchType"] == "FARGATE" and svc["platformVersion"] == "LATEST"
    assert svc["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-a"]
    health = server.client("elbv2").describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    ips = sorted(h["Target"]["Id"] for h in health)
    tasks = ecs.describe_tasks(cluster=cluster, tasks=ecs.list_tasks(cluster=cluster, serviceName="fweb")["taskArns"])
    task_ips = sorted(next(d["value"] for d in t["attachments"][0]["details"] if d["name"] == "privateIPv4Address")
                      for t in tasks["tasks"])
    assert ips == task_ips and {h["TargetHealth"]["State"] for h in health} == {"healthy"}
    assert get(port) == (200, "fargate")

    # A capacity provider strategy instead of a launch type.
    ecs.put_cluster_capacity_providers(cluster=cluster, capacityProviders=["FARGATE", "FARGATE_SPOT"],
                                       defaultCapacityProviderStrategy=[])
    run = ecs.run_task(cluster=cluster, taskDefinition="fweb",
                       capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
                       networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-a"]}})["tasks"][0]
    assert run["capacityProviderName"] == "FARGATE_SPOT" and run["launchType"] == "FARGATE"
    ecs.stop_task(cluster=cluster, task=run["taskArn"])
    ecs.create_service(cluster=cluster, serviceName="spot", taskDefinition="fweb", desiredCount=4,
                       capacityProviderStrategy=[{"capacityProvider": "FARGATE", "base": 1, "weight": 1},
                                                 {"capacityProvider": "FARGATE_SPOT", "weight": 1}],
                       networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-a"]}})
    stable(server, cluster, "spot")
    svc = service(ecs, cluster, "spot")
    assert "launchType" not in svc and svc["capacityProviderStrategy"][0]["capacityProvider"] == "FARGATE"
    arns = ecs.list_tasks(cluster=cluster, serviceName="spot")["taskArns"]
    tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
    providers = sorted(t["capacityProviderName"] for t in tasks)
    # Base 1 on FARGATE, the other 3 split 1:1 (FARGATE first on a tie).
    assert providers == ["FARGATE", "FARGATE", "FARGATE", "FARGATE_SPOT"] or \
        providers == ["FARGATE", "FARGATE", "FARGATE_SPOT", "FARGATE_SPOT"], providers
    spot = next(t for t in tasks if t["capacityProviderName"] == "FARGATE_SPOT")
    env_ = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    from conftest import BIN
    import subprocess
    r = subprocess.run([BIN, "interrupt-spot", "--cluster", cluster, "--endpoint", server.endpoint, spot["taskArn"]],
                       capture_output=True, text=True, env=env_, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stopCode"] == "SpotInterruption"
    stopped = wait_for(lambda: next((t for t in ecs.describe_tasks(cluster=cluster, tasks=[spot["taskArn"]])["tasks"]
                                     if t["lastStatus"] == "STOPPED"), None), 30)
    assert stopped["stopCode"] == "SpotInterruption" and stopped["stoppedReason"] == "Your Spot Task was interrupted."
    # The scheduler replaces it.
    wait_for(lambda: len(ecs.list_tasks(cluster=cluster, serviceName="spot")["taskArns"]) == 4
             and service(ecs, cluster, "spot")["runningCount"] == 4, 30)
    # Only Spot tasks can be interrupted.
    on_demand = next(t for t in tasks if t["capacityProviderName"] == "FARGATE")
    r = subprocess.run([BIN, "interrupt-spot", "--cluster", cluster, "--endpoint", server.endpoint,
                        on_demand["taskArn"]], capture_output=True, text=True, env=env_, timeout=30)
    assert r.returncode != 0 and "FARGATE_SPOT" in r.stderr
    for name in ("fweb", "spot"):
        ecs.delete_service(cluster=cluster, service=name, force=True)
    server.cli("ecs", "wait", "services-inactive", "--cluster", cluster, "--services", "fweb", "spot", timeout=600)


def test_daemon_service_and_draining_instances(env):
    """DAEMON runs one task per instance (3 agents); draining an instance stops its daemon task.
    A REPLICA service on a drained instance is moved elsewhere, replacement first."""
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    agents = [env["agent"](n) for n in ("a", "b", "c")]
    ecs.register_task_definition(family="d", containerDefinitions=[web(env["image"], "d")])
    server.cli("ecs", "create-service", "--cluster", cluster, "--service-name", "daemon", "--task-definition", "d",
               "--scheduling-strategy", "DAEMON")
    stable(server, cluster, "daemon")
    svc = service(ecs, cluster, "daemon")
    assert svc["schedulingStrategy"] == "DAEMON" and svc["desiredCount"] == 3 and svc["runningCount"] == 3
    assert svc["deploymentConfiguration"]["maximumPercent"] == 100
    assert svc["deploymentConfiguration"]["minimumHealthyPercent"] == 0
    tasks = ecs.describe_tasks(cluster=cluster,
                               tasks=ecs.list_tasks(cluster=cluster, serviceName="daemon")["taskArns"])["tasks"]
    assert sorted(t["containerInstanceArn"] for t in tasks) == sorted(a.arn for a in agents)

    # A replica service spread over the instances: one task on each.
    ecs.create_service(cluster=cluster, serviceName="rep", taskDefinition="d", desiredCount=3,
                       tags=[{"key": "team", "value": "web"}], propagateTags="SERVICE", enableECSManagedTags=True)
    stable(server, cluster, "rep")
    # The service's tags and ECS's managed tags are on its tasks.
    arns = ecs.list_tasks(cluster=cluster, serviceName="rep")["taskArns"]
    for t in ecs.describe_tasks(cluster=cluster, tasks=arns, include=["TAGS"])["tasks"]:
        tags = {x["key"]: x["value"] for x in t["tags"]}
        assert tags == {"team": "web", "aws:ecs:clusterName": cluster, "aws:ecs:serviceName": "rep"}, tags

    def on_a():
        arns = ecs.list_tasks(cluster=cluster, serviceName="rep")["taskArns"]
        return [t for t in ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
                if t["containerInstanceArn"] == agents[0].arn]

    assert len(on_a()) == 1
    ecs.update_container_instances_state(cluster=cluster, containerInstances=[agents[0].arn], status="DRAINING")
    wait_for(lambda: service(ecs, cluster, "daemon")["desiredCount"] == 2
             and service(ecs, cluster, "daemon")["runningCount"] == 2, 30)
    wait_for(lambda: not on_a(), 30)
    stable(server, cluster, "rep")
    assert service(ecs, cluster, "rep")["runningCount"] == 3
    assert ecs.list_tasks(cluster=cluster, containerInstance=agents[0].arn)["taskArns"] == []
    # Back to ACTIVE: the daemon returns to it.
    ecs.update_container_instances_state(cluster=cluster, containerInstances=[agents[0].arn], status="ACTIVE")
    wait_for(lambda: service(ecs, cluster, "daemon")["runningCount"] == 3, 30)
    # A new instance gets its daemon task too.
    agents.append(env["agent"]("d"))
    wait_for(lambda: service(ecs, cluster, "daemon")["runningCount"] == 4, 30)


def test_scheduler_survives_kill_9_mid_deployment(data_dir, tmp_path):
    """`fleetport up` killed with SIGKILL during a rolling deployment resumes and finishes it
    after a restart; the agent keeps its tasks running meanwhile."""
    from test_ecs_tasks import push_image
    server = Server(data_dir).start()
    agent = None
    cluster = "k9"
    try:
        ecs = server.client("ecs")
        ecs.create_cluster(clusterName=cluster)
        image = push_image(server, str(tmp_path))
        agent = Agent(server, cluster, str(tmp_path / "agent"))
        ecs.register_task_definition(family="k", containerDefinitions=[web(image, "one")])
        ecs.register_task_definition(family="k", containerDefinitions=[web(image, "two")])
        ecs.create_service(cluster=cluster, serviceName="k", taskDefinition="k:1", desiredCount=3)
        stable(server, cluster, "k")
        ecs.update_service(cluster=cluster, service="k", taskDefinition="k:2")
        wait_for(lambda: service(ecs, cluster, "k")["deployments"][0]["pendingCount"]
                 + service(ecs, cluster, "k")["deployments"][0]["runningCount"] > 0, 20, 0.05)
        port = server.port
        server.stop(signal.SIGKILL)
        server = Server(data_dir).start(port=port)
        ecs = server.client("ecs")
        try:
            wait_for(lambda: stable_now(ecs, cluster, "k"), 90, 0.5)
        except AssertionError:
            raise AssertionError((service(ecs, cluster, "k"), server.logs()[-4000:], agent.logs()[-4000:]))
        stable(server, cluster, "k")
        svc = service(ecs, cluster, "k")
        assert len(svc["deployments"]) == 1 and svc["taskDefinition"].endswith("k:2") and svc["runningCount"] == 3
        tasks = ecs.describe_tasks(cluster=cluster, tasks=ecs.list_tasks(cluster=cluster, serviceName="k")["taskArns"])
        assert {t["taskDefinitionArn"].rsplit(":", 1)[1] for t in tasks["tasks"]} == {"2"}
    finally:
        if agent:
            agent.stop(signal.SIGKILL)
        server.stop()
        remove_containers(cluster)


def test_image_for_another_architecture_backs_off_with_ecs_events(env):
    """The tutorial's wrong-architecture case: every task fails before it runs (the agent
    refuses an image built for another platform), so the scheduler backs off with ECS's event;
    with the breaker on, the deployment fails."""
    from test_registry import push_foreign_image
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    env["agent"]("a")
    push_foreign_image(server, "app", "arm")
    ecs.register_task_definition(family="arm", containerDefinitions=[
        {"name": "web", "image": f"localhost:{server.port}/app:arm", "memory": 16}])
    ecs.create_service(cluster=cluster, serviceName="arm", taskDefinition="arm", desiredCount=1)
    throttled = ("(service arm) is unable to consistently start tasks successfully. For more information, see the "
                 "Troubleshooting section of the Amazon ECS Developer Guide.")
    wait_for(lambda: throttled in messages(ecs, cluster, "arm"), 60, 0.5)
    stopped = ecs.list_tasks(cluster=cluster, serviceName="arm", desiredStatus="STOPPED")["taskArns"]
    t = ecs.describe_tasks(cluster=cluster, tasks=stopped[:1])["tasks"][0]
    assert t["stopCode"] == "TaskFailedToStart"
    assert t["containers"][0]["reason"].startswith("CannotPullContainerError: image ") and \
        "is built for linux/arm64" in t["containers"][0]["reason"]
    # Reported once while it lasts, not on every attempt.
    time.sleep(12)
    assert messages(ecs, cluster, "arm").count(throttled) == 1
    ecs.delete_service(cluster=cluster, service="arm", force=True)
