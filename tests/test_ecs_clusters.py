"""Clusters through boto3, every response checked against the botocore model."""
import botocore.exceptions
import pytest

import conformance


def call(ecs, op, **kw):
    method = getattr(ecs, "_".join(w.lower() for w in __import__("re").findall("[A-Z][a-z]*", op)))
    resp = method(**kw)
    conformance.check("ecs", op, resp)
    return resp


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_create_is_idempotent_and_describe_reports_missing(ecs):
    a = call(ecs, "CreateCluster", clusterName="demo", tags=[{"key": "team", "value": "a"}])["cluster"]
    b = call(ecs, "CreateCluster", clusterName="demo")["cluster"]
    assert a["clusterArn"] == b["clusterArn"]
    d = call(ecs, "DescribeClusters", clusters=["demo", "nope", a["clusterArn"]])
    assert [c["clusterName"] for c in d["clusters"]] == ["demo", "demo"]
    assert d["failures"] == [{"arn": "arn:aws:ecs:us-east-1:000000000000:cluster/nope", "reason": "MISSING"}]
    assert "tags" not in d["clusters"][0] and "settings" not in d["clusters"][0]
    full = call(ecs, "DescribeClusters", clusters=["demo"], include=["TAGS", "SETTINGS", "STATISTICS", "CONFIGURATIONS"])
    c = full["clusters"][0]
    assert c["tags"] == [{"key": "team", "value": "a"}]
    assert c["settings"] == [{"name": "containerInsights", "value": "disabled"}]
    assert {s["name"] for s in c["statistics"]} >= {"runningEC2TasksCount", "activeFargateServiceCount"}


def test_default_cluster(ecs):
    d = call(ecs, "DescribeClusters")
    assert d["clusters"] == [] and d["failures"][0]["arn"].endswith(":cluster/default")
    created = call(ecs, "CreateCluster")["cluster"]
    assert created["clusterName"] == "default"
    assert call(ecs, "DescribeClusters")["clusters"][0]["clusterName"] == "default"


def test_list_clusters_paginates_without_gaps(ecs):
    names = [f"c{i:02d}" for i in range(23)]
    for n in names:
        ecs.create_cluster(clusterName=n)
    seen, token = [], None
    while True:
        kw = {"maxResults": 5}
        if token:
            kw["nextToken"] = token
        page = call(ecs, "ListClusters", **kw)
        assert len(page["clusterArns"]) <= 5
        seen += page["clusterArns"]
        token = page.get("nextToken")
        if not token:
            break
    assert [a.rsplit("/", 1)[1] for a in seen] == names
    # The SDK paginator drives the same tokens.
    all_arns = [a for p in ecs.get_paginator("list_clusters").paginate(PaginationConfig={"PageSize": 4}) for a in p["clusterArns"]]
    assert all_arns == seen


def test_update_settings_and_capacity_providers(ecs):
    ecs.create_cluster(clusterName="u")
    r = call(ecs, "UpdateClusterSettings", cluster="u", settings=[{"name": "containerInsights", "value": "enabled"}])
    assert r["cluster"]["settings"] == [{"name": "containerInsights", "value": "enabled"}]
    r = call(ecs, "UpdateCluster", cluster="u", configuration={"executeCommandConfiguration": {"logging": "DEFAULT"}})
    assert r["cluster"]["configuration"] == {"executeCommandConfiguration": {"logging": "DEFAULT"}}
    r = call(ecs, "PutClusterCapacityProviders", cluster="u", capacityProviders=["FARGATE"],
             defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1, "base": 1}])
    assert r["cluster"]["capacityProviders"] == ["FARGATE"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.put_cluster_capacity_providers(cluster="u", capacityProviders=["FARGATE"],
                                           defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT"}])
    assert error_code(e) == "InvalidParameterException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.update_cluster_settings(cluster="missing", settings=[{"name": "containerInsights", "value": "enabled"}])
    assert error_code(e) == "ClusterNotFoundException"


def test_delete_makes_inactive_but_describable(ecs):
    ecs.create_cluster(clusterName="gone")
    r = call(ecs, "DeleteCluster", cluster="gone")
    assert r["cluster"]["status"] == "INACTIVE"
    assert call(ecs, "DeleteCluster", cluster="gone")["cluster"]["status"] == "INACTIVE"
    assert all(not a.endswith("/gone") for a in ecs.list_clusters()["clusterArns"])
    assert ecs.describe_clusters(clusters=["gone"])["clusters"][0]["status"] == "INACTIVE"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.update_cluster_settings(cluster="gone", settings=[{"name": "containerInsights", "value": "enabled"}])
    assert error_code(e) == "ClusterNotFoundException"
    # The name can be used again, as on ECS.
    assert ecs.create_cluster(clusterName="gone")["cluster"]["status"] == "ACTIVE"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.delete_cluster(cluster="never")
    assert error_code(e) == "ClusterNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_cluster_tags(ecs):
    arn = ecs.create_cluster(clusterName="t")["cluster"]["clusterArn"]
    call(ecs, "TagResource", resourceArn=arn, tags=[{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    call(ecs, "TagResource", resourceArn=arn, tags=[{"key": "a", "value": "9"}])
    call(ecs, "UntagResource", resourceArn=arn, tagKeys=["b"])
    assert call(ecs, "ListTagsForResource", resourceArn=arn)["tags"] == [{"key": "a", "value": "9"}]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.tag_resource(resourceArn=arn, tags=[{"key": f"k{i}", "value": "v"} for i in range(50)])
    assert error_code(e) == "InvalidParameterException"
    assert ecs.list_tags_for_resource(resourceArn=arn)["tags"] == [{"key": "a", "value": "9"}]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.list_tags_for_resource(resourceArn=arn.replace("/t", "/nope"))
    assert error_code(e) == "ResourceNotFoundException"
