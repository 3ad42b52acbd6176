"""Distinct bad inputs, sent raw (SDKs would refuse some client-side): each gets the AWS error
code with HTTP 400, an x-amzn-RequestId, and leaves the stored state exactly as it was."""
import json

import pytest

from raw import ecs_call

OK_C = {"name": "a", "image": "i", "memory": 64}


def reg(**kw):
    body = {"family": "f", "containerDefinitions": [OK_C]}
    body.update(kw)
    return ("RegisterTaskDefinition", body)


CASES = [
    ("cluster name with space", ("CreateCluster", {"clusterName": "bad name"}), "InvalidParameterException"),
    ("cluster name too long", ("CreateCluster", {"clusterName": "x" * 256}), "InvalidParameterException"),
    ("containerInsights value", ("CreateCluster", {"clusterName": "c", "settings": [{"name": "containerInsights", "value": "maybe"}]}), "InvalidParameterException"),
    ("setting name outside enum", ("CreateCluster", {"clusterName": "c", "settings": [{"name": "nope", "value": "enabled"}]}), "InvalidParameterException"),
    ("reserved aws: tag", ("CreateCluster", {"clusterName": "c", "tags": [{"key": "aws:x", "value": "1"}]}), "InvalidParameterException"),
    ("duplicate tag keys", ("CreateCluster", {"clusterName": "c", "tags": [{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]}), "InvalidParameterException"),
    ("51 tags", ("CreateCluster", {"clusterName": "c", "tags": [{"key": f"k{i}", "value": "v"} for i in range(51)]}), "InvalidParameterException"),
    ("tag key too long", ("CreateCluster", {"clusterName": "c", "tags": [{"key": "k" * 129, "value": "v"}]}), "InvalidParameterException"),
    ("unknown capacity provider", ("CreateCluster", {"clusterName": "c", "capacityProviders": ["MINE"]}), "InvalidParameterException"),
    ("cluster name is a number", ("CreateCluster", {"clusterName": 5}), "SerializationException"),
    ("empty container list", reg(containerDefinitions=[]), "ClientException"),
    ("container without image", reg(containerDefinitions=[{"name": "a", "memory": 64}]), "ClientException"),
    ("container without name", reg(containerDefinitions=[{"image": "i", "memory": 64}]), "ClientException"),
    ("no memory anywhere", reg(containerDefinitions=[{"name": "a", "image": "i"}]), "ClientException"),
    ("memory below reservation", reg(containerDefinitions=[{"name": "a", "image": "i", "memory": 32, "memoryReservation": 64}]), "ClientException"),
    ("no essential container", reg(containerDefinitions=[dict(OK_C, essential=False)]), "ClientException"),
    ("family with invalid characters", reg(family="web/1"), "ClientException"),
    ("duplicate container names", reg(containerDefinitions=[OK_C, OK_C]), "ClientException"),
    ("fargate without awsvpc", reg(requiresCompatibilities=["FARGATE"], cpu="256", memory="512"), "ClientException"),
    ("fargate without cpu", reg(requiresCompatibilities=["FARGATE"], networkMode="awsvpc", memory="512"), "ClientException"),
    ("fargate invalid size", reg(requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="4096"), "ClientException"),
    ("awsvpc host port mismatch", reg(networkMode="awsvpc", containerDefinitions=[dict(OK_C, portMappings=[{"containerPort": 80, "hostPort": 81}])]), "ClientException"),
    ("dependsOn unknown container", reg(containerDefinitions=[dict(OK_C, dependsOn=[{"containerName": "ghost", "condition": "START"}])]), "ClientException"),
    ("COMPLETE on essential", reg(containerDefinitions=[dict(OK_C, dependsOn=[{"containerName": "b", "condition": "COMPLETE"}]), dict(OK_C, name="b")]), "ClientException"),
    ("network mode outside enum", reg(networkMode="bogus"), "InvalidParameterException"),
    ("task memory not a size", reg(memory="lots"), "ClientException"),
    ("container list is a string", reg(containerDefinitions="[]"), "SerializationException"),
    ("container cpu above task cpu", reg(cpu="256", containerDefinitions=[dict(OK_C, cpu=512)]), "ClientException"),
    ("family missing", ("RegisterTaskDefinition", {"containerDefinitions": [OK_C]}), "InvalidParameterException"),
    ("health check interval too short", reg(containerDefinitions=[dict(OK_C, healthCheck={"command": ["CMD", "true"], "interval": 1})]), "ClientException"),
    ("awslogs without options", reg(containerDefinitions=[dict(OK_C, logConfiguration={"logDriver": "awslogs"})]), "ClientException"),
    ("port out of range", reg(containerDefinitions=[dict(OK_C, portMappings=[{"containerPort": 70000}])]), "ClientException"),
    ("maxResults zero", ("ListClusters", {"maxResults": 0}), "InvalidParameterException"),
    ("maxResults is text", ("ListClusters", {"maxResults": "ten"}), "SerializationException"),
    ("garbage nextToken", ("ListClusters", {"nextToken": "%%%"}), "InvalidParameterException"),
    ("unknown task definition", ("DescribeTaskDefinition", {"taskDefinition": "ghost:1"}), "ClientException"),
    ("deregister without revision", ("DeregisterTaskDefinition", {"taskDefinition": "base"}), "ClientException"),
    ("tag unknown resource", ("TagResource", {"resourceArn": "arn:aws:ecs:us-east-1:000000000000:cluster/ghost", "tags": [{"key": "a", "value": "b"}]}), "ResourceNotFoundException"),
    ("delete unknown cluster", ("DeleteCluster", {"cluster": "ghost"}), "ClusterNotFoundException"),
    ("update settings of unknown cluster", ("UpdateClusterSettings", {"cluster": "ghost", "settings": [{"name": "containerInsights", "value": "enabled"}]}), "ClusterNotFoundException"),
    ("missing required settings", ("UpdateClusterSettings", {"cluster": "base"}), "InvalidParameterException"),
    ("too many clusters to describe", ("DescribeClusters", {"clusters": [f"c{i}" for i in range(101)]}), "InvalidParameterException"),
    ("malformed JSON", ("CreateCluster", b'{"clusterName": '), "SerializationException"),
    ("body is an array", ("CreateCluster", b"[1,2]"), "SerializationException"),
    ("unknown operation", ("LaunchRockets", {}), "UnknownOperationException"),
]


def snapshot(ecs):
    return {
        "clusters": ecs.list_clusters()["clusterArns"],
        "base": ecs.describe_clusters(clusters=["base"], include=["TAGS", "SETTINGS"])["clusters"],
        "families": ecs.list_task_definition_families()["families"],
        "active": ecs.list_task_definitions()["taskDefinitionArns"],
        "inactive": ecs.list_task_definitions(status="INACTIVE")["taskDefinitionArns"],
        "base_td": ecs.describe_task_definition(taskDefinition="base:1", include=["TAGS"])["taskDefinition"],
    }


@pytest.fixture(scope="module")
def seeded():
    import tempfile

    from conftest import Server

    with tempfile.TemporaryDirectory() as d:
        s = Server(d).start()
        ecs = s.client("ecs")
        ecs.create_cluster(clusterName="base", tags=[{"key": "k", "value": "v"}])
        ecs.register_task_definition(family="base", containerDefinitions=[OK_C])
        yield s, ecs, snapshot(ecs)
        s.stop()


def test_at_least_25_distinct_cases():
    assert len({name for name, _, _ in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("name,call,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_and_stores_nothing(seeded, name, call, code):
    server, ecs, before = seeded
    op, payload = call
    r = ecs_call(server.endpoint, op, payload)
    assert r.status == 400, (name, r.status, r.text)
    body = r.json()
    assert body["__type"] == code, (name, body)
    assert isinstance(body["message"], str)
    assert r.headers["x-amzn-requestid"]
    assert r.headers["content-type"] == "application/x-amz-json-1.1"
    assert snapshot(ecs) == before, name
