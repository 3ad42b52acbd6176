"""`fleetport up --store postgres://…`: the control plane's state in a real PostgreSQL
(`scripts/postgres` starts one; `scripts/test` passes it in FLEETPORT_TEST_POSTGRES), kept across
restarts, and replicas: several `fleetport up` on one database sharing state, one leading."""
import glob
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest

from conftest import BIN, Server, wait_for
from test_elb import free_port

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


def leader(server):
    try:
        with urllib.request.urlopen(server.endpoint + "/_fleetport/health", timeout=2) as r:
            return json.loads(r.read())["leader"]
    except OSError:
        return None


def test_two_replicas_share_state_one_leads_and_the_other_takes_over(data_dir, database):
    """Two `fleetport up` on one database: each sees what the other wrote (clusters, IAM keys,
    load balancers, in another region too), exactly one leads, both serve a load balancer's
    port, and when the leader is killed -9 the other takes the lease and keeps serving."""
    _, url = database
    a_dir, b_dir = os.path.join(data_dir, "a"), os.path.join(data_dir, "b")
    # A short agent timeout: an agent that stopped reaching the control plane shows in seconds.
    flags = ["--store", url, "--no-managed-capacity", "--agent-timeout", "4"]
    a = Server(a_dir, flags).start()
    # A replica with its own secrets key could not open what the others sealed: refused.
    alone = subprocess.run([BIN, "up", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(data_dir, "alone"),
                            "--store", url], capture_output=True, text=True, timeout=30)
    assert alone.returncode != 0 and "must all have the same secrets.key" in alone.stderr, alone.stderr
    b = Server(with_keys_of(a_dir, b_dir), flags).start()
    agent = None
    try:
        wait_for(lambda: sorted([leader(a), leader(b)]) == [False, True], 15)
        first, second = (a, b) if leader(a) else (b, a)
        print(f"leader: {first.endpoint}; follower: {second.endpoint}")
        first.client("ecs").create_cluster(clusterName="shared")
        second.client("ecs", region="ap-south-1").create_cluster(clusterName="from-the-follower")
        wait_for(lambda: second.client("ecs").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:us-east-1:000000000000:cluster/shared"], 5)
        wait_for(lambda: first.client("ecs", region="ap-south-1").list_clusters()["clusterArns"] == [
            "arn:aws:ecs:ap-south-1:000000000000:cluster/from-the-follower"], 5)
        iam = first.client("iam")
        iam.create_user(UserName="everywhere")
        iam.attach_user_policy(UserName="everywhere", PolicyArn="arn:aws:iam::aws:policy/AmazonECS_FullAccess")
        key = iam.create_access_key(UserName="everywhere")["AccessKey"]
        wait_for(lambda: quietly(lambda: second.client("ecs", key=key["AccessKeyId"], secret=key["SecretAccessKey"])
                                 .list_clusters()["clusterArns"] != []), 5)
        port = free_port()
        elb = second.client("elbv2", region="eu-west-2")
        lb = elb.create_load_balancer(Name="both", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port, DefaultActions=[
            {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "200", "MessageBody": "replicated"}}])
        # Both data planes serve the port; many connections reach both processes.
        wait_for(lambda: all(answer(port) == "replicated" for _ in range(20)), 5)
        print("both replicas see each other's writes and serve the load balancer")
        # An agent given every replica (and a dead address first) registers, and keeps polling
        # through the survivor once the leader is gone.
        endpoints = f"http://127.0.0.1:{free_port()},{first.endpoint},{second.endpoint}"
        agent = subprocess.Popen([BIN, "agent", "--cluster", "shared", "--endpoint", endpoints,
                                  "--state-dir", os.path.join(data_dir, "agent")],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                                          AWS_DEFAULT_REGION="us-east-1"))
        line = agent.stdout.readline()
        assert "container instance" in line, line
        instance = line.strip().rsplit(" ", 1)[1]

        def connected(server):
            return quietly(lambda: server.client("ecs").describe_container_instances(
                cluster="shared", containerInstances=[instance])["containerInstances"][0]["agentConnected"])

        wait_for(lambda: connected(second), 5)
        first.stop(signal.SIGKILL)
        started = time.monotonic()
        wait_for(lambda: leader(second) is True, 20)
        took = time.monotonic() - started
        print(f"the follower took over as leader {took:.1f} s after the leader was killed")
        # The lease lasts 4 s and others try every second.
        assert took < 7
        assert all(answer(port) == "replicated" for _ in range(20))
        assert second.client("ecs").describe_clusters(clusters=["shared"])["clusters"][0]["status"] == "ACTIVE"
        # Past the agent timeout, the agent is still connected: it polls the survivor.
        time.sleep(6)
        assert connected(second) is True
        print("the agent failed over to the surviving replica")
    finally:
        if agent:
            agent.kill()
            agent.wait()
        a.stop()
        b.stop()


