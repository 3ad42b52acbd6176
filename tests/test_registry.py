"""The registry with the real Docker CLI and engine, ECR's auth, and the ECR API (boto3 + CLI).

Images are built locally from busybox-static (nothing can be pulled from the internet). Each test
uses its own DOCKER_CONFIG and removes the images it created.
"""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import uuid

import botocore.exceptions
import pytest

import conformance
from conftest import Server
from raw import send

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def docker(*args, env=None, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {r.stderr}")
    return r


@pytest.fixture
def docker_env():
    d = tempfile.mkdtemp(prefix="fleetport-docker-")
    env = dict(os.environ, DOCKER_CONFIG=d)
    created = []
    yield env, created
    for image in created:
        docker("rmi", "-f", image, check=False)
    shutil.rmtree(d, ignore_errors=True)


def build_image(tag, marker, created):
    """A tiny image: busybox-static plus a file that makes each build's layer unique."""
    ctx = tempfile.mkdtemp()
    try:
        os.makedirs(f"{ctx}/bin")
        shutil.copy(BUSYBOX, f"{ctx}/bin/busybox")
        with open(f"{ctx}/marker", "w") as f:
            f.write(marker)
        tar = subprocess.run(["tar", "-C", ctx, "-c", "."], capture_output=True, check=True).stdout
        r = subprocess.run(["docker", "import", "-c", 'CMD ["/bin/busybox","true"]', "-", tag], input=tar,
                           capture_output=True, check=True)
        created.append(tag)
        return r.stdout.decode().strip()
    finally:
        shutil.rmtree(ctx)


def login(server, env):
    host = f"localhost:{server.port}"
    password = server.cli("ecr", "get-login-password", "--region", "us-east-1").stdout.strip()
    r = subprocess.run(["docker", "login", "--username", "AWS", "--password-stdin", host], input=password,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return host, password


def test_seed_workflow_push_describe_pull_and_restart(data_dir, docker_env):
    env, created = docker_env
    server = Server(data_dir).start()
    try:
        name = f"web-{uuid.uuid4().hex[:8]}"
        out = json.loads(server.cli("ecr", "create-repository", "--repository-name", name,
                                    "--image-tag-mutability", "IMMUTABLE").stdout)
        conformance.check_raw("ecr", "CreateRepository", out)
        host, _ = login(server, env)
        assert out["repository"]["repositoryUri"] == f"{host}/{name}"
        image_id = build_image(f"{name}:1", "one", created)
        ref = f"{host}/{name}:1"
        docker("tag", f"{name}:1", ref, env=env)
        created.append(ref)
        docker("push", ref, env=env)
        images = json.loads(server.cli("ecr", "describe-images", "--repository-name", name).stdout)
        conformance.check_raw("ecr", "DescribeImages", images)
        detail = images["imageDetails"][0]
        assert detail["imageTags"] == ["1"]
        assert detail["imageManifestMediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert 1_000_000 < detail["imageSizeInBytes"] < 3_000_000, "compressed layer total"
        docker("rmi", ref, env=env)
        docker("pull", ref, env=env)
        assert docker("image", "inspect", ref, "--format", "{{.Id}}", env=env).stdout.strip() == image_id
        # Immutable tag: pushing different content under the same tag is refused.
        build_image(f"{name}:other", "two", created)
        docker("tag", f"{name}:other", ref, env=env)
        r = docker("push", ref, env=env, check=False)
        assert r.returncode != 0 and "cannot be overwritten because the repository is immutable" in r.stderr, r.stderr
        server.stop()
        server = Server(data_dir).start()
        host, _ = login(server, env)
        ref = f"{host}/{name}:1"
        created.append(ref)
        docker("rmi", "-f", ref, env=env, check=False)
        docker("pull", ref, env=env)
        assert docker("image", "inspect", ref, "--format", "{{.Id}}", env=env).stdout.strip() == image_id
    finally:
        server.stop()


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_registry_auth(server):
    ecr = server.client("ecr")
    data = ecr.get_authorization_token()
    conformance.check("ecr", "GetAuthorizationToken", data)
    auth = data["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":")
    assert user == "AWS" and auth["proxyEndpoint"] == f"http://localhost:{server.port}"
    v2 = server.endpoint + "/v2/"
    r = send("GET", v2)
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Basic realm=")
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert send("GET", v2, headers=basic("AWS", password)).status == 200
    assert send("GET", v2, headers=basic("AWS", "test")).status == 401, "the raw secret is never a password"
    assert send("GET", v2, headers=basic("admin", password)).status == 401
    forged = password[:-4] + ("0000" if not password.endswith("0000") else "1111")
    assert send("GET", v2, headers=basic("AWS", forged)).status == 401
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


def test_bad_uploads_store_nothing(server):
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="up")
    token = base64.b64decode(ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
    h = basic(*token.split(":"))
    base = server.endpoint + "/v2/up/blobs/uploads/"
    good = b"hello registry"
    import hashlib

    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    r = send("POST", base + "?digest=" + wrong, good, h)
    assert r.status == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert send("HEAD", f"{server.endpoint}/v2/up/blobs/{wrong}", headers=h).status == 404
    assert send("HEAD", f"{server.endpoint}/v2/up/blobs/{digest}", headers=h).status == 404
    # Chunked upload, with an out-of-order chunk refused.
    r = send("POST", base, b"", h)
    assert r.status == 202
    loc = server.endpoint + r.headers["location"]
    r = send("PATCH", loc, good[:5], dict(h, **{"Content-Range": "0-4", "Content-Type": "application/octet-stream"}))
    assert r.status == 202 and r.headers["range"] == "0-4"
    r = send("PATCH", loc, good[5:], dict(h, **{"Content-Range": f"7-{7 + len(good) - 6}", "Content-Type": "application/octet-stream"}))
    assert r.status == 416
    r = send("PATCH", loc, good[5:], dict(h, **{"Content-Range": f"5-{len(good) - 1}", "Content-Type": "application/octet-stream"}))
    assert r.status == 202
    r = send("PUT", loc + "?digest=" + digest, b"", h)
    assert r.status == 201 and r.headers["docker-content-digest"] == digest
    r = send("GET", f"{server.endpoint}/v2/up/blobs/{digest}", headers=h)
    assert r.status == 200 and r.body == good
    r = send("GET", f"{server.endpoint}/v2/up/blobs/{digest}", headers=dict(h, Range="bytes=6-13"))
    assert r.status == 206 and r.body == good[6:14] and r.headers["content-range"] == f"bytes 6-13/{len(good)}"
    r = send("GET", f"{server.endpoint}/v2/up/blobs/{digest}", headers=dict(h, Range="bytes=99-"))
    assert r.status == 416
    # Names and repositories.
    assert send("GET", f"{server.endpoint}/v2/Up/tags/list", headers=h).json()["errors"][0]["code"] == "NAME_INVALID"
    r = send("GET", f"{server.endpoint}/v2/nope/tags/list", headers=h)
    assert r.status == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    # A manifest naming a missing blob is refused and nothing is tagged.
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": wrong, "size": 5},
                           "layers": []}).encode()
    r = send("PUT", f"{server.endpoint}/v2/up/manifests/v1", manifest,
             dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    assert r.status == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert send("GET", f"{server.endpoint}/v2/up/tags/list", headers=h).json()["tags"] == []


def test_repository_api(server):
    ecr = server.client("ecr")
    created = ecr.create_repository(repositoryName="team/app", tags=[{"Key": "a", "Value": "b"}])
    conformance.check("ecr", "CreateRepository", created)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.create_repository(repositoryName="team/app")
    assert e.value.response["Error"]["Code"] == "RepositoryAlreadyExistsException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.create_repository(repositoryName="Bad..Name")
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    d = ecr.describe_repositories()
    conformance.check("ecr", "DescribeRepositories", d)
    assert [r["repositoryName"] for r in d["repositories"]] == ["team/app"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.describe_repositories(repositoryNames=["ghost"])
    assert e.value.response["Error"]["Code"] == "RepositoryNotFoundException"
    r = ecr.delete_repository(repositoryName="team/app")
    conformance.check("ecr", "DeleteRepository", r)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.delete_repository(repositoryName="team/app")
    assert e.value.response["Error"]["Code"] == "RepositoryNotFoundException"


def upload_blob(server, repo, data, auth):
    """One monolithic blob upload over the raw registry API; returns the digest."""
    import hashlib

    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = send("POST", f"{server.endpoint}/v2/{repo}/blobs/uploads/?digest={d}", data, auth)
    assert r.status == 201, r.text
    return d


def push_raw(server, repo, tag, layer=b"layer-bytes"):
    """Pushes a one-layer OCI image over the raw registry API; returns (manifest bytes, digest)."""
    h = registry_auth(server)
    blobs = {data: upload_blob(server, repo, data, h) for data in (layer, b"{}")}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[b"{}"], "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[layer], "size": len(layer)}],
    }).encode()
    r = send("PUT", f"{server.endpoint}/v2/{repo}/manifests/{tag}", manifest,
             dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    assert r.status == 201, r.text
    return manifest, r.headers["docker-content-digest"]


def test_image_api(server):
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="imgs", tags=[{"Key": "team", "Value": "a"}])
    m1, d1 = push_raw(server, "imgs", "v1", b"one")
    _, d2 = push_raw(server, "imgs", "v2", b"two")
    ecr.put_image(repositoryName="imgs", imageManifest=m1.decode(), imageTag="stable")
    listed = ecr.list_images(repositoryName="imgs")
    conformance.check("ecr", "ListImages", listed)
    assert sorted((i["imageDigest"], i.get("imageTag")) for i in listed["imageIds"]) == sorted(
        [(d1, "v1"), (d1, "stable"), (d2, "v2")])
    paged = [i for p in ecr.get_paginator("list_images").paginate(repositoryName="imgs", PaginationConfig={"PageSize": 1})
             for i in p["imageIds"]]
    assert len(paged) == 3
    got = ecr.batch_get_image(repositoryName="imgs", imageIds=[{"imageTag": "v1"}, {"imageTag": "nope"}])
    conformance.check("ecr", "BatchGetImage", got)
    assert got["images"][0]["imageManifest"].encode() == m1 and got["images"][0]["imageId"]["imageDigest"] == d1
    assert got["failures"][0]["failureCode"] == "ImageNotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.put_image(repositoryName="imgs", imageManifest=m1.decode(), imageTag="stable")
    assert e.value.response["Error"]["Code"] == "ImageAlreadyExistsException"
    r = ecr.put_image_tag_mutability(repositoryName="imgs", imageTagMutability="IMMUTABLE")
    conformance.check("ecr", "PutImageTagMutability", r)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.put_image(repositoryName="imgs", imageManifest=m1.decode(), imageTag="v2")
    assert e.value.response["Error"]["Code"] == "ImageTagAlreadyExistsException"
    ecr.put_image_tag_mutability(repositoryName="imgs", imageTagMutability="MUTABLE")
    import hashlib

    layer_digest = "sha256:" + hashlib.sha256(b"one").hexdigest()
    missing = "sha256:" + "0" * 64
    layers = ecr.batch_check_layer_availability(repositoryName="imgs", layerDigests=[layer_digest, missing])
    conformance.check("ecr", "BatchCheckLayerAvailability", layers)
    assert layers["layers"] == [{"layerDigest": layer_digest, "layerAvailability": "AVAILABLE", "layerSize": 3}]
    assert [(f["layerDigest"], f["failureCode"]) for f in layers["failures"]] == [(missing, "MissingLayerDigest")]
    # Deleting one of two tags keeps the image; deleting the last tag deletes it.
    r = ecr.batch_delete_image(repositoryName="imgs", imageIds=[{"imageTag": "stable"}])
    conformance.check("ecr", "BatchDeleteImage", r)
    assert {i["imageDigest"] for i in ecr.list_images(repositoryName="imgs")["imageIds"]} == {d1, d2}
    ecr.batch_delete_image(repositoryName="imgs", imageIds=[{"imageTag": "v1"}])
    assert {i["imageDigest"] for i in ecr.list_images(repositoryName="imgs")["imageIds"]} == {d2}
    arn = ecr.describe_repositories(repositoryNames=["imgs"])["repositories"][0]["repositoryArn"]
    assert ecr.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "team", "Value": "a"}]
    ecr.tag_resource(resourceArn=arn, tags=[{"Key": "env", "Value": "ci"}])
    ecr.untag_resource(resourceArn=arn, tagKeys=["team"])
    assert ecr.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "env", "Value": "ci"}]
    conformance.check("ecr", "DescribeRegistry", ecr.describe_registry())
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.delete_repository(repositoryName="imgs")
    assert e.value.response["Error"]["Code"] == "RepositoryNotEmptyException"
    ecr.delete_repository(repositoryName="imgs", force=True)
    assert ecr.describe_repositories()["repositories"] == []


