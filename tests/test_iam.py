"""IAM and STS, black-box: users with access keys that sign at once, managed and inline policies
enforced on ECS, ECR and IAM calls with AWS's denial texts, explicit denies, policy versions, and
IAM's error codes for bad requests (with nothing stored)."""
import json
import urllib.parse

import botocore.exceptions
import pytest

import conformance

READ_ONLY = "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
FULL = "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryFullAccess"


def error(call, *args, **kwargs):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    return e.value.response["Error"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def user_with_key(iam, name, *policies):
    iam.create_user(UserName=name)
    for p in policies:
        iam.attach_user_policy(UserName=name, PolicyArn=p)
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return k["AccessKeyId"], k["SecretAccessKey"]


def test_caller_identity_and_the_courses_ecr_user(server):
    sts = server.client("sts")
    me = sts.get_caller_identity()
    assert me["Account"] == "000000000000" and me["Arn"] == "arn:aws:iam::000000000000:root"
    assert me["UserId"] == "000000000000"
    conformance.check("sts", "GetCallerIdentity", me)

    # The course's steps, with the AWS CLI: a user with ECR full access and a key for the CLI.
    server.cli("iam", "create-user", "--user-name", "ci")
    server.cli("iam", "attach-user-policy", "--user-name", "ci", "--policy-arn", FULL)
    key = json.loads(server.cli("iam", "create-access-key", "--user-name", "ci").stdout)["AccessKey"]
    assert key["AccessKeyId"].startswith("AKIA") and len(key["AccessKeyId"]) == 20
    assert len(key["SecretAccessKey"]) == 40
    ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
    # The key's account can be read off the key, as AWS's can.
    assert sts.get_access_key_info(AccessKeyId=ak)["Account"] == "000000000000"

    who = json.loads(server.cli("sts", "get-caller-identity", key=ak, secret=sk).stdout)
    assert who["Arn"] == "arn:aws:iam::000000000000:user/ci" and who["UserId"].startswith("AIDA")
    server.cli("ecr", "create-repository", "--repository-name", "app", key=ak, secret=sk)
    r = server.cli("ecs", "create-cluster", "--cluster-name", "x", key=ak, secret=sk, check=False)
    assert r.returncode != 0
    assert "AccessDeniedException" in r.stderr
    assert ("User: arn:aws:iam::000000000000:user/ci is not authorized to perform: ecs:CreateCluster "
            "on resource: arn:aws:ecs:us-east-1:000000000000:cluster/x because no identity-based policy allows "
            "the ecs:CreateCluster action") in r.stderr
    # Nothing was created by the refused call.
    assert server.client("ecs").list_clusters()["clusterArns"] == []
    # A wrong secret for a real key is a signature error, not a denial.
    r = server.cli("ecr", "describe-repositories", key=ak, secret="x" * 40, check=False)
    assert "InvalidSignatureException" in r.stderr


def test_read_only_user_explicit_deny_and_query_denials(server):
    iam = server.client("iam")
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="app")
    ak, sk = user_with_key(iam, "reader", READ_ONLY)
    reader = server.client("ecr", key=ak, secret=sk)
    assert [r["repositoryName"] for r in reader.describe_repositories()["repositories"]] == ["app"]
    assert reader.get_authorization_token()["authorizationData"]
    err, status = error(reader.create_repository, repositoryName="other")
    assert (err["Code"], status) == ("AccessDeniedException", 400)
    assert err["Message"] == (
        "User: arn:aws:iam::000000000000:user/reader is not authorized to perform: ecr:CreateRepository on "
        "resource: arn:aws:ecr:us-east-1:000000000000:repository/other because no identity-based policy allows "
        "the ecr:CreateRepository action")
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == ["app"]
    # IAM itself is denied in the query shape: 403 AccessDenied.
    err, status = error(server.client("iam", key=ak, secret=sk).create_user, UserName="evil")
    assert (err["Code"], status) == ("AccessDenied", 403)
    assert "iam:CreateUser on resource: arn:aws:iam::000000000000:user/evil" in err["Message"]
    # ELBv2 (query) too.
    err, status = error(server.client("elbv2", key=ak, secret=sk).describe_load_balancers)
    assert (err["Code"], status) == ("AccessDenied", 403)

    # An explicit deny on one repository beats the full-access allow, and only there.
    ak2, sk2 = user_with_key(iam, "dev", FULL)
    iam.put_user_policy(UserName="dev", PolicyName="no-prod", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "ecr:*", "Resource": "arn:aws:ecr:*:*:repository/prod*"}]}))
    dev = server.client("ecr", key=ak2, secret=sk2)
    dev.create_repository(repositoryName="dev-app")
    err, _ = error(dev.create_repository, repositoryName="prod-app")
    assert err["Message"].endswith("with an explicit deny in an identity-based policy")
    # Policies take effect at once, both ways.
    iam.delete_user_policy(UserName="dev", PolicyName="no-prod")
    dev.create_repository(repositoryName="prod-app")
    iam.detach_user_policy(UserName="dev", PolicyArn=FULL)
    err, _ = error(dev.describe_repositories)
    assert err["Code"] == "AccessDeniedException"
    # Even an explicit deny of everything leaves GetCallerIdentity.
    iam.put_user_policy(UserName="dev", PolicyName="nothing", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}))
    assert server.client("sts", key=ak2, secret=sk2).get_caller_identity()["Arn"].endswith(":user/dev")


