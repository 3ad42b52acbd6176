"""Regions and accounts: every region a client signs for is served with its own state and ARNs,
the account comes from the credentials (configured root keys per account, 12-digit key IDs as
LocalStack allows, IAM's keys), tenants never see each other's clusters, repositories, images,
load balancers or IAM users, and a data directory from before tenancy is opened and served."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request

import boto3
import botocore.exceptions
import pytest

import conformance
from conftest import Server, wait_for
from test_elb import free_port
from test_ecs_tasks import BUSYBOX, docker, remove_containers

HERE = os.path.dirname(os.path.abspath(__file__))

# (key, region) → the tenant it selects with the default credentials (secret "test").
DEFAULT = ("test", "us-east-1")
OTHER_REGION = ("test", "eu-central-1")
OTHER_ACCOUNT = ("123456789012", "us-east-1")
TENANTS = {DEFAULT: ("000000000000", "us-east-1"), OTHER_REGION: ("000000000000", "eu-central-1"),
           OTHER_ACCOUNT: ("123456789012", "us-east-1")}


def client(server, service, tenant):
    key, region = tenant
    return server.client(service, key=key, region=region)


def error(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def get(url, host=None, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=dict(headers or {}))
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def status_now(url):
    """The status `url` answers with, or None while nothing listens there yet."""
    try:
        return get(url, timeout=2)[0]
    except OSError:
        return None


def push_blob(ecr, repo, blob):
    up = ecr.initiate_layer_upload(repositoryName=repo)
    ecr.upload_layer_part(repositoryName=repo, uploadId=up["uploadId"], partFirstByte=0,
                          partLastByte=len(blob) - 1, layerPartBlob=blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    ecr.complete_layer_upload(repositoryName=repo, uploadId=up["uploadId"], layerDigests=[digest])
    return digest


def put_small_image(ecr, repo, tag, text):
    """An image whose one layer is `text`, pushed through the ECR API."""
    layer = text.encode()
    config = json.dumps({"architecture": "amd64", "os": "linux", "note": text}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(ecr, repo, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": push_blob(ecr, repo, layer), "size": len(layer)}]})
    ecr.put_image(repositoryName=repo, imageTag=tag, imageManifest=manifest)
    return "sha256:" + hashlib.sha256(layer).hexdigest()


def basic(ecr):
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    return {"Authorization": "Basic " + token}


def test_same_names_in_two_regions_and_two_accounts_never_meet(server):
    """Same-named clusters, task definitions, repositories (with different images under one tag),
    target groups and load balancers (listeners on one port) in three tenants: each sees only its
    own, with its own region and account in every ARN; the one data plane routes each load
    balancer's host name to its own listener; deleting in one tenant leaves the others alone."""
    port = free_port()
    made = {}
    for tenant, (account, region) in TENANTS.items():
        ecs, ecr, elb = (client(server, s, tenant) for s in ("ecs", "ecr", "elbv2"))
        cluster = ecs.create_cluster(clusterName="demo")["cluster"]
        assert cluster["clusterArn"] == f"arn:aws:ecs:{region}:{account}:cluster/demo"
        td = ecs.register_task_definition(family="web", containerDefinitions=[
            {"name": "web", "image": "web:1", "memory": 64}])["taskDefinition"]
        # Revisions count per tenant.
        assert td["taskDefinitionArn"] == f"arn:aws:ecs:{region}:{account}:task-definition/web:1"
        repo = ecr.create_repository(repositoryName="app")["repository"]
        assert repo["repositoryArn"] == f"arn:aws:ecr:{region}:{account}:repository/app"
        assert repo["registryId"] == account
        layer = put_small_image(ecr, "app", "v1", f"image of {account} in {region}")
        tg = elb.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId="vpc-1",
                                     TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        assert tg.startswith(f"arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/web/")
        lb = elb.create_load_balancer(Name="web", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
        assert lb["LoadBalancerArn"].startswith(f"arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/app/web/")
        assert f".{region}.elb." in lb["DNSName"]
        conformance.check("elbv2", "CreateLoadBalancer", {"LoadBalancers": [lb]})
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port, DefaultActions=[
            {"Type": "fixed-response", "FixedResponseConfig": {
                "StatusCode": "200", "ContentType": "text/plain", "MessageBody": f"{account} {region}"}}])
        made[tenant] = {"lb": lb, "tg": tg, "layer": layer, "cluster": cluster["clusterArn"]}

    for tenant, (account, region) in TENANTS.items():
        ecs, ecr, elb = (client(server, s, tenant) for s in ("ecs", "ecr", "elbv2"))
        assert ecs.list_clusters()["clusterArns"] == [made[tenant]["cluster"]]
        assert ecs.list_task_definitions()["taskDefinitionArns"] == [
            f"arn:aws:ecs:{region}:{account}:task-definition/web:1"]
        assert [r["repositoryArn"] for r in ecr.describe_repositories()["repositories"]] == [
            f"arn:aws:ecr:{region}:{account}:repository/app"]
        (image,) = ecr.batch_get_image(repositoryName="app", imageIds=[{"imageTag": "v1"}])["images"]
        assert json.loads(image["imageManifest"])["layers"][0]["digest"] == made[tenant]["layer"]
        assert [lb["LoadBalancerArn"] for lb in elb.describe_load_balancers()["LoadBalancers"]] == [
            made[tenant]["lb"]["LoadBalancerArn"]]
        assert [t["TargetGroupArn"] for t in elb.describe_target_groups()["TargetGroups"]] == [made[tenant]["tg"]]
        # Another tenant's ARN is not found here.
        others = [m for t, m in made.items() if t != tenant]
        code, _ = error(lambda: elb.describe_load_balancers(LoadBalancerArns=[others[0]["lb"]["LoadBalancerArn"]]))
        assert code == "LoadBalancerNotFound"
        # The registry a token was issued by serves that tenant's image under the shared name.
        status, body = get(f"{server.endpoint}/v2/app/manifests/v1", headers={
            **basic(ecr), "Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 200 and json.loads(body)["layers"][0]["digest"] == made[tenant]["layer"], body
        status, body = get(f"{server.endpoint}/v2/app/blobs/{made[tenant]['layer']}", headers=basic(ecr))
        assert status == 200 and body == f"image of {account} in {region}".encode()
        for other in others:
            status, body = get(f"{server.endpoint}/v2/app/blobs/{other['layer']}", headers=basic(ecr))
            assert status == 404, body
        # A download URL names its registry.
        url = ecr.get_download_url_for_layer(repositoryName="app", layerDigest=made[tenant]["layer"])["downloadUrl"]
        assert get(url.replace("localhost", "127.0.0.1"))[1] == f"image of {account} in {region}".encode()
        # One port, three load balancers: each host name reaches its own listener.
        status, body = get(f"http://127.0.0.1:{port}/", host=made[tenant]["lb"]["DNSName"])
        assert (status, body) == (200, f"{account} {region}".encode())

    # Deleting in one tenant leaves the same names in the others.
    ecs, ecr, elb = (client(server, s, OTHER_REGION) for s in ("ecs", "ecr", "elbv2"))
    elb.delete_load_balancer(LoadBalancerArn=made[OTHER_REGION]["lb"]["LoadBalancerArn"])
    ecr.delete_repository(repositoryName="app", force=True)
    ecs.delete_cluster(cluster="demo")
    for tenant in (DEFAULT, OTHER_ACCOUNT):
        assert client(server, "ecr", tenant).describe_repositories()["repositories"][0]["repositoryName"] == "app"
        assert len(client(server, "elbv2", tenant).describe_load_balancers()["LoadBalancers"]) == 1
        status, _ = get(f"http://127.0.0.1:{port}/", host=made[tenant]["lb"]["DNSName"])
        assert status == 200
    assert client(server, "ecs", OTHER_REGION).describe_clusters(clusters=["demo"])["clusters"][0]["status"] == "INACTIVE"
    assert client(server, "ecs", DEFAULT).describe_clusters(clusters=["demo"])["clusters"][0]["status"] == "ACTIVE"


def test_accounts_come_from_credentials_and_iam_is_per_account(data_dir):
    """Root keys per account from the credentials file (`aws_account_id`), a 12-digit key ID as its
    own account, IAM users and keys per account; an IAM user's key acts in its own account only;
    a token of one account is refused by another account's registry."""
    creds = os.path.join(data_dir, "..", f"creds-{os.path.basename(data_dir)}")
    with open(creds, "w") as f:
        f.write("[default]\naws_access_key_id = ROOTA\naws_secret_access_key = secret-a\n\n"
                "[b]\naws_access_key_id = ROOTB\naws_secret_access_key = secret-b\naws_account_id = 222222222222\n")
    s = Server(data_dir, ["--credentials-file", creds, "--account-id", "111111111111",
                          "--no-managed-capacity"]).start()
    try:
        def who(key, secret, region="us-east-1"):
            return s.client("sts", key=key, secret=secret, region=region).get_caller_identity()

        assert who("ROOTA", "secret-a")["Account"] == "111111111111"
        assert who("ROOTB", "secret-b")["Arn"] == "arn:aws:iam::222222222222:root"
        # 12-digit keys sign with the first profile's secret, not with any other.
        assert who("333333333333", "secret-a", "ap-south-1")["Account"] == "333333333333"
        with pytest.raises(botocore.exceptions.ClientError):
            who("333333333333", "secret-b")
        # The same user name in two accounts: two users, each key in its own account.
        keys = {}
        for key, secret, account in (("ROOTA", "secret-a", "111111111111"), ("ROOTB", "secret-b", "222222222222")):
            iam = s.client("iam", key=key, secret=secret)
            user = iam.create_user(UserName="ci")["User"]
            assert user["Arn"] == f"arn:aws:iam::{account}:user/ci"
            iam.attach_user_policy(UserName="ci", PolicyArn="arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryFullAccess")
            k = iam.create_access_key(UserName="ci")["AccessKey"]
            keys[account] = (k["AccessKeyId"], k["SecretAccessKey"])
            assert s.client("sts", key=k["AccessKeyId"], secret=k["SecretAccessKey"]).get_caller_identity()["Arn"] == \
                f"arn:aws:iam::{account}:user/ci"
        assert [u["UserName"] for u in s.client("iam", key="ROOTB", secret="secret-b").list_users()["Users"]] == ["ci"]
        # Each user acts in its own account's region.
        ecr_a = s.client("ecr", key=keys["111111111111"][0], secret=keys["111111111111"][1])
        ecr_b = s.client("ecr", key=keys["222222222222"][0], secret=keys["222222222222"][1])
        ecr_a.create_repository(repositoryName="only-a")
        assert ecr_b.describe_repositories()["repositories"] == []
        code, _ = error(lambda: ecr_b.describe_repositories(repositoryNames=["only-a"]))
        assert code == "RepositoryNotFoundException"
        # Account B's user is denied ECS as in its own account; A's root is not affected by B's IAM.
        code, message = error(lambda: s.client("ecs", key=keys["222222222222"][0],
                                               secret=keys["222222222222"][1]).list_clusters())
        assert code == "AccessDeniedException" and "arn:aws:iam::222222222222:user/ci" in message
        # A registry password names its account: B's password does not open A's repository.
        put_small_image(ecr_a, "only-a", "v1", "a's")
        status, body = get(f"{s.endpoint}/v2/only-a/tags/list", headers=basic(ecr_b))
        assert status == 404 and b"NAME_UNKNOWN" in body, body
        status, body = get(f"{s.endpoint}/v2/only-a/tags/list", headers=basic(ecr_a))
        assert status == 200 and json.loads(body)["tags"] == ["v1"]
        # A token whose account field was altered is not honoured by that account's registry.
        token = base64.b64decode(ecr_b.get_authorization_token()["authorizationData"][0]["authorizationToken"])
        forged = token.replace(b"222222222222@", b"111111111111@")
        status, body = get(f"{s.endpoint}/v2/only-a/tags/list",
                           headers={"Authorization": "Basic " + base64.b64encode(forged).decode()})
        assert status == 401, body
        # Across accounts: B's role trusts account A (with an external ID). A's root may assume
        # it; A's user only once its own policy allows sts:AssumeRole; the session acts in B.
        iam_b = s.client("iam", key="ROOTB", secret="secret-b")
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "shared-secret"}}}]}
        role = iam_b.create_role(RoleName="cross", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam_b.attach_role_policy(RoleName="cross", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")
        sts_root_a = s.client("sts", key="ROOTA", secret="secret-a")
        code, _ = error(lambda: sts_root_a.assume_role(RoleArn=role, RoleSessionName="no-external-id"))
        assert code == "AccessDenied"
        creds_b = sts_root_a.assume_role(RoleArn=role, RoleSessionName="s1", ExternalId="shared-secret")["Credentials"]
        def as_role(service):
            return boto3.client(service, endpoint_url=s.endpoint, region_name="us-east-1",
                                aws_access_key_id=creds_b["AccessKeyId"],
                                aws_secret_access_key=creds_b["SecretAccessKey"],
                                aws_session_token=creds_b["SessionToken"])

        assert as_role("sts").get_caller_identity()["Arn"] == "arn:aws:sts::222222222222:assumed-role/cross/s1"
        as_role("ecs").create_cluster(clusterName="from-a")
        assert s.client("ecs", key="ROOTB", secret="secret-b").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:us-east-1:222222222222:cluster/from-a"]
        assert s.client("ecs", key="ROOTA", secret="secret-a").list_clusters()["clusterArns"] == []
        user_a = s.client("sts", key=keys["111111111111"][0], secret=keys["111111111111"][1])
        code, message = error(lambda: user_a.assume_role(RoleArn=role, RoleSessionName="s2", ExternalId="shared-secret"))
        assert code == "AccessDenied" and "arn:aws:iam::111111111111:user/ci" in message
        s.client("iam", key="ROOTA", secret="secret-a").put_user_policy(
            UserName="ci", PolicyName="assume", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role}]}))
        assert user_a.assume_role(RoleArn=role, RoleSessionName="s2", ExternalId="shared-secret")[
            "AssumedRoleUser"]["Arn"] == "arn:aws:sts::222222222222:assumed-role/cross/s2"
    finally:
        s.stop()
        os.remove(creds)