def with_keys_of(first_dir, data_dir):
    """The deployment step for another replica: the same keys as the first."""
    os.makedirs(data_dir, mode=0o700)
    for key in ("secrets.key", "registry-token.key", "elb-cookie.key"):
        shutil.copy2(os.path.join(first_dir, key), os.path.join(data_dir, key))
    return data_dir


def quietly(check):
    """The check's result, or False while it still fails (a key the replica does not know yet)."""
    try:
        return check()
    except Exception:  # noqa: BLE001
        return False


def answer(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.read().decode()
    except OSError as e:
        return str(e)


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


def test_a_postgresql_restart_loses_no_acknowledged_write(data_dir, database):
    """PostgreSQL restarts under a stream of CreateCluster calls: while it is away the API answers
    with server errors the SDKs retry (5xx), and every cluster that was acknowledged is there
    afterwards, on this replica and after a restart of Fleetport."""
    import botocore.config
    import botocore.exceptions
    import boto3
    import threading
    _, url = database
    s = Server(data_dir, ["--store", url, "--no-managed-capacity"]).start()
    pg_dir = os.environ.get("FLEETPORT_TEST_PG_DIR", "/tmp/fleetport-test-pg")
    pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]
    acknowledged, errors = [], []
    ecs = boto3.client("ecs", endpoint_url=s.endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test",
                       config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            name = f"c{i:04d}"
            try:
                ecs.create_cluster(clusterName=name)
                acknowledged.append(name)
            except botocore.exceptions.ClientError as e:
                errors.append((e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]))
            i += 1

    try:
        t = threading.Thread(target=writer)
        t.start()
        wait_for(lambda: len(acknowledged) >= 20, 20)
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        before = len(acknowledged)
        # The server's output goes to its log: a pipe it inherited would hold this call open.
        subprocess.run([*as_owner, pg_ctl, "-D", pg_dir, "-l", os.path.join(pg_dir, "server.log"), "restart",
                        "-m", "fast", "-w"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        wait_for(lambda: len(acknowledged) >= before + 20, 30)
        stop.set()
        t.join(timeout=60)
        print(f"{len(acknowledged)} clusters acknowledged across the restart; errors after retries: {errors}")
        # What the SDK gave up on were retryable server errors, never a client error.
        assert all(status >= 500 for status, _ in errors), errors
        listed = set()
        for page in ecs.get_paginator("list_clusters").paginate():
            listed.update(a.rsplit("/", 1)[1] for a in page["clusterArns"])
        assert set(acknowledged) <= listed
    finally:
        stop.set()
        s.stop()
    s = Server(data_dir, ["--store", url, "--no-managed-capacity"]).start()
    try:
        listed = set()
        for page in s.client("ecs").get_paginator("list_clusters").paginate():
            listed.update(a.rsplit("/", 1)[1] for a in page["clusterArns"])
        assert set(acknowledged) <= listed
    finally:
        s.stop()


class RetryingLoad:
    """GETs in a loop through a load balancer, as a browser sends them: a request whose
    connection was reset or closed before any answer (the connection was on a process that
    was killed, or reached its listening socket as it closed) is sent again, up to three times;
    any other failure, and any status but 200, counts."""

    def __init__(self, port):
        import threading
        self.port, self.answers, self.failures, self.resent = port, {}, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def once(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            return r.status, r.read().decode().strip()
        finally:
            conn.close()

    def run(self):
        import http.client
        while not self.stop.is_set():
            try:
                for attempt in range(4):
                    try:
                        status, body = self.once()
                        break
                    except (ConnectionResetError, ConnectionRefusedError, http.client.RemoteDisconnected):
                        if attempt == 3:
                            raise
                        self.resent += 1
                        time.sleep(0.01)
                if status == 200:
                    self.answers[body] = self.answers.get(body, 0) + 1
                else:
                    self.failures.append((status, body))
            except Exception as e:  # noqa: BLE001 — every other failure counts
                self.failures.append(repr(e))

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        return self.answers, self.failures


def test_killing_the_leader_mid_deployment_the_next_finishes_it_behind_a_live_load_balancer(data_dir, database,
                                                                                          tmp_path):
    """Two replicas, an agent given both, a service of two tasks behind an ALB. During a rolling
    deployment the leader is killed -9: the other replica takes the lease, its scheduler finishes
    the deployment, and the load balancer (served by both replicas) answers every request
    throughout, v1 then v2; no task is started beyond what the deployment needs."""
    from test_ecs_services import alb, healthy_targets, service, stable_now, web
    from test_ecs_tasks import Agent, push_image, remove_containers
    _, url = database
    a_dir, b_dir = os.path.join(data_dir, "a"), os.path.join(data_dir, "b")
    flags = ["--store", url, "--no-managed-capacity", "--agent-timeout", "6"]
    a = Server(a_dir, flags).start()
    b = Server(with_keys_of(a_dir, b_dir), flags).start()
    cluster, agent = "roll", None
    try:
        wait_for(lambda: sorted([leader(a), leader(b)]) == [False, True], 15)
        first, second = (a, b) if leader(a) else (b, a)
        ecs = second.client("ecs")
        ecs.create_cluster(clusterName=cluster)
        # The image lives in the survivor's registry: blobs are on each replica's own disk until
        # a shared blob store is configured.
        image = push_image(second, str(tmp_path))
        agent = Agent(second, cluster, str(tmp_path / "agent"), endpoint=f"{first.endpoint},{second.endpoint}")
        ecs.register_task_definition(family="web", containerDefinitions=[web(image, "v1")])
        ecs.register_task_definition(family="web", containerDefinitions=[web(image, "v2")])
        tg, port, _ = alb(second, "roll")
        ecs.create_service(cluster=cluster, serviceName="web", taskDefinition="web:1", desiredCount=2,
                           loadBalancers=[{"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}])
        elb = second.client("elbv2")

        def healthy():
            return len(healthy_targets(elb, tg))

        try:
            wait_for(lambda: stable_now(ecs, cluster, "web") and healthy() == 2, 90, 0.5)
        except AssertionError:
            stopped = ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"][:10]
            reasons = [t.get("stoppedReason") for t in ecs.describe_tasks(cluster=cluster, tasks=stopped)["tasks"]]
            raise AssertionError((reasons, elb.describe_target_health(TargetGroupArn=tg),
                                  a.logs()[-3000:], b.logs()[-3000:], agent.logs()[-3000:]))
        load = RetryingLoad(port)
        wait_for(lambda: load.answers.get("v1", 0) >= 20, 10)
        ecs.update_service(cluster=cluster, service="web", taskDefinition="web:2")
        # The deployment is under way: its first tasks were placed by the leader.
        wait_for(lambda: service(ecs, cluster, "web")["deployments"][0]["pendingCount"]
                 + service(ecs, cluster, "web")["deployments"][0]["runningCount"] > 0, 20, 0.05)
        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        print(f"killed the leader {first.endpoint} with the deployment under way")
        wait_for(lambda: leader(second) is True, 20)
        print(f"{second.endpoint} leads {time.monotonic() - killed:.1f} s later")
        try:
            wait_for(lambda: stable_now(ecs, cluster, "web") and healthy() == 2
                     and service(ecs, cluster, "web")["taskDefinition"].endswith("web:2"), 120, 0.5)
        except AssertionError:
            raise AssertionError((service(ecs, cluster, "web"), second.logs()[-4000:], agent.logs()[-4000:]))
        print(f"the deployment completed under the new leader {time.monotonic() - killed:.1f} s after the kill")
        wait_for(lambda: load.answers.get("v2", 0) >= 20, 20)
        answers, failures = load.finish()
        print(f"through the load balancer: {answers}; resent after a reset: {load.resent}; failed: {failures[:5]}")
        assert failures == [], failures[:5]
        assert answers.get("v1") and answers.get("v2"), answers
        # Exactly the deployment's tasks: two of each revision, the old ones stopped.
        arns = [t for status in ("RUNNING", "STOPPED")
                for t in ecs.list_tasks(cluster=cluster, serviceName="web", desiredStatus=status)["taskArns"]]
        tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
        by_revision = sorted((t["taskDefinitionArn"].rsplit(":", 1)[1], t["lastStatus"]) for t in tasks)
        print(f"the service's tasks: {by_revision}")
        assert [r for r in by_revision if r[0] == "2"] == [("2", "RUNNING")] * 2, by_revision
        assert [r for r in by_revision if r[0] == "1"] == [("1", "STOPPED")] * 2, by_revision
    finally:
        if agent:
            agent.stop(signal.SIGKILL)
        a.stop()
        b.stop()
        remove_containers(cluster)


def test_a_rolling_restart_of_every_replica_under_load_fails_no_call(data_dir, database):
    """Each of two replicas restarted in turn (SIGTERM, started again on its port) while clients
    of each keep creating and listing clusters with the SDK's standard retries: no call fails,
    and every acknowledged cluster is listed by both replicas afterwards."""
    import threading

    import boto3
    import botocore.config
    _, url = database
    a_dir, b_dir = os.path.join(data_dir, "a"), os.path.join(data_dir, "b")
    flags = ["--store", url, "--no-managed-capacity"]
    replicas = [Server(a_dir, flags).start()]
    replicas.append(Server(with_keys_of(a_dir, b_dir), flags).start())
    ports = [r.port for r in replicas]
    acknowledged, failures, listed = [], [], [0]
    stop = threading.Event()

    def client(i):
        ecs = boto3.client("ecs", endpoint_url=f"http://127.0.0.1:{ports[i]}", region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test",
                           config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}))
        n = 0
        while not stop.is_set():
            name = f"r{i}-{n:05d}"
            try:
                ecs.create_cluster(clusterName=name)
                acknowledged.append(name)
                ecs.list_clusters(maxResults=10)
                listed[0] += 1
            except Exception as e:  # noqa: BLE001 — every failure counts
                failures.append((name, repr(e)))
            n += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in (0, 1)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(acknowledged) >= 40, 20)
        for i, (d, port) in enumerate(zip((a_dir, b_dir), ports)):
            before = len(acknowledged)
            assert replicas[i].stop() == 0
            replicas[i] = Server(d, flags).start(port=port)
            wait_for(lambda: leader(replicas[i]) is not None, 20)
            wait_for(lambda: len(acknowledged) >= before + 40, 30)
            print(f"replica {i} restarted on port {port}; {len(acknowledged)} clusters acknowledged so far")
        stop.set()
        for t in threads:
            t.join(60)
        print(f"{len(acknowledged)} CreateCluster and {listed[0]} ListClusters calls answered; failed: {failures[:5]}")
        assert failures == [], failures[:5]
        for r in replicas:
            ecs = r.client("ecs")
            # The other replica's last writes reach this one's copy within about a second.
            wait_for(lambda: set(acknowledged) <= {a.rsplit("/", 1)[1] for page in
                                                   ecs.get_paginator("list_clusters").paginate()
                                                   for a in page["clusterArns"]}, 5)
    finally:
        stop.set()
        for r in replicas:
            r.stop()