def test_variables_conditions_and_customer_policies_with_versions(server):
    iam = server.client("iam")
    own = iam.create_policy(PolicyName="own-repos", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecr:*",
                       "Resource": "arn:aws:ecr:*:*:repository/${aws:username}-*"},
                      {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*",
                       "Condition": {"StringEquals": {"aws:RequestedRegion": "us-east-1"}}}]}))["Policy"]
    conformance.check("iam", "CreatePolicy", {"Policy": own})
    assert own["Arn"] == "arn:aws:iam::000000000000:policy/own-repos" and own["DefaultVersionId"] == "v1"
    ak, sk = user_with_key(iam, "bob", own["Arn"])
    bob = server.client("ecr", key=ak, secret=sk)
    bob.create_repository(repositoryName="bob-web")
    assert error(bob.create_repository, repositoryName="alice-web")[0]["Code"] == "AccessDeniedException"
    bob.get_authorization_token()
    # The condition on the region named in the signature: eu-west-1 is served, but not to bob.
    err, _ = error(server.client("ecr", key=ak, secret=sk, region="eu-west-1").get_authorization_token)
    assert (err["Code"], err["Message"]) == ("AccessDeniedException",
        "User: arn:aws:iam::000000000000:user/bob is not authorized to perform: ecr:GetAuthorizationToken on "
        "resource: * because no identity-based policy allows the ecr:GetAuthorizationToken action")

    # A new default version replaces the old rules at once; the document comes back URL-encoded
    # on the wire and parsed by boto3.
    v2 = iam.create_policy_version(PolicyArn=own["Arn"], SetAsDefault=True, PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:Describe*", "Resource": "*"}]}))
    assert v2["PolicyVersion"]["VersionId"] == "v2" and v2["PolicyVersion"]["IsDefaultVersion"]
    assert error(bob.create_repository, repositoryName="bob-api")[0]["Code"] == "AccessDeniedException"
    bob.describe_repositories()
    doc = iam.get_policy_version(PolicyArn=own["Arn"], VersionId="v2")["PolicyVersion"]["Document"]
    assert doc["Statement"][0]["Action"] == "ecr:Describe*"
    assert iam.get_policy(PolicyArn=own["Arn"])["Policy"]["AttachmentCount"] == 1
    for n in range(3, 6):
        iam.create_policy_version(PolicyArn=own["Arn"], PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": f"ecr:List{n}", "Resource": "*"}]}))
    err, status = error(iam.create_policy_version, PolicyArn=own["Arn"], PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:X", "Resource": "*"}]}))
    assert (err["Code"], status) == ("LimitExceeded", 409)
    assert error(iam.delete_policy_version, PolicyArn=own["Arn"], VersionId="v2")[0]["Message"] == \
        "Cannot delete the default version of a policy."
    versions = [v["VersionId"] for v in iam.list_policy_versions(PolicyArn=own["Arn"])["Versions"]]
    assert sorted(versions) == ["v1", "v2", "v3", "v4", "v5"]
    assert error(iam.delete_policy, PolicyArn=own["Arn"])[0]["Code"] == "DeleteConflict"

    # The AWS managed policies are listed and readable.
    names = {p["PolicyName"] for p in iam.list_policies(Scope="AWS", MaxItems=1000)["Policies"]}
    assert {"AdministratorAccess", "AmazonEC2ContainerRegistryReadOnly", "AmazonECS_FullAccess"} <= names
    attached = iam.list_policies(OnlyAttached=True)["Policies"]
    assert [p["PolicyName"] for p in attached] == ["own-repos"]
    ro = iam.get_policy_version(PolicyArn=READ_ONLY, VersionId="v3")["PolicyVersion"]["Document"]
    assert "ecr:BatchGetImage" in ro["Statement"][0]["Action"]


def test_access_keys_lifecycle_and_delete_conflicts(server):
    iam = server.client("iam")
    ak, sk = user_with_key(iam, "ops", "arn:aws:iam::aws:policy/AdministratorAccess")
    ops = server.client("ecs", key=ak, secret=sk)
    ops.create_cluster(clusterName="ops")
    iam.create_access_key(UserName="ops")
    err, status = error(iam.create_access_key, UserName="ops")
    assert (err["Code"], status, err["Message"]) == (
        "LimitExceeded", 409, "Cannot exceed quota for AccessKeysPerUser: 2")
    keys = iam.list_access_keys(UserName="ops")["AccessKeyMetadata"]
    assert len(keys) == 2 and {k["Status"] for k in keys} == {"Active"}
    # A key never used reports N/A; a used one its last service and region.
    fresh = next(k["AccessKeyId"] for k in keys if k["AccessKeyId"] != ak)
    assert iam.get_access_key_last_used(AccessKeyId=fresh)["AccessKeyLastUsed"] == {
        "ServiceName": "N/A", "Region": "N/A"}
    used = iam.get_access_key_last_used(AccessKeyId=ak)
    assert used["UserName"] == "ops"
    assert (used["AccessKeyLastUsed"]["ServiceName"], used["AccessKeyLastUsed"]["Region"]) == ("ecs", "us-east-1")
    server.client("ecr", key=ak, secret=sk, region="eu-west-1").describe_repositories()
    used = iam.get_access_key_last_used(AccessKeyId=ak)["AccessKeyLastUsed"]
    assert (used["ServiceName"], used["Region"]) == ("ecr", "eu-west-1")
    # An inactive key no longer signs.
    iam.update_access_key(UserName="ops", AccessKeyId=ak, Status="Inactive")
    err, _ = error(ops.list_clusters)
    assert err["Code"] == "UnrecognizedClientException"
    iam.update_access_key(UserName="ops", AccessKeyId=ak, Status="Active")
    assert ops.list_clusters()["clusterArns"]
    assert iam.get_access_key_last_used(AccessKeyId=ak)["AccessKeyLastUsed"]["ServiceName"] == "ecs"

    err, status = error(iam.delete_user, UserName="ops")
    assert (err["Code"], status, err["Message"]) == (
        "DeleteConflict", 409, "Cannot delete entity, must delete access keys first.")
    for k in iam.list_access_keys(UserName="ops")["AccessKeyMetadata"]:
        iam.delete_access_key(UserName="ops", AccessKeyId=k["AccessKeyId"])
    assert error(iam.delete_user, UserName="ops")[0]["Message"] == \
        "Cannot delete entity, must detach all policies first."
    iam.detach_user_policy(UserName="ops", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
    iam.delete_user(UserName="ops")
    # The deleted key is refused at once.
    assert error(ops.list_clusters)[0]["Code"] == "UnrecognizedClientException"
    assert error(iam.get_user, UserName="ops")[0]["Code"] == "NoSuchEntity"


def test_keys_and_policies_survive_a_restart(data_dir):
    from conftest import Server
    s = Server(data_dir).start()
    try:
        ak, sk = user_with_key(s.client("iam"), "kept", READ_ONLY)
    finally:
        s.stop()
    s = Server(data_dir).start()
    try:
        ecr = s.client("ecr", key=ak, secret=sk)
        ecr.describe_repositories()
        assert error(ecr.create_repository, repositoryName="xy")[0]["Code"] == "AccessDeniedException"
        # The secret is not kept in the clear in the state files.
        import glob
        for f in glob.glob(f"{data_dir}/**", recursive=True):
            try:
                assert sk.encode() not in open(f, "rb").read(), f
            except IsADirectoryError:
                pass
    finally:
        s.stop()


BAD = [
    ("create_user", {"UserName": "bad name"}, "ValidationError", 400),
    ("create_user", {"UserName": "x" * 65}, "ValidationError", 400),
    ("create_user", {"UserName": "ok", "Path": "no-slashes"}, "ValidationError", 400),
    ("get_user", {"UserName": "ghost"}, "NoSuchEntity", 404),
    ("delete_user", {"UserName": "ghost"}, "NoSuchEntity", 404),
    ("create_access_key", {"UserName": "ghost"}, "NoSuchEntity", 404),
    ("list_access_keys", {"UserName": "ghost"}, "NoSuchEntity", 404),
    ("update_access_key", {"UserName": "taken", "AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "Status": "Active"},
     "NoSuchEntity", 404),
    ("delete_access_key", {"UserName": "taken", "AccessKeyId": "AKIAIOSFODNN7EXAMPLE"}, "NoSuchEntity", 404),
    ("update_access_key", {"UserName": "taken", "AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "Status": "Sleeping"},
     "ValidationError", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": "{"}, "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*"}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*"}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "Get", "Resource": "*"}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "ecr:*",
                                                 "Resource": "*"}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2001-01-01", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "ecr:*", "Resource": "*"}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*",
                                                 "Condition": {"Sorta": {"aws:x": "y"}}}]})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}] * 2 +
         [{"Sid": "a", "Effect": "Allow", "Action": "ecr:*", "Resource": "*"}] * 2})},
     "MalformedPolicyDocument", 400),
    ("create_policy", {"PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [f"ecr:A{'x' * 90}{i}" for i in
                                                                               range(80)], "Resource": "*"}]})},
     "LimitExceeded", 409),
    ("get_policy", {"PolicyArn": "arn:aws:iam::000000000000:policy/ghost"}, "NoSuchEntity", 404),
    ("get_policy", {"PolicyArn": "arn:aws:iam::000000000000:role/x"}, "InvalidInput", 400),
    ("attach_user_policy", {"UserName": "taken", "PolicyArn": "arn:aws:iam::aws:policy/NoSuchPolicy"},
     "NoSuchEntity", 404),
    ("attach_user_policy", {"UserName": "ghost", "PolicyArn": READ_ONLY}, "NoSuchEntity", 404),
    ("detach_user_policy", {"UserName": "taken", "PolicyArn": READ_ONLY}, "NoSuchEntity", 404),
    ("put_user_policy", {"UserName": "taken", "PolicyName": "p", "PolicyDocument": "[]"},
     "MalformedPolicyDocument", 400),
    ("put_user_policy", {"UserName": "ghost", "PolicyName": "p", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]})},
     "NoSuchEntity", 404),
    ("get_user_policy", {"UserName": "taken", "PolicyName": "none"}, "NoSuchEntity", 404),
    ("delete_user_policy", {"UserName": "taken", "PolicyName": "none"}, "NoSuchEntity", 404),
    ("get_policy_version", {"PolicyArn": READ_ONLY, "VersionId": "v1"}, "NoSuchEntity", 404),
    ("create_policy_version", {"PolicyArn": "arn:aws:iam::000000000000:policy/ghost", "PolicyDocument": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]})},
     "NoSuchEntity", 404),
]