def test_regions_are_validated_and_global_services_take_any(server):
    """A malformed region is refused (nothing is created for it); IAM and STS answer whatever
    region the client signs with; DescribeRegions-style discovery is in the gateway's region list."""
    for region in ("bogus", "US-EAST-1", "us-east-x", "useast1"):
        code, message = error(lambda: server.client("ecs", region=region).list_clusters())
        assert code == "InvalidSignatureException" and f"not '{region}'" in message
    code, _ = error(lambda: server.client("elbv2", region="bogus").describe_load_balancers())
    assert code == "SignatureDoesNotMatch"
    assert server.client("sts", region="bogus").get_caller_identity()["Account"] == "000000000000"
    assert server.client("iam", region="xx").list_users()["Users"] == []
    # A region nobody used yet answers empty lists, not errors.
    assert server.client("ecs", region="ap-northeast-2").list_clusters()["clusterArns"] == []
    assert server.client("ecr", region="sa-east-1").describe_repositories()["repositories"] == []


def test_a_new_region_survives_a_restart_with_its_loops(data_dir):
    """A tenant first used after start is recorded: after a restart its load balancer listens
    again (the data plane follows it) and its state is where it was."""
    port = free_port()
    s = Server(data_dir, ["--no-managed-capacity"]).start()
    try:
        elb = s.client("elbv2", key="444444444444", region="eu-west-3")
        lb = elb.create_load_balancer(Name="later", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port, DefaultActions=[
            {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "203", "MessageBody": "eu-west-3"}}])
        assert get(f"http://127.0.0.1:{port}/")[0] == 203
        # A user's key used in this region: its last use outlives the restart.
        iam = s.client("iam", key="444444444444")
        iam.create_user(UserName="u")
        key = iam.create_access_key(UserName="u")["AccessKey"]
        s.client("sts", key=key["AccessKeyId"], secret=key["SecretAccessKey"], region="eu-west-3").get_caller_identity()
    finally:
        assert s.stop() == 0
    s = Server(data_dir, ["--no-managed-capacity"]).start()
    try:
        # The data plane opens the ports of every recorded tenant shortly after start.
        assert wait_for(lambda: status_now(f"http://127.0.0.1:{port}/") == 203, 10)
        elb = s.client("elbv2", key="444444444444", region="eu-west-3")
        assert [x["LoadBalancerName"] for x in elb.describe_load_balancers()["LoadBalancers"]] == ["later"]
        assert s.client("elbv2").describe_load_balancers()["LoadBalancers"] == []
        used = s.client("iam", key="444444444444").get_access_key_last_used(AccessKeyId=key["AccessKeyId"])
        assert (used["AccessKeyLastUsed"]["ServiceName"], used["AccessKeyLastUsed"]["Region"]) == ("sts", "eu-west-3")
        s.client("ecs").create_cluster(clusterName="first-default")
    finally:
        assert s.stop() == 0
    # Started again with another default region, the first one's state stays in its region.
    s = Server(data_dir, ["--no-managed-capacity", "--region", "eu-west-1"]).start()
    try:
        assert s.client("ecs", region="eu-west-1").list_clusters()["clusterArns"] == []
        assert s.client("ecs").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:us-east-1:000000000000:cluster/first-default"]
        s.client("ecs", region="eu-west-1").create_cluster(clusterName="second-default")
    finally:
        assert s.stop() == 0
    s = Server(data_dir, ["--no-managed-capacity"]).start()
    try:
        assert s.client("ecs", region="eu-west-1").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:eu-west-1:000000000000:cluster/second-default"]
        assert s.client("ecs").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:us-east-1:000000000000:cluster/first-default"]
    finally:
        s.stop()