def test_skopeo_copies_both_ways(server, docker_env, tmp_path):
    env, created = docker_env
    ecr = server.client("ecr")
    for repo in ("sk/a", "sk/b"):
        ecr.create_repository(repositoryName=repo)
    password = server.cli("ecr", "get-login-password").stdout.strip()
    host = f"localhost:{server.port}"
    tag = f"skopeo-src-{uuid.uuid4().hex[:8]}:1"
    build_image(tag, "skopeo", created)

    def skopeo(*args):
        r = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    creds = f"AWS:{password}"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"docker-daemon:{tag}", f"docker://{host}/sk/a:1")
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{host}/sk/a:1", f"oci:{tmp_path}/out:x")
    # Back in as an OCI image into another repository (its blobs already exist in the registry).
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{tmp_path}/out:x", f"docker://{host}/sk/b:oci")
    details = ecr.describe_images(repositoryName="sk/b")["imageDetails"]
    assert details[0]["imageManifestMediaType"] == "application/vnd.oci.image.manifest.v1+json"
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{host}/sk/b:oci"))
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")
    with pytest.raises(AssertionError):
        skopeo("inspect", "--tls-verify=false", "--creds", "AWS:wrong", f"docker://{host}/sk/b:oci")


def eventually(check, seconds=10):
    import time

    deadline = time.monotonic() + seconds
    while True:
        if check():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_garbage_collection_frees_only_unreferenced_blobs(data_dir):
    import hashlib

    server = Server(data_dir, ["--registry-gc-interval", "1", "--registry-gc-grace", "0"]).start()
    try:
        ecr = server.client("ecr")
        ecr.create_repository(repositoryName="gc")
        push_raw(server, "gc", "a", b"layer-a")
        push_raw(server, "gc", "b", b"layer-b")
        token = base64.b64decode(ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
        h = basic(*token.split(":"))

        def present(data):
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            return send("HEAD", f"{server.endpoint}/v2/gc/blobs/{d}", headers=h).status == 200

        assert present(b"layer-a") and present(b"layer-b") and present(b"{}")
        ecr.batch_delete_image(repositoryName="gc", imageIds=[{"imageTag": "a"}])
        eventually(lambda: not present(b"layer-a"))
        assert present(b"layer-b") and present(b"{}"), "blobs still referenced by image b stay"
        ecr.delete_repository(repositoryName="gc", force=True)
        ecr.create_repository(repositoryName="gc")
        eventually(lambda: not present(b"layer-b") and not present(b"{}"))
    finally:
        server.stop()


def test_large_blob_streams_with_bounded_memory(server):
    """A 256 MiB blob pushed with a streamed PATCH and pulled back: server RSS stays bounded."""
    import hashlib
    import http.client
    import re
    import threading

    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="big")
    token = base64.b64decode(ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
    h = basic(*token.split(":"))
    chunk = os.urandom(1 << 20)
    total = 256
    digest = hashlib.sha256()
    for _ in range(total):
        digest.update(chunk)
    digest = "sha256:" + digest.hexdigest()
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            with open(f"/proc/{server.proc.pid}/status") as f:
                peak[0] = max(peak[0], int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)))
            stop.wait(0.05)

    t = threading.Thread(target=sample)
    t.start()
    try:
        r = send("POST", f"{server.endpoint}/v2/big/blobs/uploads/", b"", h)
        loc = r.headers["location"]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("PATCH", loc, body=(chunk for _ in range(total)), headers=dict(h, **{"Content-Type": "application/octet-stream"}),
                     encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202, resp.status
        assert send("PUT", f"{server.endpoint}{loc}?digest={digest}", b"", h).status == 201
        conn.request("GET", f"/v2/big/blobs/{digest}", headers=h)
        resp = conn.getresponse()
        pulled = hashlib.sha256()
        n = 0
        while True:
            data = resp.read(1 << 20)
            if not data:
                break
            pulled.update(data)
            n += len(data)
        assert n == total << 20 and "sha256:" + pulled.hexdigest() == digest
    finally:
        stop.set()
        t.join()
    assert peak[0] < 64 * 1024, f"peak RSS {peak[0]} KiB while moving 256 MiB"


def registry_auth(server):
    ecr = server.client("ecr")
    token = base64.b64decode(ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
    return basic(*token.split(":"))


def test_mount_pagination_sessions_index_and_limits(server):
    import hashlib

    ecr = server.client("ecr")
    for r in ("src", "dst"):
        ecr.create_repository(repositoryName=r)
    h = registry_auth(server)
    e = server.endpoint
    manifest, digest = push_raw(server, "src", "v1", b"shared-layer")
    layer = "sha256:" + hashlib.sha256(b"shared-layer").hexdigest()
    # Cross-repository mount: the blob exists, so no upload is needed.
    r = send("POST", f"{e}/v2/dst/blobs/uploads/?mount={layer}&from=src", b"", h)
    assert r.status == 201 and r.headers["location"] == f"/v2/dst/blobs/{layer}"
    # Mounting an unknown blob opens a normal upload session instead.
    r = send("POST", f"{e}/v2/dst/blobs/uploads/?mount=sha256:{'1' * 64}&from=src", b"", h)
    assert r.status == 202 and "/blobs/uploads/" in r.headers["location"]
    # An upload session belongs to its repository.
    session = r.headers["location"].rsplit("/", 1)[1]
    r = send("PATCH", f"{e}/v2/src/blobs/uploads/{session}", b"x", dict(h, **{"Content-Type": "application/octet-stream"}))
    assert r.status == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    # Tag pagination with n/last and a Link header.
    for t in ("a", "b", "c", "d"):
        assert send("PUT", f"{e}/v2/src/manifests/{t}", manifest,
                    dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})).status == 201
    r = send("GET", f"{e}/v2/src/tags/list?n=2", headers=h)
    assert r.json() == {"name": "src", "tags": ["a", "b"]} and 'rel="next"' in r.headers["link"]
    r = send("GET", f"{e}/v2/src/tags/list?n=2&last=b", headers=h)
    assert r.json()["tags"] == ["c", "d"]
    r = send("GET", f"{e}/v2/src/tags/list?n=2&last=d", headers=h)
    assert r.json()["tags"] == ["v1"] and "link" not in r.headers
    # A multi-platform index over two image manifests, pulled by tag and its children by digest.
    _, arm = push_raw(server, "src", "arm", b"arm-layer")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": 10,
         "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
    r = send("PUT", f"{e}/v2/src/manifests/multi", index, dict(h, **{"Content-Type": "application/vnd.oci.image.index.v1+json"}))
    assert r.status == 201, r.text
    sizes = {d["imageDigest"]: d["imageSizeInBytes"] for d in ecr.describe_images(repositoryName="src")["imageDetails"]}
    assert sizes[r.headers["docker-content-digest"]] == max(len(b"shared-layer"), len(b"arm-layer")), "a list reports its largest image"
    r = send("GET", f"{e}/v2/src/manifests/multi", headers=dict(h, Accept="application/vnd.oci.image.index.v1+json"))
    assert r.status == 200 and r.body == index
    assert r.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    # A client that does not accept indexes does not get one.
    r = send("GET", f"{e}/v2/src/manifests/multi", headers=dict(h, Accept="application/vnd.docker.distribution.manifest.v2+json"))
    assert r.status == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # An index naming a manifest the repository does not have is refused.
    bad = index.replace(arm.encode(), ("sha256:" + "2" * 64).encode())
    r = send("PUT", f"{e}/v2/src/manifests/bad", bad, dict(h, **{"Content-Type": "application/vnd.oci.image.index.v1+json"}))
    assert r.status == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # Limits: oversize manifests, schema 1, and a digest reference that does not match the body.
    r = send("PUT", f"{e}/v2/src/manifests/huge", b" " * (4 * 1024 * 1024 + 1), dict(h, **{"Content-Type": "application/json"}))
    assert r.status == 413
    r = send("PUT", f"{e}/v2/src/manifests/old", json.dumps({"schemaVersion": 1}).encode(), h)
    assert r.status == 400 and r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    r = send("PUT", f"{e}/v2/src/manifests/sha256:{'3' * 64}", manifest,
             dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    assert r.status == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    tags = send("GET", f"{e}/v2/src/tags/list", headers=h).json()["tags"]
    assert "bad" not in tags and "huge" not in tags and "old" not in tags
    # Deleting by digest removes every tag on it.
    assert send("DELETE", f"{e}/v2/src/manifests/{digest}", headers=h).status == 202
    assert send("GET", f"{e}/v2/src/manifests/a", headers=h).status == 404


def test_layer_upload_api(server):
    import hashlib

    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="parts")
    data = os.urandom(3000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    up = ecr.initiate_layer_upload(repositoryName="parts")
    conformance.check("ecr", "InitiateLayerUpload", up)
    uid = up["uploadId"]
    r = ecr.upload_layer_part(repositoryName="parts", uploadId=uid, partFirstByte=0, partLastByte=999, layerPartBlob=data[:1000])
    conformance.check("ecr", "UploadLayerPart", r)
    assert r["lastByteReceived"] == 999
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.upload_layer_part(repositoryName="parts", uploadId=uid, partFirstByte=1500, partLastByte=2999, layerPartBlob=data[1500:])
    assert e.value.response["Error"]["Code"] == "InvalidLayerPartException"
    ecr.upload_layer_part(repositoryName="parts", uploadId=uid, partFirstByte=1000, partLastByte=2999, layerPartBlob=data[1000:])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.complete_layer_upload(repositoryName="parts", uploadId=uid, layerDigests=["sha256:" + "4" * 64])
    assert e.value.response["Error"]["Code"] == "InvalidLayerException"
    # A failed completion discards the session; nothing became visible.
    layers = ecr.batch_check_layer_availability(repositoryName="parts", layerDigests=[digest])
    assert layers["failures"][0]["failureCode"] == "MissingLayerDigest"
    uid = ecr.initiate_layer_upload(repositoryName="parts")["uploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.complete_layer_upload(repositoryName="parts", uploadId=uid, layerDigests=[digest])
    assert e.value.response["Error"]["Code"] == "EmptyUploadException"
    ecr.upload_layer_part(repositoryName="parts", uploadId=uid, partFirstByte=0, partLastByte=2999, layerPartBlob=data)
    done = ecr.complete_layer_upload(repositoryName="parts", uploadId=uid, layerDigests=[digest])
    conformance.check("ecr", "CompleteLayerUpload", done)
    assert done["layerDigest"] == digest
    assert ecr.batch_check_layer_availability(repositoryName="parts", layerDigests=[digest])["layers"][0]["layerSize"] == 3000
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.upload_layer_part(repositoryName="parts", uploadId="nope", partFirstByte=0, partLastByte=0, layerPartBlob=b"x")
    assert e.value.response["Error"]["Code"] == "UploadNotFoundException"
    uid = ecr.initiate_layer_upload(repositoryName="parts")["uploadId"]
    ecr.upload_layer_part(repositoryName="parts", uploadId=uid, partFirstByte=0, partLastByte=2999, layerPartBlob=data)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.complete_layer_upload(repositoryName="parts", uploadId=uid, layerDigests=[digest])
    assert e.value.response["Error"]["Code"] == "LayerAlreadyExistsException"
    # The uploaded layer can back an image pushed through PutImage.
    config = b'{"architecture":"amd64","os":"linux"}'
    cd = "sha256:" + hashlib.sha256(config).hexdigest()
    uid = ecr.initiate_layer_upload(repositoryName="parts")["uploadId"]
    ecr.upload_layer_part(repositoryName="parts", uploadId=uid, partFirstByte=0, partLastByte=len(config) - 1, layerPartBlob=config)
    ecr.complete_layer_upload(repositoryName="parts", uploadId=uid, layerDigests=[cd])
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": 3000}]})
    put = ecr.put_image(repositoryName="parts", imageManifest=manifest, imageTag="api")
    conformance.check("ecr", "PutImage", put)
    assert ecr.describe_images(repositoryName="parts")["imageDetails"][0]["imageSizeInBytes"] == 3000
    missing = manifest.replace(digest, "sha256:" + "5" * 64)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.put_image(repositoryName="parts", imageManifest=missing, imageTag="broken")
    assert e.value.response["Error"]["Code"] == "LayersNotFoundException"


def test_repository_policy(server):
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="pol")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.get_repository_policy(repositoryName="pol")
    assert e.value.response["Error"]["Code"] == "RepositoryPolicyNotFoundException"
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Sid": "pull", "Effect": "Allow",
                         "Principal": {"AWS": "arn:aws:iam::000000000000:root"}, "Action": ["ecr:BatchGetImage"]}]})
    r = ecr.set_repository_policy(repositoryName="pol", policyText=policy)
    conformance.check("ecr", "SetRepositoryPolicy", r)
    got = ecr.get_repository_policy(repositoryName="pol")
    conformance.check("ecr", "GetRepositoryPolicy", got)
    assert got["policyText"] == policy
    for bad in ["not json", json.dumps({"Version": "2012-10-17"}), json.dumps({"Statement": []})]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ecr.set_repository_policy(repositoryName="pol", policyText=bad)
        assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    assert ecr.get_repository_policy(repositoryName="pol")["policyText"] == policy, "a refused policy changes nothing"
    r = ecr.delete_repository_policy(repositoryName="pol")
    conformance.check("ecr", "DeleteRepositoryPolicy", r)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.delete_repository_policy(repositoryName="pol")
    assert e.value.response["Error"]["Code"] == "RepositoryPolicyNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.set_repository_policy(repositoryName="ghost", policyText=policy)
    assert e.value.response["Error"]["Code"] == "RepositoryNotFoundException"


