"""`fleetport up --store postgres://…`: the control plane's state in a real PostgreSQL
(`scripts/postgres` starts one; `scripts/test` passes it in FLEETPORT_TEST_POSTGRES), kept across
restarts, and a second control plane on the same database refused until leader election exists."""
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import BIN, Server

PG = os.environ.get("FLEETPORT_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not PG and not os.environ.get("CI"), reason="no FLEETPORT_TEST_POSTGRES")


def psql(sql, db="postgres"):
    params = dict(p.split("=", 1) for p in PG.split())
    psql_bin = shutil.which("psql") or "/usr/bin/psql"
    out = subprocess.run([psql_bin, "-h", params["host"], "-p", params["port"], "-U", params["user"], "-d", db,
                          "-tAc", sql], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def database():
    assert PG, "FLEETPORT_TEST_POSTGRES is not set: run scripts/test, which starts PostgreSQL"
    name = "fp_" + uuid.uuid4().hex[:12]
    psql(f"CREATE DATABASE {name}")
    params = dict(p.split("=", 1) for p in PG.split())
    yield name, f"postgres://{params['user']}@{params['host']}:{params['port']}/{name}"


def test_state_lives_in_postgresql_across_restarts(data_dir, database):
    name, url = database
    s = Server(data_dir, ["--store", url, "--no-managed-capacity"]).start()
    try:
        assert f"PostgreSQL at {url.split('@')[1]}" in s.banner
        s.client("ecs").create_cluster(clusterName="on-pg")
        s.client("ecr").create_repository(repositoryName="on-pg")
        s.client("ecs", key="123456789012", region="eu-west-1").create_cluster(clusterName="other-tenant")
        s.client("iam").create_user(UserName="pg-user")
        # The documents are in PostgreSQL, not in a SQLite file.
        assert psql("SELECT count(*) FROM fleetport_doc WHERE collection = 'ecs.cluster'", name) == "1"
        assert int(psql("SELECT value FROM fleetport_meta WHERE name = 'rev'", name)) > 0
        assert not os.path.exists(os.path.join(data_dir, "state.db"))
        # A second control plane on the same database is refused, with the reason.
        second = subprocess.run([BIN, "up", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(data_dir, "second"),
                                 "--store", url], capture_output=True, text=True, timeout=30)
        assert second.returncode != 0 and "another fleetport up already runs on this database" in second.stderr
    finally:
        assert s.stop() == 0
    s = Server(data_dir, ["--store", url, "--no-managed-capacity"]).start()
    try:
        assert s.client("ecs").list_clusters()["clusterArns"] == ["arn:aws:ecs:us-east-1:000000000000:cluster/on-pg"]
        assert [r["repositoryName"] for r in s.client("ecr").describe_repositories()["repositories"]] == ["on-pg"]
        assert s.client("ecs", key="123456789012", region="eu-west-1").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:eu-west-1:123456789012:cluster/other-tenant"]
        assert [u["UserName"] for u in s.client("iam").list_users()["Users"]] == ["pg-user"]
    finally:
        s.stop()


def test_a_bad_store_setting_is_refused_before_anything_binds(data_dir):
    r = subprocess.run([BIN, "up", "--data-dir", data_dir, "--store", "mysql://root:hunter2@db/x"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "--store must be 'sqlite' or a postgres:// URL" in r.stderr
    assert "hunter2" not in r.stderr
    started = time.monotonic()
    r = subprocess.run([BIN, "up", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--store",
                        "postgres://nobody@127.0.0.1:1/none"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "opening the PostgreSQL store" in r.stderr, r.stderr
    assert time.monotonic() - started < 20
