"""Registry blobs in an S3-compatible object store (`--blob-store s3://…`), shared by replicas:
an image pushed through one replica pulls through the other, large blobs go up in parts and
come back streamed (ranges too), a blob whose digest does not match never reaches the bucket,
and the leader's garbage collection removes unreferenced blobs from the bucket. The object
store is moto's S3 server from the test venv."""
import hashlib
import os
import socket
import subprocess
import sys
import time

import boto3
import pytest

from conftest import BIN, Server, wait_for
from raw import send
from test_postgres_store import database, leader, with_keys_of  # noqa: F401  (fixture)
from test_registry import push_raw, registry_auth

S3_ENV = {"AWS_ACCESS_KEY_ID": "blobs", "AWS_SECRET_ACCESS_KEY": "blobs-secret"}


@pytest.fixture
def s3():
    """moto's S3 server on a free port, with the bucket `fleetport`."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    try:
        wait_for(lambda: quietly(lambda: client.list_buckets() is not None), 20)
        client.create_bucket(Bucket="fleetport")
        yield endpoint, client
    finally:
        server.terminate()
        server.wait(10)


def quietly(check):
    try:
        return check()
    except Exception:  # noqa: BLE001
        return False


def objects(client, prefix):
    """Key (after `prefix`) → size of every object in the bucket under `prefix`."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="fleetport", Prefix=prefix):
        out.update({o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", [])})
    return out


def test_replicas_share_blobs_through_the_object_store(data_dir, database, s3, tmp_path):
    _, url = database
    endpoint, client = s3
    flags = ["--store", url, "--no-managed-capacity", "--blob-store", f"s3://fleetport/reg?endpoint={endpoint}",
             "--registry-gc-interval", "1", "--registry-gc-grace", "5"]
    a_dir, b_dir = os.path.join(data_dir, "a"), os.path.join(data_dir, "b")
    a = Server(a_dir, flags, env=S3_ENV).start()
    b = Server(with_keys_of(a_dir, b_dir), flags, env=S3_ENV).start()
    try:
        assert f"blobs:       s3://fleetport/reg at {endpoint}" in a.banner
        a.client("ecr").create_repository(repositoryName="shared")
        # 20 MiB of incompressible bytes: published in 8 MiB parts.
        layer = os.urandom(20 << 20)
        digest = "sha256:" + hashlib.sha256(layer).hexdigest()
        manifest, manifest_digest = push_raw(a, "shared", "v1", layer)
        prefix = "reg/000000000000/us-east-1/blobs/sha256/"
        stored = objects(client, prefix)
        assert stored.get(digest[7:]) == len(layer), stored
        print(f"in the bucket after a push through one replica: {len(stored)} blobs, the layer {len(layer)} bytes")
        for d in (a_dir, b_dir):
            assert not os.path.exists(os.path.join(d, "registry", "blobs")), "no blob on a replica's disk"
        # The other replica serves the image: manifest, whole layer, a range of it.
        h = registry_auth(b)
        wait_for(lambda: send("GET", f"{b.endpoint}/v2/shared/manifests/v1", headers=dict(
            h, Accept="application/vnd.oci.image.manifest.v1+json")).body == manifest, 5)
        r = send("GET", f"{b.endpoint}/v2/shared/blobs/{digest}", headers=h)
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == digest[7:]
        r = send("GET", f"{b.endpoint}/v2/shared/blobs/{digest}", headers=dict(h, Range="bytes=1000000-1999999"))
        assert r.status == 206 and r.body == layer[1000000:2000000]
        assert {k.lower(): v for k, v in r.headers.items()}["content-range"] == f"bytes 1000000-1999999/{len(layer)}"
        # skopeo, a real registry client, copies the image out of the other replica, checking
        # every digest on the way.
        password = b.cli("ecr", "get-login-password").stdout.strip()
        out = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"AWS:{password}",
                              f"docker://localhost:{b.port}/shared:v1", f"oci:{tmp_path}/copy:v1"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        # A blob whose digest does not match the bytes is refused and never reaches the bucket.
        wrong = "sha256:" + "0" * 64
        r = send("POST", f"{b.endpoint}/v2/shared/blobs/uploads/?digest={wrong}", b"not those bytes", h)
        assert r.status == 400 and b"DIGEST_INVALID" in r.body, r.body
        assert "0" * 64 not in objects(client, prefix)
        # Deleting the image frees its blobs from the bucket (GC runs on the leader, for blobs
        # unreferenced and older than the 5 s grace; with no grace at all it could take a blob
        # uploaded for a manifest not yet pushed).
        a.client("ecr").batch_delete_image(repositoryName="shared", imageIds=[{"imageTag": "v1"}])
        wait_for(lambda: digest[7:] not in objects(client, prefix), 40, 0.5)
        print("the leader's GC removed the unreferenced blobs from the bucket")
        assert sorted([leader(a), leader(b)]) == [False, True]
    finally:
        a.stop()
        b.stop()


def test_a_wrong_blob_store_is_refused_at_start(data_dir, s3):
    endpoint, _ = s3
    r = subprocess.run([BIN, "up", "--data-dir", data_dir, "--blob-store", "ftp://files/x"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "--blob-store must be an s3://bucket" in r.stderr, r.stderr
    started = time.monotonic()
    r = subprocess.run([BIN, "up", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--blob-store",
                        f"s3://no-such-bucket?endpoint={endpoint}"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, **S3_ENV))
    assert r.returncode != 0 and "opening the registry's blob store" in r.stderr, r.stderr
    assert time.monotonic() - started < 30