def test_bad_iam_requests_get_iams_codes_and_store_nothing(server):
    iam = server.client("iam")
    iam.create_user(UserName="taken")
    err, status = error(iam.create_user, UserName="TAKEN")
    assert (err["Code"], status, err["Message"]) == ("EntityAlreadyExists", 409, "User with name TAKEN already exists.")
    assert len(BAD) >= 25
    for op, kwargs, code, want_status in BAD:
        err, status = error(getattr(iam, op), **kwargs)
        assert (err["Code"], status) == (code, want_status), (op, kwargs, err)
        assert err["Message"], (op, kwargs)
    assert [u["UserName"] for u in iam.list_users()["Users"]] == ["taken"]
    assert iam.list_policies(Scope="Local")["Policies"] == []
    assert iam.list_attached_user_policies(UserName="taken")["AttachedPolicies"] == []
    assert iam.list_user_policies(UserName="taken")["PolicyNames"] == []
    assert iam.list_access_keys(UserName="taken")["AccessKeyMetadata"] == []
    # Unsigned-for-IAM-scope or unknown keys are refused in the query shape.
    err, status = error(server.client("iam", key="AKIANOTAKEY000000000", secret="x").list_users)
    assert (err["Code"], status) == ("InvalidClientTokenId", 403)


def test_iam_and_sts_accept_any_signing_region_and_paging(server):
    iam = server.client("iam", region="eu-west-1")
    for n in range(5):
        iam.create_user(UserName=f"u{n}", Path="/team/")
    page1 = iam.list_users(MaxItems=2)
    assert page1["IsTruncated"] and len(page1["Users"]) == 2
    rest = iam.list_users(Marker=page1["Marker"], MaxItems=100)
    assert not rest["IsTruncated"]
    names = [u["UserName"] for u in page1["Users"] + rest["Users"]]
    assert sorted(names) == [f"u{n}" for n in range(5)]
    u = iam.get_user(UserName="u1")["User"]
    conformance.check("iam", "GetUser", {"User": u})
    assert u["Arn"] == "arn:aws:iam::000000000000:user/team/u1" and u["Path"] == "/team/"
    assert server.client("sts", region="ap-northeast-2").get_caller_identity()["Account"] == "000000000000"
    # The raw wire form of a policy document is RFC 3986 URL-encoded JSON.
    iam.put_user_policy(UserName="u1", PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]}))
    raw = server.cli("iam", "get-user-policy", "--user-name", "u1", "--policy-name", "p", "--debug", check=False).stderr
    assert urllib.parse.quote('{"Version"', safe="") in raw


def test_registry_authorises_each_push_and_pull_as_the_tokens_user(server):
    """The course's ECR user pushes with the Docker CLI; a read-only user pulls but cannot push,
    and Docker shows ECR's denial."""
    import subprocess
    import tempfile
    import uuid

    from test_registry import build_image, docker

    iam = server.client("iam")
    server.client("ecr").create_repository(repositoryName="app")
    ci = user_with_key(iam, "ci", FULL)
    reader = user_with_key(iam, "reader", READ_ONLY)
    host = f"localhost:{server.port}"
    created = []
    tag = f"{host}/app:{uuid.uuid4().hex[:8]}"
    build_image(tag, uuid.uuid4().hex, created)

    def login_as(key):
        d = tempfile.mkdtemp(prefix="fleetport-docker-")
        env = dict(__import__("os").environ, DOCKER_CONFIG=d)
        password = server.cli("ecr", "get-login-password", key=key[0], secret=key[1]).stdout.strip()
        r = subprocess.run(["docker", "login", "--username", "AWS", "--password-stdin", host], input=password,
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return env

    try:
        reader_env = login_as(reader)
        r = docker("push", tag, env=reader_env, check=False)
        assert r.returncode != 0
        assert ("denied: User: arn:aws:iam::000000000000:user/reader is not authorized to perform: "
                "ecr:InitiateLayerUpload on resource: arn:aws:ecr:us-east-1:000000000000:repository/app "
                "because no identity-based policy allows the ecr:InitiateLayerUpload action") in r.stderr + r.stdout
        assert server.client("ecr").list_images(repositoryName="app")["imageIds"] == []

        docker("push", tag, env=login_as(ci))
        assert len(server.client("ecr").list_images(repositoryName="app")["imageIds"]) == 1
        docker("rmi", "-f", tag, check=False)
        docker("pull", tag, env=reader_env)
        # Taking the policy away takes the pulls away, with the same token.
        iam.detach_user_policy(UserName="reader", PolicyArn=READ_ONLY)
        docker("rmi", "-f", tag, check=False)
        r = docker("pull", tag, env=reader_env, check=False)
        assert r.returncode != 0 and "ecr:BatchGetImage" in r.stderr + r.stdout
    finally:
        for t in created:
            docker("rmi", "-f", t, check=False)


def trust(*principals, condition=None):
    st = {"Effect": "Allow", "Principal": {"AWS": list(principals)}, "Action": "sts:AssumeRole"}
    if condition:
        st["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [st]})


def test_roles_assume_role_and_temporary_credentials(server):
    iam = server.client("iam")
    dev = user_with_key(iam, "dev")
    ops = user_with_key(iam, "ops")
    role = iam.create_role(RoleName="deployer", AssumeRolePolicyDocument=trust("arn:aws:iam::000000000000:user/dev"),
                           Description="deploys")["Role"]
    # (boto3 parses the URL-encoded trust document into a dict, so the shape check skips it.)
    conformance.check("iam", "CreateRole", {"Role": {k: v for k, v in role.items() if k != "AssumeRolePolicyDocument"}})
    assert role["Arn"] == "arn:aws:iam::000000000000:role/deployer" and role["RoleId"].startswith("AROA")
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Action"] == "sts:AssumeRole"
    iam.attach_role_policy(RoleName="deployer", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")

    # The trust policy names dev: enough on its own, with no identity policy.
    creds = server.client("sts", key=dev[0], secret=dev[1]).assume_role(
        RoleArn=role["Arn"], RoleSessionName="s1")
    conformance.check("sts", "AssumeRole", creds)
    c = creds["Credentials"]
    assert c["AccessKeyId"].startswith("ASIA") and c["SessionToken"]
    assert creds["AssumedRoleUser"] == {"AssumedRoleId": role["RoleId"] + ":s1",
                                        "Arn": "arn:aws:sts::000000000000:assumed-role/deployer/s1"}
    session = dict(key=c["AccessKeyId"], secret=c["SecretAccessKey"])

    def client(service, token=c["SessionToken"]):
        import boto3
        import botocore.config
        return boto3.client(service, endpoint_url=server.endpoint, region_name="us-east-1",
                            aws_access_key_id=session["key"], aws_secret_access_key=session["secret"],
                            aws_session_token=token, config=botocore.config.Config(retries={"max_attempts": 1}))

    who = client("sts").get_caller_identity()
    assert who["Arn"] == "arn:aws:sts::000000000000:assumed-role/deployer/s1"
    assert who["UserId"] == role["RoleId"] + ":s1"
    # The role's policies apply to its sessions.
    client("ecs").create_cluster(clusterName="deployed")
    err, _ = error(client("ecr").create_repository, repositoryName="nope")
    assert err["Message"].startswith(
        "User: arn:aws:sts::000000000000:assumed-role/deployer/s1 is not authorized to perform: ecr:CreateRepository")
    # Without the token, or with another, the key is not valid.
    assert error(client("ecs", token=None).list_clusters)[0]["Code"] == "UnrecognizedClientException"
    assert error(client("ecs", token="bogus").list_clusters)[0]["Code"] == "UnrecognizedClientException"
    assert error(client("iam", token="bogus").list_users)[0]["Code"] == "InvalidClientTokenId"
    # A session cannot ask for a session token.
    err, status = error(client("sts").get_session_token)
    assert (err["Code"], status) == ("AccessDenied", 403)

    # Not named by the trust policy: denied.
    sts_ops = server.client("sts", key=ops[0], secret=ops[1])
    err, status = error(sts_ops.assume_role, RoleArn=role["Arn"], RoleSessionName="s2")
    assert (err["Code"], status) == ("AccessDenied", 403)
    assert err["Message"] == ("User: arn:aws:iam::000000000000:user/ops is not authorized to perform: "
                              "sts:AssumeRole on resource: arn:aws:iam::000000000000:role/deployer")
    # A trust policy naming only the account also needs the caller's own allow.
    iam.update_assume_role_policy(RoleName="deployer", PolicyDocument=trust("arn:aws:iam::000000000000:root"))
    assert error(sts_ops.assume_role, RoleArn=role["Arn"], RoleSessionName="s2")[0]["Code"] == "AccessDenied"
    iam.put_user_policy(UserName="ops", PolicyName="assume", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role["Arn"]}]}))
    sts_ops.assume_role(RoleArn=role["Arn"], RoleSessionName="s2")
    # Durations: above the role's maximum, and chaining beyond an hour.
    err, status = error(sts_ops.assume_role, RoleArn=role["Arn"], RoleSessionName="s3", DurationSeconds=7200)
    assert (err["Code"], status, err["Message"]) == (
        "ValidationError", 400, "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
    iam.update_role(RoleName="deployer", MaxSessionDuration=14400)
    assert sts_ops.assume_role(RoleArn=role["Arn"], RoleSessionName="s3", DurationSeconds=7200)["Credentials"]

    # Root may assume a role that trusts its account; GetSessionToken gives a user a session.
    assert server.client("sts").assume_role(RoleArn=role["Arn"], RoleSessionName="root-s")["Credentials"]
    t = server.client("sts", key=ops[0], secret=ops[1]).get_session_token()["Credentials"]
    assert t["AccessKeyId"].startswith("ASIA")
    # Bad requests.
    assert error(sts_ops.assume_role, RoleArn="arn:aws:iam::000000000000:role/ghost",
                 RoleSessionName="s9")[0]["Code"] == "AccessDenied"
    assert error(sts_ops.assume_role, RoleArn=role["Arn"], RoleSessionName="bad name")[0]["Code"] == "ValidationError"
    assert error(iam.create_role, RoleName="r2", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                                                "Action": "sts:AssumeRole", "Resource": "*"}]}))[0]["Message"] == \
        "Has prohibited field Resource"
    err, _ = error(iam.create_role, RoleName="r2", AssumeRolePolicyDocument=trust("arn:aws:iam::000000000000:user/nobody"))
    assert (err["Code"], err["Message"]) == (
        "MalformedPolicyDocument", 'Invalid principal in policy: "AWS":"arn:aws:iam::000000000000:user/nobody"')
    assert error(iam.create_role, RoleName="deployer", AssumeRolePolicyDocument=trust("000000000000"))[0]["Code"] \
        == "EntityAlreadyExists"
    assert error(iam.delete_role, RoleName="deployer")[0]["Code"] == "DeleteConflict"
    # The session's CreateCluster brought ECS's service-linked role, as on AWS.
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == ["AWSServiceRoleForECS", "deployer"]


