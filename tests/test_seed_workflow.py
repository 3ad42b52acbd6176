"""The issue's seed workflow with the real AWS CLI, checked against the botocore model, and
kept across restarts and kill -9."""
import json
import signal

import conformance
from conftest import Server

SEED_CONTAINERS = '[{"name":"web","image":"localhost:4566/web:1","memory":256,"portMappings":[{"containerPort":3000}]}]'


def seed(server):
    out = {}
    out["create"] = json.loads(server.cli("ecs", "create-cluster", "--cluster-name", "demo").stdout)
    out["register"] = json.loads(
        server.cli("ecs", "register-task-definition", "--family", "web", "--requires-compatibilities", "EC2",
                   "--container-definitions", SEED_CONTAINERS).stdout)
    out["describe"] = json.loads(server.cli("ecs", "describe-task-definition", "--task-definition", "web:1").stdout)
    return out


def test_seed_commands_match_ecs(server):
    out = seed(server)
    cluster = out["create"]["cluster"]
    assert cluster["clusterArn"] == "arn:aws:ecs:us-east-1:000000000000:cluster/demo"
    assert cluster["status"] == "ACTIVE"
    assert cluster["settings"] == [{"name": "containerInsights", "value": "disabled"}]
    td = out["describe"]["taskDefinition"]
    assert td == out["register"]["taskDefinition"]
    assert td["taskDefinitionArn"] == "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1"
    assert td["revision"] == 1 and td["status"] == "ACTIVE"
    assert td["compatibilities"] == ["EXTERNAL", "EC2"]
    assert td["requiresCompatibilities"] == ["EC2"]
    assert td["registeredBy"] == "arn:aws:iam::000000000000:root"
    c = td["containerDefinitions"][0]
    assert c["portMappings"] == [{"containerPort": 3000, "hostPort": 0, "protocol": "tcp"}]
    assert c["essential"] is True and c["cpu"] == 0 and c["environment"] == []
    for op, doc in [("CreateCluster", out["create"]), ("RegisterTaskDefinition", out["register"]),
                    ("DescribeTaskDefinition", out["describe"])]:
        conformance.check_raw("ecs", op, doc)


def test_restart_keeps_state(data_dir):
    s = Server(data_dir).start()
    before = seed(s)
    assert s.stop() == 0, "SIGTERM shuts down cleanly with exit 0"
    s = Server(data_dir).start()
    try:
        after = json.loads(s.cli("ecs", "describe-task-definition", "--task-definition", "web:1").stdout)
        assert after == before["describe"]
        clusters = json.loads(s.cli("ecs", "describe-clusters", "--clusters", "demo").stdout)
        assert clusters["clusters"][0]["clusterName"] == "demo"
        again = json.loads(s.cli("ecs", "register-task-definition", "--family", "web", "--container-definitions",
                                 SEED_CONTAINERS).stdout)
        assert again["taskDefinition"]["revision"] == 2
    finally:
        s.stop()


def test_acknowledged_writes_survive_kill_9(data_dir):
    s = Server(data_dir).start()
    ecs = s.client("ecs")
    arns = []
    for i in range(30):
        arns.append(ecs.register_task_definition(
            family="durable", containerDefinitions=[{"name": "a", "image": "i", "memory": 32}],
        )["taskDefinition"]["taskDefinitionArn"])
        ecs.create_cluster(clusterName=f"c{i}")
    s.stop(signal.SIGKILL)
    s = Server(data_dir).start()
    try:
        ecs = s.client("ecs")
        listed = ecs.list_task_definitions(familyPrefix="durable")["taskDefinitionArns"]
        assert listed == arns
        assert len(ecs.list_clusters()["clusterArns"]) == 30
    finally:
        s.stop()