def test_chunked_upload_resumes_after_a_dropped_connection(server):
    """A PATCH whose connection dies mid-body keeps what arrived; the client asks where the
    upload stands (GET on the session) and continues from there."""
    import hashlib
    import socket
    import time

    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="resume")
    h = registry_auth(server)
    data = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = send("POST", f"{server.endpoint}/v2/resume/blobs/uploads/", b"", h).headers["location"]
    sent = 1024 * 1024 + 12345
    s = socket.create_connection(("127.0.0.1", server.port))
    head = (f"PATCH {loc} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {h['Authorization']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    s.sendall(head + data[:sent])
    time.sleep(0.5)
    s.close()

    def status():
        r = send("GET", f"{server.endpoint}{loc}", headers=h)
        assert r.status == 204, (r.status, r.text)
        return int(r.headers["range"].split("-")[1]) + 1

    eventually(lambda: status() == sent)
    offset = status()
    r = send("PATCH", f"{server.endpoint}{loc}", data[offset:],
             dict(h, **{"Content-Range": f"{offset}-{len(data) - 1}", "Content-Type": "application/octet-stream"}))
    assert r.status == 202 and r.headers["range"] == f"0-{len(data) - 1}"
    r = send("PUT", f"{server.endpoint}{loc}?digest={digest}", b"", h)
    assert r.status == 201, r.text
    r = send("GET", f"{server.endpoint}/v2/resume/blobs/{digest}", headers=h)
    assert r.body == data


def test_describe_images_filters_ids_and_pages(server):
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="desc")
    _, d1 = push_raw(server, "desc", "one", b"l1")
    _, d2 = push_raw(server, "desc", "two", b"l2")
    ecr.batch_delete_image(repositoryName="desc", imageIds=[{"imageTag": "two"}])
    m3, d3 = push_raw(server, "desc", "three", b"l3")
    # Untag 'three' by re-pointing nothing at it: push it again by digest only, then drop the tag.
    h = registry_auth(server)
    assert send("DELETE", f"{server.endpoint}/v2/desc/manifests/three", headers=h).status == 202
    assert send("PUT", f"{server.endpoint}/v2/desc/manifests/{d3}", m3,
                dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})).status == 201
    tagged = ecr.describe_images(repositoryName="desc", filter={"tagStatus": "TAGGED"})
    conformance.check("ecr", "DescribeImages", tagged)
    assert [i["imageDigest"] for i in tagged["imageDetails"]] == [d1]
    untagged = ecr.describe_images(repositoryName="desc", filter={"tagStatus": "UNTAGGED"})["imageDetails"]
    assert [i["imageDigest"] for i in untagged] == [d3] and "imageTags" not in untagged[0]
    by_id = ecr.describe_images(repositoryName="desc", imageIds=[{"imageTag": "one"}])["imageDetails"]
    assert by_id[0]["imageDigest"] == d1 and by_id[0]["imageTags"] == ["one"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.describe_images(repositoryName="desc", imageIds=[{"imageTag": "two"}])
    assert e.value.response["Error"]["Code"] == "ImageNotFoundException"
    pages = list(ecr.get_paginator("describe_images").paginate(repositoryName="desc", PaginationConfig={"PageSize": 1}))
    assert sorted(i["imageDigest"] for p in pages for i in p["imageDetails"]) == sorted([d1, d3])
    assert len(pages) == 2


def test_lifecycle_policy_preview_and_expiry(server):
    import time

    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="life")
    pushed = []
    for i in range(4):
        pushed.append(push_raw(server, "life", f"prod-{i}", f"prod layer {i}".encode())[1])
        time.sleep(0.02)
    _, untagged = push_raw(server, "life", "tmp", b"untagged layer")
    h = registry_auth(server)
    assert send("DELETE", f"{server.endpoint}/v2/life/manifests/tmp", headers=h).status == 202
    assert send("PUT", f"{server.endpoint}/v2/life/manifests/{untagged}", b"", h).status == 400, "empty manifest refused"
    policy = json.dumps({"rules": [
        {"rulePriority": 1, "description": "keep two prod images",
         "selection": {"tagStatus": "tagged", "tagPrefixList": ["prod"], "countType": "imageCountMoreThan", "countNumber": 2},
         "action": {"type": "expire"}}]})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.get_lifecycle_policy(repositoryName="life")
    assert e.value.response["Error"]["Code"] == "LifecyclePolicyNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.get_lifecycle_policy_preview(repositoryName="life")
    assert e.value.response["Error"]["Code"] == "LifecyclePolicyPreviewNotFoundException"
    started = ecr.start_lifecycle_policy_preview(repositoryName="life", lifecyclePolicyText=policy)
    conformance.check("ecr", "StartLifecyclePolicyPreview", started)
    ecr.get_waiter("lifecycle_policy_preview_complete").wait(repositoryName="life", WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    preview = ecr.get_lifecycle_policy_preview(repositoryName="life")
    conformance.check("ecr", "GetLifecyclePolicyPreview", preview)
    assert sorted(r["imageDigest"] for r in preview["previewResults"]) == sorted(pushed[:2])
    assert preview["summary"]["expiringImageTotalCount"] == 2
    assert all(r["appliedRulePriority"] == 1 and r["action"]["type"] == "EXPIRE" for r in preview["previewResults"])
    # A preview expires nothing.
    assert len(ecr.describe_images(repositoryName="life")["imageDetails"]) == 5
    bad = policy.replace('"imageCountMoreThan"', '"sinceImagePushed"')
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.put_lifecycle_policy(repositoryName="life", lifecyclePolicyText=bad)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    assert len(ecr.describe_images(repositoryName="life")["imageDetails"]) == 5, "a refused policy expires nothing"
    put = ecr.put_lifecycle_policy(repositoryName="life", lifecyclePolicyText=policy)
    conformance.check("ecr", "PutLifecyclePolicy", put)
    remaining = {i["imageDigest"] for i in ecr.describe_images(repositoryName="life")["imageDetails"]}
    assert remaining == {pushed[2], pushed[3], untagged}
    got = ecr.get_lifecycle_policy(repositoryName="life")
    conformance.check("ecr", "GetLifecyclePolicy", got)
    assert got["lifecyclePolicyText"] == policy and "lastEvaluatedAt" in got
    deleted = ecr.delete_lifecycle_policy(repositoryName="life")
    conformance.check("ecr", "DeleteLifecyclePolicy", deleted)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecr.delete_lifecycle_policy(repositoryName="life")
    assert e.value.response["Error"]["Code"] == "LifecyclePolicyNotFoundException"


def test_lifecycle_applies_periodically_and_frees_blobs(data_dir):
    import hashlib
    import time

    server = Server(data_dir, ["--registry-gc-interval", "1", "--registry-gc-grace", "0"]).start()
    try:
        ecr = server.client("ecr")
        ecr.create_repository(repositoryName="periodic")
        policy = json.dumps({"rules": [{"rulePriority": 1, "description": "keep the newest image only",
                                        "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1},
                                        "action": {"type": "expire"}}]})
        ecr.put_lifecycle_policy(repositoryName="periodic", lifecyclePolicyText=policy)
        digests = []
        for i in range(3):
            digests.append(push_raw(server, "periodic", f"v{i}", f"periodic layer {i}".encode())[1])
            time.sleep(0.02)
        h = registry_auth(server)

        def layer_present(i):
            d = "sha256:" + hashlib.sha256(f"periodic layer {i}".encode()).hexdigest()
            return send("HEAD", f"{server.endpoint}/v2/periodic/blobs/{d}", headers=h).status == 200

        eventually(lambda: [i["imageDigest"] for i in ecr.describe_images(repositoryName="periodic")["imageDetails"]] == [digests[2]])
        eventually(lambda: not layer_present(0) and not layer_present(1))
        assert layer_present(2)
    finally:
        server.stop()


def test_referrers_and_manifest_list_references(server):
    import hashlib

    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="refs")
    h = registry_auth(server)
    e = server.endpoint
    manifest, subject = push_raw(server, "refs", "app", b"app-layer")
    empty = b"{}"
    empty_digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    sig = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "artifactType": "application/vnd.example.signature",
                      "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
                      "layers": [], "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject,
                                                "size": len(manifest)},
                      "annotations": {"org.example.signed-by": "ci"}}).encode()
    sig_digest = "sha256:" + hashlib.sha256(sig).hexdigest()
    r = send("PUT", f"{e}/v2/refs/manifests/{sig_digest}", sig, dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    assert r.status == 201, r.text
    assert r.headers["oci-subject"] == subject
    r = send("GET", f"{e}/v2/refs/referrers/{subject}", headers=h)
    assert r.status == 200 and r.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    refs = r.json()["manifests"]
    assert refs == [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sig_digest, "size": len(sig),
                     "artifactType": "application/vnd.example.signature", "annotations": {"org.example.signed-by": "ci"}}]
    r = send("GET", f"{e}/v2/refs/referrers/{subject}?artifactType=application/vnd.other", headers=h)
    assert r.json()["manifests"] == [] and r.headers["oci-filters-applied"] == "artifactType"
    # No referrers is an empty index, never 404.
    r = send("GET", f"{e}/v2/refs/referrers/sha256:{'6' * 64}", headers=h)
    assert r.status == 200 and r.json()["manifests"] == []
    # An image a manifest list names cannot be deleted while the list exists.
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": len(manifest),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    assert send("PUT", f"{e}/v2/refs/manifests/list", index, dict(h, **{"Content-Type": "application/vnd.oci.image.index.v1+json"})).status == 201
    r = ecr.batch_delete_image(repositoryName="refs", imageIds=[{"imageDigest": subject}])
    assert r["failures"][0]["failureCode"] == "ImageReferencedByManifestList" and r["imageIds"] == []
    ecr.batch_delete_image(repositoryName="refs", imageIds=[{"imageTag": "list"}])
    r = ecr.batch_delete_image(repositoryName="refs", imageIds=[{"imageDigest": subject}])
    assert r["failures"] == [] and r["imageIds"][0]["imageDigest"] == subject