def test_temporary_credentials_expire(data_dir):
    """Credentials valid for 15 minutes are refused once the clock has passed that: the server and
    the CLI run 20 minutes ahead (libfaketime), signing as usual."""
    import shutil
    import subprocess

    from conftest import AWS_CLI, Server
    if not shutil.which("faketime"):
        pytest.fail("install faketime (scripts/test-env does)")
    s = Server(data_dir).start()
    try:
        iam = s.client("iam")
        iam.create_role(RoleName="short", AssumeRolePolicyDocument=trust("000000000000"))
        iam.attach_role_policy(RoleName="short", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
        c = s.client("sts").assume_role(RoleArn="arn:aws:iam::000000000000:role/short", RoleSessionName="s1",
                                        DurationSeconds=900)["Credentials"]
    finally:
        s.stop()

    def cli(server, offset, *args):
        env = dict(__import__("os").environ, AWS_ACCESS_KEY_ID=c["AccessKeyId"],
                   AWS_SECRET_ACCESS_KEY=c["SecretAccessKey"], AWS_SESSION_TOKEN=c["SessionToken"],
                   AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=server.endpoint, AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        return subprocess.run(["faketime", "-f", offset, AWS_CLI, *args], capture_output=True, text=True,
                              env=env, timeout=60)

    now = Server(data_dir).start()
    try:
        r = cli(now, "+0s", "ecs", "list-clusters")
        assert r.returncode == 0, r.stderr
    finally:
        now.stop()
    lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    later = Server(data_dir, env={"LD_PRELOAD": lib, "FAKETIME": "+20m"}).start()
    try:
        r = cli(later, "+20m", "ecs", "list-clusters")
        assert r.returncode != 0 and "ExpiredTokenException" in r.stderr, r.stderr
        assert "The security token included in the request is expired" in r.stderr
        r = cli(later, "+20m", "iam", "list-users")
        assert r.returncode != 0 and "ExpiredToken" in r.stderr, r.stderr
    finally:
        later.stop()


def test_repository_policies_grant_and_deny_within_the_account(server):
    """A repository policy that names a user lets that user pull with no identity policy of
    its own (beyond the registry login); a Deny in it beats an identity policy's allow."""
    import subprocess
    import tempfile
    import uuid

    from test_registry import build_image, docker

    iam = server.client("iam")
    ecr = server.client("ecr")
    for name in ("shared", "private"):
        ecr.create_repository(repositoryName=name)
    puller = user_with_key(iam, "puller")
    iam.put_user_policy(UserName="puller", PolicyName="login", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}]}))
    pusher = user_with_key(iam, "pusher", "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPowerUser")
    ecr.set_repository_policy(repositoryName="shared", policyText=json.dumps({
        "Version": "2008-10-17",
        "Statement": [
            {"Sid": "pull", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::000000000000:user/puller"},
             "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability",
                        "ecr:ListImages"]},
            {"Sid": "no-push", "Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::000000000000:user/pusher"},
             "Action": "ecr:PutImage"}]}))

    host = f"localhost:{server.port}"
    created = []
    shared = f"{host}/shared:{uuid.uuid4().hex[:8]}"
    private = f"{host}/private:{uuid.uuid4().hex[:8]}"
    build_image(shared, uuid.uuid4().hex, created)
    docker("tag", shared, private)
    created.append(private)

    def login_as(key):
        d = tempfile.mkdtemp(prefix="fleetport-docker-")
        env = dict(__import__("os").environ, DOCKER_CONFIG=d)
        password = server.cli("ecr", "get-login-password", key=key[0], secret=key[1]).stdout.strip()
        r = subprocess.run(["docker", "login", "--username", "AWS", "--password-stdin", host], input=password,
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return env

    try:
        root_env = tempfile.mkdtemp(prefix="fleetport-docker-")
        env = dict(__import__("os").environ, DOCKER_CONFIG=root_env)
        password = server.cli("ecr", "get-login-password").stdout.strip()
        subprocess.run(["docker", "login", "--username", "AWS", "--password-stdin", host], input=password,
                       capture_output=True, text=True, env=env, timeout=60, check=True)
        docker("push", shared, env=env)
        docker("push", private, env=env)
        docker("rmi", "-f", shared, private, check=False)

        puller_env = login_as(puller)
        docker("pull", shared, env=puller_env)
        r = docker("pull", private, env=puller_env, check=False)
        assert r.returncode != 0 and "ecr:BatchGetImage" in r.stderr + r.stdout
        # The API answers the same way.
        p = server.client("ecr", key=puller[0], secret=puller[1])
        assert p.list_images(repositoryName="shared")["imageIds"]
        assert error(p.list_images, repositoryName="private")[0]["Code"] == "AccessDeniedException"

        # PowerUser may push anywhere, except where the repository policy denies it.
        push = server.client("ecr", key=pusher[0], secret=pusher[1])
        manifest = push.batch_get_image(repositoryName="private", imageIds=[{"imageTag": private.rsplit(":", 1)[1]}])
        body = manifest["images"][0]["imageManifest"]
        push.put_image(repositoryName="private", imageManifest=body, imageTag="copied")
        err, _ = error(push.put_image, repositoryName="shared", imageManifest=body, imageTag="copied")
        assert err["Message"] == (
            "User: arn:aws:iam::000000000000:user/pusher is not authorized to perform: ecr:PutImage on resource: "
            "arn:aws:ecr:us-east-1:000000000000:repository/shared with an explicit deny in a resource-based policy")
    finally:
        for t in created:
            docker("rmi", "-f", t, check=False)


def test_groups_give_their_policies_to_members(server):
    iam = server.client("iam")
    g = iam.create_group(GroupName="builders")["Group"]
    conformance.check("iam", "CreateGroup", {"Group": g})
    assert g["Arn"] == "arn:aws:iam::000000000000:group/builders" and g["GroupId"].startswith("AGPA")
    ak, sk = user_with_key(iam, "member")
    ecr = server.client("ecr", key=ak, secret=sk)
    assert error(ecr.describe_repositories)[0]["Code"] == "AccessDeniedException"
    iam.attach_group_policy(GroupName="builders", PolicyArn=READ_ONLY)
    iam.add_user_to_group(GroupName="builders", UserName="member")
    ecr.describe_repositories()
    iam.put_group_policy(GroupName="builders", PolicyName="no-describe", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "ecr:DescribeRepositories", "Resource": "*"}]}))
    assert error(ecr.describe_repositories)[0]["Message"].endswith("with an explicit deny in an identity-based policy")
    got = iam.get_group(GroupName="builders")
    assert [u["UserName"] for u in got["Users"]] == ["member"]
    assert [x["GroupName"] for x in iam.list_groups_for_user(UserName="member")["Groups"]] == ["builders"]
    assert iam.list_group_policies(GroupName="builders")["PolicyNames"] == ["no-describe"]
    assert error(iam.delete_group, GroupName="builders")[0]["Message"] == \
        "Cannot delete entity, must remove users from group first."
    for k in iam.list_access_keys(UserName="member")["AccessKeyMetadata"]:
        iam.delete_access_key(UserName="member", AccessKeyId=k["AccessKeyId"])
    assert error(iam.delete_user, UserName="member")[0]["Message"] == \
        "Cannot delete entity, must remove users from group first."
    iam.remove_user_from_group(GroupName="builders", UserName="member")
    assert error(iam.delete_group, GroupName="builders")[0]["Code"] == "DeleteConflict"
    iam.delete_group_policy(GroupName="builders", PolicyName="no-describe")
    iam.detach_group_policy(GroupName="builders", PolicyArn=READ_ONLY)
    iam.delete_group(GroupName="builders")
    iam.delete_user(UserName="member")
    assert error(iam.get_group, GroupName="builders")[0]["Code"] == "NoSuchEntity"
    assert error(iam.create_group, GroupName="bad name")[0]["Code"] == "ValidationError"


