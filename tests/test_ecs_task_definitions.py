"""Task definitions through boto3, every response checked against the botocore model."""
import concurrent.futures

import botocore.exceptions
import pytest

import conformance

C = [{"name": "app", "image": "localhost:4566/app:1", "memory": 64}]


def reg(ecs, family="web", **kw):
    r = ecs.register_task_definition(family=family, containerDefinitions=kw.pop("containerDefinitions", C), **kw)
    conformance.check("ecs", "RegisterTaskDefinition", r)
    return r["taskDefinition"]


def test_revisions_deregister_and_lookup_forms(ecs):
    for _ in range(3):
        reg(ecs)
    r = ecs.deregister_task_definition(taskDefinition="web:3")
    conformance.check("ecs", "DeregisterTaskDefinition", r)
    assert r["taskDefinition"]["status"] == "INACTIVE" and "deregisteredAt" in r["taskDefinition"]
    assert reg(ecs)["revision"] == 4
    latest = ecs.describe_task_definition(taskDefinition="web")
    conformance.check("ecs", "DescribeTaskDefinition", latest)
    assert latest["taskDefinition"]["revision"] == 4
    ecs.deregister_task_definition(taskDefinition="web:4")
    assert ecs.describe_task_definition(taskDefinition="web")["taskDefinition"]["revision"] == 2
    arn = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3"
    assert ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["status"] == "INACTIVE"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.describe_task_definition(taskDefinition="nope")
    assert e.value.response["Error"] == {"Code": "ClientException", "Message": "Unable to describe task definition."}
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_list_filters_sort_and_pages(ecs):
    for f in ["alpha", "beta", "beta", "gamma"]:
        reg(ecs, f)
    ecs.deregister_task_definition(taskDefinition="gamma:1")
    r = ecs.list_task_definitions()
    conformance.check("ecs", "ListTaskDefinitions", r)
    names = [a.rsplit("/", 1)[1] for a in r["taskDefinitionArns"]]
    assert names == ["alpha:1", "beta:1", "beta:2"]
    assert [a.rsplit("/", 1)[1] for a in ecs.list_task_definitions(sort="DESC")["taskDefinitionArns"]] == names[::-1]
    assert [a.rsplit("/", 1)[1] for a in ecs.list_task_definitions(familyPrefix="beta")["taskDefinitionArns"]] == ["beta:1", "beta:2"]
    assert [a.rsplit("/", 1)[1] for a in ecs.list_task_definitions(status="INACTIVE")["taskDefinitionArns"]] == ["gamma:1"]
    pages = list(ecs.get_paginator("list_task_definitions").paginate(sort="DESC", PaginationConfig={"PageSize": 1}))
    assert [a.rsplit("/", 1)[1] for p in pages for a in p["taskDefinitionArns"]] == names[::-1]
    fams = ecs.list_task_definition_families()
    conformance.check("ecs", "ListTaskDefinitionFamilies", fams)
    assert fams["families"] == ["alpha", "beta", "gamma"]
    assert ecs.list_task_definition_families(status="ACTIVE")["families"] == ["alpha", "beta"]
    assert ecs.list_task_definition_families(status="INACTIVE")["families"] == ["gamma"]
    assert ecs.list_task_definition_families(familyPrefix="b")["families"] == ["beta"]


def test_delete_task_definitions(ecs):
    reg(ecs, "d")
    reg(ecs, "d")
    ecs.deregister_task_definition(taskDefinition="d:1")
    r = ecs.delete_task_definitions(taskDefinitions=["d:1", "d:2", "d:9"])
    conformance.check("ecs", "DeleteTaskDefinitions", r)
    assert [t["status"] for t in r["taskDefinitions"]] == ["DELETE_IN_PROGRESS"]
    assert len(r["failures"]) == 2
    assert ecs.describe_task_definition(taskDefinition="d:1")["taskDefinition"]["status"] == "DELETE_IN_PROGRESS"


def test_fifty_concurrent_registrations_get_revisions_1_to_50(server):
    def one(_):
        return server.client("ecs").register_task_definition(family="burst", containerDefinitions=C)["taskDefinition"]["revision"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        revisions = sorted(pool.map(one, range(50)))
    assert revisions == list(range(1, 51))


def test_fargate_definition_and_tags(ecs):
    td = reg(ecs, "api", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="0.25 vCPU", memory="0.5GB",
             containerDefinitions=[{"name": "api", "image": "i", "portMappings": [{"containerPort": 8080}],
                                    "healthCheck": {"command": ["CMD-SHELL", "true"]}}],
             tags=[{"key": "env", "value": "test"}])
    assert (td["cpu"], td["memory"]) == ("256", "512")
    assert td["compatibilities"] == ["EC2", "FARGATE"]
    assert td["containerDefinitions"][0]["portMappings"][0]["hostPort"] == 8080
    assert td["containerDefinitions"][0]["healthCheck"]["interval"] == 30
    r = ecs.describe_task_definition(taskDefinition="api:1", include=["TAGS"])
    conformance.check("ecs", "DescribeTaskDefinition", r)
    assert r["tags"] == [{"key": "env", "value": "test"}]
    ecs.untag_resource(resourceArn=td["taskDefinitionArn"], tagKeys=["env"])
    assert ecs.list_tags_for_resource(resourceArn=td["taskDefinitionArn"])["tags"] == []


def test_every_container_field_is_echoed(ecs):
    full = {"name": "full", "image": "i", "memory": 128, "memoryReservation": 64, "cpu": 10,
            "command": ["sh", "-c", "echo hi"], "entryPoint": ["/bin/sh"], "workingDirectory": "/tmp", "user": "1000",
            "environment": [{"name": "A", "value": "1"}], "dockerLabels": {"x": "y"},
            "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 2048}], "stopTimeout": 5,
            "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "1m"}}}
    td = reg(ecs, "full", containerDefinitions=[full])
    c = td["containerDefinitions"][0]
    for k, v in full.items():
        assert c[k] == v, k
    names = {a["name"] for a in td["requiresAttributes"]}
    assert "com.amazonaws.ecs.capability.logging-driver.json-file" in names