def test_idle_upload_sessions_expire(data_dir):
    import time

    server = Server(data_dir, ["--registry-upload-ttl", "1"]).start()
    try:
        server.client("ecr").create_repository(repositoryName="ttl")
        h = registry_auth(server)
        loc = send("POST", f"{server.endpoint}/v2/ttl/blobs/uploads/", b"", h).headers["location"]
        hdr = dict(h, **{"Content-Type": "application/octet-stream"})
        assert send("PATCH", f"{server.endpoint}{loc}", b"abc", hdr).status == 202, "data keeps a session alive"
        time.sleep(1.5)
        r = send("PATCH", f"{server.endpoint}{loc}", b"def", hdr)
        assert r.status == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert "expired" in r.json()["errors"][0]["message"]
        assert send("GET", f"{server.endpoint}{loc}", headers=h).status == 404
    finally:
        server.stop()


def test_download_url_and_tag_parameters(server):
    import hashlib

    ecr = server.client("ecr")
    for r in ("dl", "other"):
        ecr.create_repository(repositoryName=r)
    h = registry_auth(server)
    e = server.endpoint
    manifest, digest = push_raw(server, "dl", "v1", b"download-me")
    layer = "sha256:" + hashlib.sha256(b"download-me").hexdigest()
    out = ecr.get_download_url_for_layer(repositoryName="dl", layerDigest=layer)
    conformance.check("ecr", "GetDownloadUrlForLayer", out)
    assert out["layerDigest"] == layer
    # The URL works without registry credentials, for that one blob only.
    r = send("GET", out["downloadUrl"])
    assert r.status == 200 and r.body == b"download-me"
    r = send("GET", out["downloadUrl"].replace("/v2/dl/", "/v2/other/"))
    assert r.status == 403 and r.json()["errors"][0]["code"] == "DENIED"
    r = send("GET", out["downloadUrl"].replace("X-Fleetport-Signature=", "X-Fleetport-Signature=0"))
    assert r.status == 403
    expired = out["downloadUrl"].split("X-Fleetport-Expires=")[0] + "X-Fleetport-Expires=1&X-Fleetport-Signature=x"
    assert send("GET", expired).status == 403
    # Only layers an image of the repository references are handed out.
    for repo, d in (("other", layer), ("dl", "sha256:" + "7" * 64)):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ecr.get_download_url_for_layer(repositoryName=repo, layerDigest=d)
        assert err.value.response["Error"]["Code"] == "LayersNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ecr.get_download_url_for_layer(repositoryName="nope", layerDigest=layer)
    assert err.value.response["Error"]["Code"] == "RepositoryNotFoundException"
    # OCI 1.1: one manifest PUT by digest may set several tags; a bad one sets none.
    ct = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    r = send("PUT", f"{e}/v2/dl/manifests/{digest}?tag=a&tag=b", manifest, dict(h, **ct))
    assert r.status == 201 and r.headers["oci-tag"] in ("a", "b")
    r = send("PUT", f"{e}/v2/dl/manifests/{digest}?tag=c&tag=bad%20tag", manifest, dict(h, **ct))
    assert r.status == 400 and r.json()["errors"][0]["code"] == "TAG_INVALID"
    assert send("GET", f"{e}/v2/dl/tags/list", headers=h).json()["tags"] == ["a", "b", "v1"]