def test_ecs_actions_are_authorised_on_their_resources(server):
    """Cluster-scoped permissions: a user may manage one cluster's services but not another's, and
    run only the task definition family it is allowed; RunTask names the revision it resolved."""
    iam = server.client("iam")
    root = server.client("ecs")
    for c in ("team", "prod"):
        root.create_cluster(clusterName=c)
    root.register_task_definition(family="web", containerDefinitions=[
        {"name": "web", "image": "busybox", "memory": 64}])
    root.register_task_definition(family="web", containerDefinitions=[
        {"name": "web", "image": "busybox", "memory": 64}])
    ak, sk = user_with_key(iam, "teamdev")
    iam.put_user_policy(UserName="teamdev", PolicyName="team", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ecs:Describe*", "ecs:List*"], "Resource": "*"},
            {"Effect": "Allow", "Action": ["ecs:CreateService", "ecs:UpdateService", "ecs:DeleteService"],
             "Resource": "arn:aws:ecs:us-east-1:000000000000:service/team/*"},
            {"Effect": "Allow", "Action": "ecs:UpdateCluster", "Resource": "arn:aws:ecs:*:*:cluster/team"},
            {"Effect": "Allow", "Action": "ecs:RunTask",
             "Resource": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1"}]}))
    ecs = server.client("ecs", key=ak, secret=sk)
    assert len(ecs.describe_clusters(clusters=["team", "prod"])["clusters"]) == 2
    ecs.update_cluster(cluster="team", settings=[{"name": "containerInsights", "value": "enabled"}])
    err, _ = error(ecs.update_cluster, cluster="prod", settings=[{"name": "containerInsights", "value": "enabled"}])
    assert "ecs:UpdateCluster on resource: arn:aws:ecs:us-east-1:000000000000:cluster/prod" in err["Message"]
    ecs.create_service(cluster="team", serviceName="api", taskDefinition="web:1", desiredCount=0)
    err, _ = error(ecs.create_service, cluster="prod", serviceName="api", taskDefinition="web:1", desiredCount=0)
    assert "ecs:CreateService on resource: arn:aws:ecs:us-east-1:000000000000:service/prod/api" in err["Message"]
    assert root.list_services(cluster="prod")["serviceArns"] == []
    ecs.delete_service(cluster="team", service="api", force=True)
    # RunTask is checked on the revision a bare family resolves to (the latest, web:2 here).
    err, _ = error(ecs.run_task, cluster="team", taskDefinition="web")
    assert "ecs:RunTask on resource: arn:aws:ecs:us-east-1:000000000000:task-definition/web:2" in err["Message"]


def test_instance_profiles_and_service_linked_roles(server):
    iam = server.client("iam")
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    iam.attach_role_policy(RoleName="ecsInstanceRole",
                           PolicyArn="arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role")
    p = iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]
    conformance.check("iam", "CreateInstanceProfile", {"InstanceProfile": p})
    assert p["InstanceProfileId"].startswith("AIPA") and p["Roles"] == []
    iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    got = iam.get_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]
    assert [r["RoleName"] for r in got["Roles"]] == ["ecsInstanceRole"]
    err, status = error(iam.add_role_to_instance_profile, InstanceProfileName="ecsInstanceRole",
                        RoleName="ecsInstanceRole")
    assert (err["Code"], status) == ("LimitExceeded", 409)
    assert [x["InstanceProfileName"] for x in
            iam.list_instance_profiles_for_role(RoleName="ecsInstanceRole")["InstanceProfiles"]] == ["ecsInstanceRole"]
    iam.detach_role_policy(RoleName="ecsInstanceRole",
                           PolicyArn="arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role")
    assert error(iam.delete_role, RoleName="ecsInstanceRole")[0]["Message"] == \
        "Cannot delete entity, must remove roles from instance profile first."
    assert error(iam.delete_instance_profile, InstanceProfileName="ecsInstanceRole")[0]["Code"] == "DeleteConflict"
    iam.remove_role_from_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    iam.delete_instance_profile(InstanceProfileName="ecsInstanceRole")
    iam.delete_role(RoleName="ecsInstanceRole")

    role = iam.create_service_linked_role(AWSServiceName="ecs.amazonaws.com")["Role"]
    assert role["Arn"] == "arn:aws:iam::000000000000:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS"
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ecs.amazonaws.com"}
    assert [a["PolicyName"] for a in iam.list_attached_role_policies(RoleName="AWSServiceRoleForECS")[
        "AttachedPolicies"]] == ["AmazonECSServiceRolePolicy"]
    err, _ = error(iam.create_service_linked_role, AWSServiceName="ecs.amazonaws.com")
    assert (err["Code"], err["Message"]) == (
        "InvalidInput",
        "Service role name AWSServiceRoleForECS has been taken in this account, please try a different suffix.")
    err, _ = error(iam.delete_role, RoleName="AWSServiceRoleForECS")
    assert err["Code"] == "UnmodifiableEntity"
    assert error(iam.put_role_policy, RoleName="AWSServiceRoleForECS", PolicyName="x", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))[0]["Code"] \
        == "UnmodifiableEntity"
    task = iam.delete_service_linked_role(RoleName="AWSServiceRoleForECS")["DeletionTaskId"]
    assert iam.get_service_linked_role_deletion_status(DeletionTaskId=task)["Status"] == "SUCCEEDED"
    assert error(iam.get_role, RoleName="AWSServiceRoleForECS")[0]["Code"] == "NoSuchEntity"
    # ECS makes its service-linked role with the account's first cluster, in any region.
    server.client("ecs", region="ap-south-1").create_cluster(clusterName="brings-the-role")
    role = iam.get_role(RoleName="AWSServiceRoleForECS")["Role"]
    assert role["Path"] == "/aws-service-role/ecs.amazonaws.com/"
    assert iam.list_attached_role_policies(RoleName="AWSServiceRoleForECS")["AttachedPolicies"][0]["PolicyName"] == \
        "AmazonECSServiceRolePolicy"


