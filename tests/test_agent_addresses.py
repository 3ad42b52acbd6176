"""Agents that stand for other hosts: each registers with its own address
(`--advertise-address`), publishes its tasks' ports there and nowhere else, and the load
balancer registers and health-checks each service task at the address of the instance it runs
on. Two loopback addresses of this machine stand for two hosts' private IPs."""
import socket
import subprocess

from conftest import wait_for
from test_ecs_services import alb, healthy_targets, stable_now
from test_ecs_tasks import docker, env  # noqa: F401  (fixture)
from test_postgres_store import RetryingLoad


def refused(address, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((address, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def test_each_agent_publishes_at_its_own_address_and_the_alb_reaches_both(env):
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    hosts = {"b": "127.0.0.2", "c": "127.0.0.3"}
    agents = {n: env["agent"](n, "--advertise-address", ip) for n, ip in hosts.items()}
    address_of = {agents[n].arn: ip for n, ip in hosts.items()}
    for arn, ip in address_of.items():
        inst = ecs.describe_container_instances(cluster=cluster, containerInstances=[arn])["containerInstances"][0]
        assert inst["agentConnected"] is True
    # Each task answers with its container's hostname, so the answers tell the tasks apart.
    ecs.register_task_definition(family="where", containerDefinitions=[{
        "name": "web", "image": env["image"], "memory": 32, "stopTimeout": 2, "essential": True,
        "command": ["sh", "-c", "hostname > /www/index.html; exec httpd -f -p 8080 -h /www"],
        "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])
    tg, port, _ = alb(server, "where")
    ecs.create_service(cluster=cluster, serviceName="where", taskDefinition="where:1", desiredCount=2,
                       placementConstraints=[{"type": "distinctInstance"}],
                       loadBalancers=[{"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}])
    elb = server.client("elbv2")

    def healthy():
        return healthy_targets(elb, tg)

    wait_for(lambda: stable_now(ecs, cluster, "where") and len(healthy()) == 2, 90, 0.5)
    tasks = ecs.describe_tasks(cluster=cluster, tasks=ecs.list_tasks(cluster=cluster, serviceName="where")["taskArns"])
    bindings = []
    for t in tasks["tasks"]:
        (b,) = t["containers"][0]["networkBindings"]
        # The port is published at the address of the instance the task runs on, and only there.
        assert b["bindIP"] == address_of[t["containerInstanceArn"]], (b, t["containerInstanceArn"])
        assert not refused(b["bindIP"], b["hostPort"])
        assert refused("127.0.0.1", b["hostPort"]), "published on the advertised address only"
        bindings.append((b["bindIP"], b["hostPort"]))
    print(f"tasks published at {sorted(bindings)}")
    assert {ip for ip, _ in bindings} == set(hosts.values())
    # The targets are the two instances, at their tasks' ports, and both answer through the ALB.
    targets = {(h["Target"]["Id"], h["Target"]["Port"]) for h in healthy()}
    assert {p for _, p in targets} == {p for _, p in bindings}
    load = RetryingLoad(port)
    wait_for(lambda: len(load.answers) == 2 and min(load.answers.values()) >= 10, 20)
    answers, failures = load.finish()
    print(f"answers through the ALB by task: {answers}")
    assert failures == []
    containers = docker("ps", "-q", "--filter", f"label=com.amazonaws.ecs.cluster={cluster}").stdout.split()
    names = {subprocess.run(["docker", "inspect", "-f", "{{.Config.Hostname}}", c], capture_output=True,
                            text=True, check=True).stdout.strip() for c in containers}
    assert set(answers) == names