def test_docker_pulls_the_requested_platform_of_a_manifest_list(server, docker_env):
    """A Docker manifest list with an amd64 image (docker-built) and an arm64 one (assembled here):
    `docker pull` picks the host's platform, `--platform linux/arm64` the other."""
    import hashlib

    env, created = docker_env
    ecr = server.client("ecr")
    ecr.create_repository(repositoryName="multi")
    host, _ = login(server, env)
    amd_id = build_image("multi-amd:1", "amd64", created)
    docker("tag", "multi-amd:1", f"{host}/multi:amd64", env=env)
    created.append(f"{host}/multi:amd64")
    docker("push", f"{host}/multi:amd64", env=env)
    h = registry_auth(server)
    e = server.endpoint
    v2 = "application/vnd.docker.distribution.manifest.v2+json"
    r = send("GET", f"{e}/v2/multi/manifests/amd64", headers=dict(h, Accept=v2))
    amd_manifest = r.body

    arm_manifest, arm_digest = push_foreign_image(server, "multi", "arm64")
    list_type = "application/vnd.docker.distribution.manifest.list.v2+json"
    index = json.dumps({"schemaVersion": 2, "mediaType": list_type, "manifests": [
        {"mediaType": v2, "digest": "sha256:" + hashlib.sha256(amd_manifest).hexdigest(), "size": len(amd_manifest),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": v2, "digest": arm_digest, "size": len(arm_manifest),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}).encode()
    r = send("PUT", f"{e}/v2/multi/manifests/latest", index, dict(h, **{"Content-Type": list_type}))
    assert r.status == 201, r.text

    ref = f"{host}/multi:latest"
    created.append(ref)
    docker("pull", "--platform", "linux/arm64", ref, env=env)
    assert docker("image", "inspect", ref, "--format", "{{.Os}}/{{.Architecture}}", env=env).stdout.strip() == "linux/arm64"
    docker("rmi", ref, env=env)
    docker("pull", ref, env=env)
    assert docker("image", "inspect", ref, "--format", "{{.Id}}", env=env).stdout.strip() == amd_id


def push_foreign_image(server, repo, tag, arch="arm64"):
    """Pushes a one-layer Docker v2 image whose config says linux/<arch> over the raw registry API;
    returns (manifest bytes, digest)."""
    import gzip
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"{arch} image\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer_tar = buf.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/hello.txt"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]}}).encode()
    h = registry_auth(server)
    digests = {blob: upload_blob(server, repo, blob, h) for blob in (layer, config)}
    v2 = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": v2,
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "digest": digests[config], "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                       "digest": digests[layer], "size": len(layer)}]}).encode()
    r = send("PUT", f"{server.endpoint}/v2/{repo}/manifests/{tag}", manifest, dict(h, **{"Content-Type": v2}))
    assert r.status == 201, r.text
    return manifest, r.headers["docker-content-digest"]