def test_policy_users_and_tags(server):
    iam = server.client("iam")
    iam.create_user(UserName="u1", Tags=[{"Key": "team", "Value": "a"}])
    iam.create_group(GroupName="g1")
    iam.create_role(RoleName="r1", AssumeRolePolicyDocument=trust("000000000000"))
    for attach in (lambda: iam.attach_user_policy(UserName="u1", PolicyArn=READ_ONLY),
                   lambda: iam.attach_group_policy(GroupName="g1", PolicyArn=READ_ONLY),
                   lambda: iam.attach_role_policy(RoleName="r1", PolicyArn=READ_ONLY)):
        attach()
    who = iam.list_entities_for_policy(PolicyArn=READ_ONLY)
    assert [u["UserName"] for u in who["PolicyUsers"]] == ["u1"]
    assert [g["GroupName"] for g in who["PolicyGroups"]] == ["g1"]
    assert [r["RoleName"] for r in who["PolicyRoles"]] == ["r1"]
    assert iam.get_policy(PolicyArn=READ_ONLY)["Policy"]["AttachmentCount"] == 3
    assert iam.list_entities_for_policy(PolicyArn=READ_ONLY, EntityFilter="Role")["PolicyUsers"] == []
    iam.tag_user(UserName="u1", Tags=[{"Key": "team", "Value": "b"}, {"Key": "env", "Value": "dev"}])
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName="u1")["Tags"]}
    assert tags == {"team": "b", "env": "dev"}
    iam.untag_user(UserName="u1", TagKeys=["env"])
    assert iam.list_user_tags(UserName="u1")["Tags"] == [{"Key": "team", "Value": "b"}]
    iam.tag_role(RoleName="r1", Tags=[{"Key": "k", "Value": "v"}])
    assert iam.list_role_tags(RoleName="r1")["Tags"] == [{"Key": "k", "Value": "v"}]
    assert error(iam.tag_user, UserName="ghost", Tags=[{"Key": "k", "Value": "v"}])[0]["Code"] == "NoSuchEntity"