def test_a_data_directory_from_before_tenancy_is_opened_and_served(data_dir):
    """tests/fixtures/legacy-datadir.tar.gz was written by the build before regions and accounts
    (see make_legacy_datadir.py). Its cluster, task definition, repository and image, load
    balancer (listening again), target group and IAM user with its key all belong to the default
    account and region, and other regions do not see them."""
    with open(os.path.join(HERE, "fixtures", "legacy-datadir.json")) as f:
        facts = json.load(f)
    with tarfile.open(os.path.join(HERE, "fixtures", "legacy-datadir.tar.gz")) as t:
        t.extractall(data_dir, filter="data")
    s = Server(os.path.join(data_dir, "data"), ["--no-managed-capacity"]).start()
    try:
        ecs, ecr, elb = s.client("ecs"), s.client("ecr"), s.client("elbv2")
        assert ecs.list_clusters()["clusterArns"] == ["arn:aws:ecs:us-east-1:000000000000:cluster/legacy"]
        assert ecs.describe_task_definition(taskDefinition="legacy:1")["taskDefinition"]["containerDefinitions"][0]["image"] == "legacy:v1"
        (image,) = ecr.batch_get_image(repositoryName="legacy", imageIds=[{"imageTag": "v1"}])["images"]
        assert json.loads(image["imageManifest"])["layers"][0]["digest"] == facts["layer_digest"]
        status, body = get(f"{s.endpoint}/v2/legacy/blobs/{facts['layer_digest']}", headers=basic(ecr))
        assert status == 200 and hashlib.sha256(body).hexdigest() == facts["layer_digest"].split(":")[1]
        assert [x["LoadBalancerArn"] for x in elb.describe_load_balancers()["LoadBalancers"]] == [facts["load_balancer"]]
        assert [x["TargetGroupArn"] for x in elb.describe_target_groups()["TargetGroups"]] == [facts["target_group"]]
        assert wait_for(lambda: status_now(f"http://127.0.0.1:{facts['port']}/") == 200, 10)
        assert get(f"http://127.0.0.1:{facts['port']}/") == (200, b"legacy listener")
        user_ecr = s.client("ecr", key=facts["access_key"], secret=facts["secret"])
        assert [r["repositoryName"] for r in user_ecr.describe_repositories()["repositories"]] == ["legacy"]
        assert s.client("sts", key=facts["access_key"], secret=facts["secret"]).get_caller_identity()["Arn"] == \
            "arn:aws:iam::000000000000:user/legacy-user"
        # Writes after the upgrade land in the same place as before it.
        ecs.register_task_definition(family="legacy", containerDefinitions=[
            {"name": "app", "image": "legacy:v2", "memory": 64}])
        assert ecs.list_task_definitions(familyPrefix="legacy")["taskDefinitionArns"][-1].endswith("legacy:2")
        other = s.client("ecs", region="eu-west-1")
        assert other.list_clusters()["clusterArns"] == []
        assert s.client("ecr", region="eu-west-1").describe_repositories()["repositories"] == []
    finally:
        s.stop()