def test_passing_a_role_to_ecs_needs_pass_role(server):
    iam = server.client("iam")
    iam.create_role(RoleName="web-task", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    task_role = "arn:aws:iam::000000000000:role/web-task"
    ak, sk = user_with_key(iam, "deployer")
    iam.put_user_policy(UserName="deployer", PolicyName="td", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecs:RegisterTaskDefinition", "Resource": "*"}]}))
    ecs = server.client("ecs", key=ak, secret=sk)
    td = dict(family="web", containerDefinitions=[{"name": "web", "image": "busybox", "memory": 64}])
    ecs.register_task_definition(**td)
    err, _ = error(ecs.register_task_definition, taskRoleArn=task_role, **td)
    assert err["Message"] == (
        "User: arn:aws:iam::000000000000:user/deployer is not authorized to perform: iam:PassRole on resource: "
        f"{task_role} because no identity-based policy allows the iam:PassRole action")
    # AmazonECS_FullAccess allows passing roles to ECS tasks (its condition on iam:PassedToService).
    iam.attach_user_policy(UserName="deployer", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")
    assert ecs.register_task_definition(taskRoleArn=task_role, **td)["taskDefinition"]["revision"] == 2
    # A pass-role allow for another service does not do.
    iam.detach_user_policy(UserName="deployer", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")
    iam.put_user_policy(UserName="deployer", PolicyName="pass-ec2", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*",
                       "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}]}))
    assert error(ecs.register_task_definition, executionRoleArn="web-task", **td)[0]["Code"] == "AccessDeniedException"
    # A service's own role is passed to ECS itself (ecs.amazonaws.com), not to its tasks.
    server.client("ecs").create_cluster(clusterName="pass")
    iam.put_user_policy(UserName="deployer", PolicyName="svc", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecs:CreateService", "Resource": "*"},
                      {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*",
                       "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}}]}))
    svc = dict(cluster="pass", serviceName="s", taskDefinition="web:1", desiredCount=0)
    err, _ = error(ecs.create_service, role="web-task", **svc)
    assert err["Message"].startswith(
        "User: arn:aws:iam::000000000000:user/deployer is not authorized to perform: iam:PassRole on resource: "
        f"{task_role}"), err
    assert ecs.create_service(**svc)["service"]["serviceName"] == "s"


def test_source_ip_conditions_see_the_clients_address(server):
    iam = server.client("iam")
    ak, sk = user_with_key(iam, "net")
    iam.put_user_policy(UserName="net", PolicyName="loopback-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*",
                       "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}},
                      {"Effect": "Allow", "Action": "ecs:ListTaskDefinitions", "Resource": "*",
                       "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]}}}]}))
    ecs = server.client("ecs", key=ak, secret=sk)
    ecs.list_clusters()
    assert error(ecs.list_task_definitions)[0]["Code"] == "AccessDeniedException"


def test_elb_actions_are_authorised_on_their_resources(server):
    elb = server.client("elbv2")
    mine = elb.create_load_balancer(Name="mine", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
    theirs = elb.create_load_balancer(Name="theirs", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
    iam = server.client("iam")
    ak, sk = user_with_key(iam, "lbops", "arn:aws:iam::aws:policy/ElasticLoadBalancingReadOnly")
    iam.put_user_policy(UserName="lbops", PolicyName="mine", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "elasticloadbalancing:*",
                       "Resource": "arn:aws:elasticloadbalancing:*:*:loadbalancer/app/mine/*"}]}))
    ops = server.client("elbv2", key=ak, secret=sk)
    assert len(ops.describe_load_balancers()["LoadBalancers"]) == 2
    attrs = [{"Key": "idle_timeout.timeout_seconds", "Value": "30"}]
    ops.modify_load_balancer_attributes(LoadBalancerArn=mine["LoadBalancerArn"], Attributes=attrs)
    err, status = error(ops.modify_load_balancer_attributes, LoadBalancerArn=theirs["LoadBalancerArn"],
                        Attributes=attrs)
    assert (err["Code"], status) == ("AccessDenied", 403)
    assert f"elasticloadbalancing:ModifyLoadBalancerAttributes on resource: {theirs['LoadBalancerArn']}" \
        in err["Message"]
    ops.add_tags(ResourceArns=[mine["LoadBalancerArn"]], Tags=[{"Key": "k", "Value": "v"}])
    assert error(ops.add_tags, ResourceArns=[mine["LoadBalancerArn"], theirs["LoadBalancerArn"]],
                 Tags=[{"Key": "k", "Value": "v"}])[0]["Code"] == "AccessDenied"
    assert error(ops.delete_load_balancer, LoadBalancerArn=theirs["LoadBalancerArn"])[0]["Code"] == "AccessDenied"
    ops.delete_load_balancer(LoadBalancerArn=mine["LoadBalancerArn"])
    assert [lb["LoadBalancerName"] for lb in elb.describe_load_balancers()["LoadBalancers"]] == ["theirs"]


def test_token_issue_time_is_known_to_temporary_credentials_only(server):
    iam = server.client("iam")
    only_sessions = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*",
         "Condition": {"Null": {"aws:TokenIssueTime": "false"},
                       "DateGreaterThan": {"aws:TokenIssueTime": "2020-01-01T00:00:00Z"}}}]})
    iam.create_role(RoleName="timed", AssumeRolePolicyDocument=trust("000000000000"))
    iam.put_role_policy(RoleName="timed", PolicyName="p", PolicyDocument=only_sessions)
    ak, sk = user_with_key(iam, "plain")
    iam.put_user_policy(UserName="plain", PolicyName="p", PolicyDocument=only_sessions)
    assert error(server.client("ecs", key=ak, secret=sk).list_clusters)[0]["Code"] == "AccessDeniedException"
    c = server.client("sts").assume_role(RoleArn="arn:aws:iam::000000000000:role/timed",
                                         RoleSessionName="t1")["Credentials"]
    import boto3
    ecs = boto3.client("ecs", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                       aws_session_token=c["SessionToken"])
    assert ecs.list_clusters()["clusterArns"] == []


def test_session_policies_narrow_an_assumed_role(server):
    import boto3
    iam = server.client("iam")
    iam.create_role(RoleName="admin", AssumeRolePolicyDocument=trust("000000000000"))
    iam.attach_role_policy(RoleName="admin", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
    sts = server.client("sts")

    def session(**kw):
        c = sts.assume_role(RoleArn="arn:aws:iam::000000000000:role/admin", RoleSessionName="narrow",
                            **kw)["Credentials"]
        return lambda svc: boto3.client(svc, endpoint_url=server.endpoint, region_name="us-east-1",
                                        aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                                        aws_session_token=c["SessionToken"])

    wide = session()
    narrow = session(Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ecs:List*", "Resource": "*"}]}))
    managed = session(PolicyArns=[{"arn": READ_ONLY}])
    wide("ecr").create_repository(repositoryName="by-wide")
    narrow("ecs").list_clusters()
    assert error(narrow("ecr").create_repository, repositoryName="by-narrow")[0]["Code"] == "AccessDeniedException"
    assert error(narrow("ecs").create_cluster, clusterName="x")[0]["Code"] == "AccessDeniedException"
    managed("ecr").describe_repositories()
    assert error(managed("ecr").create_repository, repositoryName="by-managed")[0]["Code"] == "AccessDeniedException"
    err, status = error(sts.assume_role, RoleArn="arn:aws:iam::000000000000:role/admin", RoleSessionName="bad",
                        Policy='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}')
    assert (err["Code"], status) == ("MalformedPolicyDocument", 400)


def test_permissions_boundaries_cap_identity_policies(server):
    iam = server.client("iam")
    admin = "arn:aws:iam::aws:policy/AdministratorAccess"
    iam.create_user(UserName="capped", PermissionsBoundary=READ_ONLY)
    got = iam.get_user(UserName="capped")["User"]
    assert got["PermissionsBoundary"] == {"PermissionsBoundaryType": "PermissionsBoundaryPolicy",
                                          "PermissionsBoundaryArn": READ_ONLY}
    iam.attach_user_policy(UserName="capped", PolicyArn=admin)
    k = iam.create_access_key(UserName="capped")["AccessKey"]
    ecr = server.client("ecr", key=k["AccessKeyId"], secret=k["SecretAccessKey"])
    ecr.describe_repositories()
    assert error(ecr.create_repository, repositoryName="nope")[0]["Code"] == "AccessDeniedException"
    assert error(server.client("ecs", key=k["AccessKeyId"], secret=k["SecretAccessKey"]).list_clusters)[0][
        "Code"] == "AccessDeniedException"
    iam.delete_user_permissions_boundary(UserName="capped")
    ecr.create_repository(repositoryName="now-yes")
    assert error(iam.delete_user_permissions_boundary, UserName="capped")[0]["Code"] == "NoSuchEntity"
    iam.put_user_permissions_boundary(UserName="capped", PermissionsBoundary=READ_ONLY)
    assert error(ecr.create_repository, repositoryName="again-no")[0]["Code"] == "AccessDeniedException"
    assert error(iam.create_user, UserName="x2", PermissionsBoundary="arn:aws:iam::aws:policy/Nope")[0]["Code"] \
        == "NoSuchEntity"
    assert error(iam.get_user, UserName="x2")[0]["Code"] == "NoSuchEntity"
    # Roles too, and their sessions.
    iam.create_role(RoleName="capped-role", AssumeRolePolicyDocument=trust("000000000000"),
                    PermissionsBoundary=READ_ONLY)
    iam.attach_role_policy(RoleName="capped-role", PolicyArn=admin)
    c = server.client("sts").assume_role(RoleArn="arn:aws:iam::000000000000:role/capped-role",
                                         RoleSessionName="s1")["Credentials"]
    import boto3
    s_ecr = boto3.client("ecr", endpoint_url=server.endpoint, region_name="us-east-1",
                         aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                         aws_session_token=c["SessionToken"])
    s_ecr.describe_repositories()
    assert error(s_ecr.create_repository, repositoryName="role-no")[0]["Code"] == "AccessDeniedException"


def test_a_task_definition_naming_a_missing_role_is_refused(server):
    ecs = server.client("ecs")
    td = dict(family="web", containerDefinitions=[{"name": "web", "image": "busybox", "memory": 64}])
    err, _ = error(ecs.register_task_definition, taskRoleArn="arn:aws:iam::000000000000:role/ghost", **td)
    assert (err["Code"], err["Message"]) == ("ClientException", "Role is not valid")
    assert error(ecs.register_task_definition, executionRoleArn="ghost", **td)[0]["Message"] == "Role is not valid"
    assert ecs.list_task_definitions()["taskDefinitionArns"] == []
    server.client("iam").create_role(RoleName="ghost", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    assert ecs.register_task_definition(executionRoleArn="ghost", **td)["taskDefinition"]["executionRoleArn"] == "ghost"


def test_acm_actions_are_authorised_on_the_certificate(server, tmp_path):
    """ACM actions name the certificate they act on; only ListCertificates (and an import of a
    new certificate) is on `*`."""
    from test_elb import import_cert, make_cert
    acm = server.client("acm")
    mine = import_cert(acm, *make_cert(tmp_path, "mine", "mine.example"))
    theirs = import_cert(acm, *make_cert(tmp_path, "theirs", "theirs.example"))
    iam = server.client("iam")
    ak, sk = user_with_key(iam, "certs")
    iam.put_user_policy(UserName="certs", PolicyName="mine", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["acm:DescribeCertificate", "acm:ListCertificates"],
                       "Resource": mine},
                      {"Effect": "Allow", "Action": "acm:ListCertificates", "Resource": "*"}]}))
    user = server.client("acm", key=ak, secret=sk)
    assert len(user.list_certificates()["CertificateSummaryList"]) == 2
    assert user.describe_certificate(CertificateArn=mine)["Certificate"]["DomainName"] == "mine.example"
    err, _ = error(user.describe_certificate, CertificateArn=theirs)
    assert (err["Code"], err["Message"]) == ("AccessDeniedException",
        f"User: arn:aws:iam::000000000000:user/certs is not authorized to perform: acm:DescribeCertificate on "
        f"resource: {theirs} because no identity-based policy allows the acm:DescribeCertificate action")
    assert error(user.delete_certificate, CertificateArn=mine)[0]["Code"] == "AccessDeniedException"


def test_resource_and_principal_tags_in_conditions(server):
    """aws:ResourceTag/<key> sees the tags of the ECS, ECR and ELB resource acted on (and the
    service's own <prefix>:ResourceTag/<key>); aws:PrincipalTag/<key> the user's tags, also as a
    ${…} variable, so one policy gives each team its own clusters."""
    ecs, ecr, elb, iam = (server.client(s) for s in ("ecs", "ecr", "elbv2", "iam"))
    ecs.create_cluster(clusterName="alpha", tags=[{"key": "team", "value": "a"}])
    ecs.create_cluster(clusterName="beta", tags=[{"key": "team", "value": "b"}])
    ecr.create_repository(repositoryName="alpha", tags=[{"Key": "team", "Value": "a"}])
    ecr.create_repository(repositoryName="beta", tags=[{"Key": "team", "Value": "b"}])
    keep = elb.create_load_balancer(Name="keep", Subnets=["subnet-a", "subnet-b"],
                                    Tags=[{"Key": "protected", "Value": "true"}])["LoadBalancers"][0]["LoadBalancerArn"]
    spare = elb.create_load_balancer(Name="spare", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]["LoadBalancerArn"]
    ak, sk = user_with_key(iam, "alice")
    iam.tag_user(UserName="alice", Tags=[{"Key": "team", "Value": "a"}])
    iam.put_user_policy(UserName="alice", PolicyName="own-team", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "ecs:DescribeClusters", "Resource": "*",
             "Condition": {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"}}},
            {"Effect": "Allow", "Action": "ecr:DescribeImages", "Resource": "*",
             "Condition": {"StringEquals": {"ecr:ResourceTag/team": "a"}}},
            {"Effect": "Allow", "Action": "elasticloadbalancing:DeleteLoadBalancer", "Resource": "*"},
            {"Effect": "Deny", "Action": "elasticloadbalancing:DeleteLoadBalancer", "Resource": "*",
             "Condition": {"StringEquals": {"aws:ResourceTag/protected": "true"}}}]}))
    a_ecs = server.client("ecs", key=ak, secret=sk)
    assert a_ecs.describe_clusters(clusters=["alpha"])["clusters"][0]["clusterName"] == "alpha"
    err, _ = error(a_ecs.describe_clusters, clusters=["beta"])
    assert err["Code"] == "AccessDeniedException" and "cluster/beta" in err["Message"]
    a_ecr = server.client("ecr", key=ak, secret=sk)
    assert a_ecr.describe_images(repositoryName="alpha")["imageDetails"] == []
    assert error(a_ecr.describe_images, repositoryName="beta")[0]["Code"] == "AccessDeniedException"
    a_elb = server.client("elbv2", key=ak, secret=sk)
    err, _ = error(a_elb.delete_load_balancer, LoadBalancerArn=keep)
    assert err["Code"] == "AccessDenied" and "with an explicit deny" in err["Message"], err
    a_elb.delete_load_balancer(LoadBalancerArn=spare)
    # Another team's tag, and the same policy now fits beta instead.
    iam.tag_user(UserName="alice", Tags=[{"Key": "team", "Value": "b"}])
    assert a_ecs.describe_clusters(clusters=["beta"])["clusters"][0]["clusterName"] == "beta"
    assert error(a_ecs.describe_clusters, clusters=["alpha"])[0]["Code"] == "AccessDeniedException"


def test_session_tags_are_the_sessions_principal_tags(server):
    """AssumeRole with Tags needs sts:TagSession in the trust policy; the session's tags then
    stand as its aws:PrincipalTag/<key>s, over the role's own tags, and aws:RequestTag/<key> lets
    the trust policy test them."""
    import boto3
    iam = server.client("iam")
    plain = trust("000000000000")
    tagging = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "000000000000"}, "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:RequestTag/team": ["a", "b"]}}}]})
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}}]})
    for name, doc in (("no-tagging", plain), ("tagging", tagging)):
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=doc, Tags=[{"Key": "team", "Value": "z"}])
        iam.put_role_policy(RoleName=name, PolicyName="by-team", PolicyDocument=policy)
    sts = server.client("sts")

    def assume(role, tags=None):
        kw = {"Tags": tags} if tags is not None else {}
        c = sts.assume_role(RoleArn=f"arn:aws:iam::000000000000:role/{role}", RoleSessionName="tt", **kw)["Credentials"]
        return boto3.client("ecs", endpoint_url=server.endpoint, region_name="us-east-1",
                            aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                            aws_session_token=c["SessionToken"])

    err, _ = error(sts.assume_role, RoleArn="arn:aws:iam::000000000000:role/no-tagging", RoleSessionName="tt",
                   Tags=[{"Key": "team", "Value": "a"}])
    assert (err["Code"], err["Message"]) == ("AccessDenied",
        "User: arn:aws:iam::000000000000:root is not authorized to perform: sts:TagSession on resource: "
        "arn:aws:iam::000000000000:role/no-tagging")
    # The trust policy's condition on the requested tag.
    assert error(sts.assume_role, RoleArn="arn:aws:iam::000000000000:role/tagging", RoleSessionName="tt",
                 Tags=[{"Key": "team", "Value": "c"}])[0]["Code"] == "AccessDenied"
    assert error(sts.assume_role, RoleArn="arn:aws:iam::000000000000:role/tagging", RoleSessionName="tt",
                 Tags=[{"Key": "team", "Value": "a"}, {"Key": "TEAM", "Value": "b"}])[0]["Code"] == "InvalidParameterValue"
    # Untagged sessions carry the role's tag (team=z); tagged ones their own.
    assert error(assume("no-tagging").list_clusters)[0]["Code"] == "AccessDeniedException"
    assume("tagging", [{"Key": "team", "Value": "a"}]).list_clusters()
    assert error(assume("tagging", [{"Key": "team", "Value": "b"}]).list_clusters)[0]["Code"] == "AccessDeniedException"