def test_fargate_task_in_another_account_and_region_pulls_from_its_own_registry(data_dir):
    """Each tenant has its own managed capacity: a FARGATE task of account 123456789012 in
    eu-west-2 pulls its image from that account's registry (pushed with the Docker CLI after a
    login with that account's password) and runs; the default account's capacity never touches
    its containers."""
    s = Server(data_dir, []).start()
    tmp = tempfile.mkdtemp(prefix="fleetport-tenant-")
    tenant = ("123456789012", "eu-west-2")
    cluster = "tenancy-" + os.path.basename(data_dir)[-8:].lower().replace("_", "-")
    try:
        ecs, ecr = client(s, "ecs", tenant), client(s, "ecr", tenant)
        ecr.create_repository(repositoryName="app")
        ctx = os.path.join(tmp, "ctx")
        os.makedirs(f"{ctx}/bin")
        shutil.copy(BUSYBOX, f"{ctx}/bin/busybox")
        for applet in ("sh", "sleep", "echo"):
            os.symlink("busybox", f"{ctx}/bin/{applet}")
        ref = f"localhost:{s.port}/app:tenant"
        tar = subprocess.run(["tar", "-C", ctx, "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["docker", "import", "-c", "ENV PATH=/bin", "-", ref], input=tar, capture_output=True, check=True)
        denv = dict(os.environ, DOCKER_CONFIG=os.path.join(tmp, "docker"))
        token = base64.b64decode(ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
        subprocess.run(["docker", "login", "-u", "AWS", "--password-stdin", f"localhost:{s.port}"],
                       input=token.split(":", 1)[1], capture_output=True, text=True, env=denv, check=True)
        subprocess.run(["docker", "push", ref], capture_output=True, env=denv, check=True)
        docker("rmi", ref)
        # The default account has no such repository.
        assert s.client("ecr").describe_repositories()["repositories"] == []
        ecs.create_cluster(clusterName=cluster)
        ecs.register_task_definition(family="hello", requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
                                     cpu="256", memory="512", containerDefinitions=[
                                         {"name": "hello", "image": ref, "essential": True, "stopTimeout": 2,
                                          "command": ["sh", "-c", "echo hi; sleep 60"]}])
        arn = ecs.run_task(cluster=cluster, taskDefinition="hello", launchType="FARGATE", networkConfiguration={
            "awsvpcConfiguration": {"subnets": ["subnet-local"]}})["tasks"][0]["taskArn"]
        assert arn.startswith("arn:aws:ecs:eu-west-2:123456789012:task/")

        def running():
            t = ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]
            assert t["lastStatus"] not in ("STOPPED", "DEPROVISIONING"), t
            return t["lastStatus"] == "RUNNING"

        wait_for(running, 60)
        assert docker("ps", "-q", "--filter", f"label=com.amazonaws.ecs.task-arn={arn}").stdout.split(), \
            "no container runs the task"
        assert s.client("ecs").list_clusters()["clusterArns"] == []
        ecs.stop_task(cluster=cluster, task=arn)
        wait_for(lambda: ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]["lastStatus"] == "STOPPED", 30)
    finally:
        s.stop()
        remove_containers(cluster)
        shutil.rmtree(tmp, ignore_errors=True)
