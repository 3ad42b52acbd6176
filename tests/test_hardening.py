"""What a code review and an attack probe found (issue 14), each as a black-box regression test
against a real `fleetport up`: slow and idle clients, unsigned bodies, strict HTTP on the ALB,
secrets at rest, input limits, registry scoping and agents."""
import resource
import socket
import time

import pytest

from conftest import Server, wait_for
from raw import ecs_call, send
from test_elb import backends, free_port, get, make_tg  # noqa: F401 (backends is a fixture)


def _low_fd_limit():
    # A soft limit of 200 as on a tight host; the hard limit leaves Fleetport room to raise it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard if hard != resource.RLIM_INFINITY else 65536))


def _own_fd_room(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def make_alb(server, backend, **attrs):
    elb = server.client("elbv2")
    lb = elb.create_load_balancer(Name="guard", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]
    if attrs:
        elb.modify_load_balancer_attributes(
            LoadBalancerArn=lb["LoadBalancerArn"],
            Attributes=[{"Key": k, "Value": v} for k, v in attrs.items()])
    tg = make_tg(elb, "guard-tg", HealthCheckIntervalSeconds=5, HealthyThresholdCount=2)
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": backend.port}])
    port = free_port()
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                                   DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]
    wait_for(lambda: elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"][0]
             ["TargetHealth"]["State"] == "healthy", 30)
    wait_for(lambda: get(port)[0] == 200, 10)
    return elb, lb, listener, port


def half_requests(port, n, head=b"GET / HTTP/1.1\r\nHost: x\r\n"):
    """n connections that each send part of a request head, then nothing more."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(head)
        socks.append(s)
    return socks


def closed_by_server(s, within):
    s.settimeout(within)
    try:
        s.recv(65536)  # EOF, or the error the server wrote before closing
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_slow_and_idle_clients_cannot_exhaust_the_api_or_an_alb_port(data_dir, backends):
    """Item 1: 300 half-sent requests on each of the API and an ALB port, under a soft
    open-file limit of 200, while a normal client keeps getting answers; the server closes them
    after its header timeouts."""
    _own_fd_room(4096)
    s = Server(data_dir, ["--header-read-timeout", "3"], preexec_fn=_low_fd_limit).start()
    socks = []
    try:
        with open(f"/proc/{s.proc.pid}/limits") as f:
            soft = next(int(line.split()[3]) for line in f if line.startswith("Max open files"))
        assert soft > 200, "Fleetport raises its soft open-file limit at start"
        _, _, _, port = make_alb(s, backends("guard"), **{"idle_timeout.timeout_seconds": "3"})
        started = time.monotonic()
        socks = half_requests(s.port, 300) + half_requests(port, 300)
        ecs = s.client("ecs")
        for _ in range(5):
            assert ecs.list_clusters()["clusterArns"] == []
            assert get(port)[0] == 200
        # Every slow client is let go within its timeout (3 s) and a margin.
        assert all(closed_by_server(c, max(0.1, started + 12 - time.monotonic())) for c in socks)
        # An idle keep-alive connection to the API is closed the same way.
        idle = socket.create_connection(("127.0.0.1", s.port))
        r = ecs_call(s.endpoint, "ListClusters", {})
        assert r.status == 200
        t0 = time.monotonic()
        assert closed_by_server(idle, 10) and time.monotonic() - t0 < 8
    finally:
        for c in socks:
            c.close()
        s.stop()


def test_unsigned_bodies_are_refused_before_they_are_read(data_dir):
    """Item 1: 100 connections sending unsigned 4 MiB bodies get their error at once; the
    server's memory is back near idle after they close; a signed body that stalls gets 408."""
    _own_fd_room(1024)
    s = Server(data_dir, ["--header-read-timeout", "2"]).start()
    try:
        ecs_call(s.endpoint, "ListClusters", {})
        idle = rss_anon_kib(s.proc.pid)
        body = b"x" * (4 * 1024 * 1024)
        head = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: AmazonEC2ContainerServiceV20141113.ListClusters\r\n"
                b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        conns = []
        for _ in range(100):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(head)
            conns.append(c)
        answers = []
        for c in conns:
            try:
                c.sendall(body[: 1024 * 1024])
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                answers.append(c.recv(4096))
            except (ConnectionResetError, socket.timeout):
                answers.append(b"")
        assert sum(b"MissingAuthenticationTokenException" in a for a in answers) >= 95, answers[:3]
        peak = rss_anon_kib(s.proc.pid)
        for c in conns:
            c.close()
        time.sleep(0.5)
        after = rss_anon_kib(s.proc.pid)
        assert peak - idle < 64 * 1024 and after - idle < 32 * 1024, (idle, peak, after)
        # A signed request whose body stops arriving is answered 408 after the pause allowed.
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        full = b'{"clusterName":"' + b"a" * 1000 + b'"}'
        req = AWSRequest(method="POST", url=s.endpoint + "/", data=full, headers={
            "X-Amz-Target": "AmazonEC2ContainerServiceV20141113.CreateCluster",
            "Content-Type": "application/x-amz-json-1.1"})
        SigV4Auth(Credentials("test", "test"), "ecs", "us-east-1").add_auth(req)
        p = req.prepare()
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        head = "".join(f"{k}: {v}\r\n" for k, v in p.headers.items())
        c.sendall(f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n{head}\r\n".encode() + full[:100])
        t0 = time.monotonic()
        reply = c.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and b"RequestTimeoutException" in reply, reply
        assert 1.5 < time.monotonic() - t0 < 6
        c.close()
    finally:
        s.stop()


def raw_http(port, data, wait=5):
    """Sends raw bytes and returns everything the server answers before closing (or `wait`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and b"content-length: 0" in out.lower():
                    break
        except socket.timeout:
            pass
        return out


def status_of(reply):
    return int(reply.split(b" ", 2)[1]) if reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else None


def test_the_alb_speaks_http_strictly(server, backends):
    """Item 3: ambiguous hosts, missing hosts and broken chunked framing get 400 (an ELB error,
    not a target error); only WebSocket upgrades are passed on; redirect placeholders come only
    from a valid host; sticky cookies cannot be forged."""
    import hashlib
    import base64
    import http.client
    import json
    from test_elb import scrape, sticky_get

    a, b = backends("a"), backends("b")
    elb, lb, listener, port = make_alb(server, a)
    lb_dns = lb["DNSName"]
    elb.create_rule(ListenerArn=listener["ListenerArn"], Priority=5,
                    Conditions=[{"Field": "host-header", "Values": ["admin.example"]}],
                    Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "403"}}])
    elb.create_rule(ListenerArn=listener["ListenerArn"], Priority=6,
                    Conditions=[{"Field": "path-pattern", "Values": ["/go"]}],
                    Actions=[{"Type": "redirect", "RedirectConfig": {"Host": "#{host}", "Path": "/new",
                                                                       "StatusCode": "HTTP_302"}}])
    time.sleep(1)
    # Two Host headers: the rule for admin.example would see one while the target sees both.
    r = raw_http(port, b"GET / HTTP/1.1\r\nHost: www.example\r\nHost: admin.example\r\n\r\n")
    assert status_of(r) == 400 and b"awselb/2.0" in r, r
    assert status_of(raw_http(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")) == 400, "HTTP/1.1 needs Host"
    assert status_of(raw_http(port, b"GET / HTTP/1.0\r\n\r\n")) == 200, "HTTP/1.0 may omit it"
    assert status_of(raw_http(port, b"GET / HTTP/1.1\r\nHost: evil.example/phish?\r\nConnection: close\r\n\r\n")) == 400
    # ALB's line limits: 16 KiB for one header or the request line.
    fits, too_long = b"x" * (15 * 1024), b"x" * (17 * 1024)
    assert status_of(raw_http(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + fits + b"\r\nConnection: close\r\n\r\n")) == 200
    assert status_of(raw_http(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + too_long + b"\r\nConnection: close\r\n\r\n")) == 400
    assert status_of(raw_http(port, b"GET /" + too_long + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 400
    # Broken chunked framing from the client is the client's error.
    before = scrape(server)
    r = raw_http(port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n")
    assert status_of(r) == 400, r
    after = scrape(server)
    errors = lambda m: sum(v for (n, _), v in m.items() if n == "fleetport_elb_target_connection_errors_total")  # noqa: E731
    assert errors(after) == errors(before)
    # Redirect placeholders: only from a valid host; IPv6 literals stay whole.
    r = raw_http(port, b"GET /go HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n")
    assert status_of(r) == 302 and b"\r\nlocation: http://[::1]:" in r.lower(), r
    # Only WebSocket upgrades are tunnelled: any other Upgrade is dropped and the request forwarded.
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/up", headers={"Host": lb_dns, "Upgrade": "h2c, foo", "Connection": "Upgrade"})
    resp = c.getresponse()
    seen = json.loads(resp.read())["headers"]
    assert resp.status == 200 and "upgrade" not in seen, seen
    c.close()
    # Sticky cookies: a value computed from public facts (the old unkeyed hash) names no target.
    tg = elb.describe_target_groups(Names=["guard-tg"])["TargetGroups"][0]["TargetGroupArn"]
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "stickiness.enabled", "Value": "true"}, {"Key": "stickiness.type", "Value": "lb_cookie"}])
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": b.port}])
    wait_for(lambda: {d["TargetHealth"]["State"] for d in elb.describe_target_health(TargetGroupArn=tg)
                      ["TargetHealthDescriptions"]} == {"healthy"}, 30)
    h = hashlib.sha256(b"fleetport-alb-sticky")
    for p in (tg, "127.0.0.1", str(b.port)):
        h.update(b"\0" + p.encode())
    forged = base64.urlsafe_b64encode(h.digest()[:24]).decode().rstrip("=")
    assert {sticky_get(port, cookies={"AWSALB": forged})[0] for _ in range(6)} == {"a", "b"}
    who, cookies = sticky_get(port)
    assert {sticky_get(port, cookies={"AWSALB": cookies["AWSALB"][0]})[0] for _ in range(4)} == {who}


def test_secrets_at_rest_and_a_guarded_reset(data_dir, tmp_path):
    """Item 4: the data directory is 0700 and its files 0600; an imported private key is not in
    the state files; reset needs the API's credentials and refuses cross-origin browsers."""
    import os
    import stat
    from raw import reset
    from test_elb import import_cert, make_cert

    s = Server(data_dir, ["--enable-reset"]).start()
    try:
        acm = s.client("acm")
        crt, key = make_cert(tmp_path, "site", "site.example")
        arn = import_cert(acm, crt, key)
        assert acm.describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"] == "site.example"
        assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
        files = [os.path.join(data_dir, n) for n in os.listdir(data_dir)]
        assert any(f.endswith("state.db-wal") for f in files), files
        for f in files:
            if os.path.isfile(f):
                assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
                with open(f, "rb") as fh:
                    content = fh.read()
                assert b"PRIVATE KEY" not in content, f
        # The key still serves TLS after a restart (it opens with the data directory's key).
        s.stop()
        s = Server(data_dir, ["--enable-reset"]).start()
        assert s.client("acm").get_certificate(CertificateArn=arn)["Certificate"].startswith("-----BEGIN CERTIFICATE")
        # Reset: unsigned, wrongly signed and cross-origin requests change nothing.
        r = send("POST", s.endpoint + "/_fleetport/reset")
        assert r.status == 400 and r.json()["__type"] == "MissingAuthenticationTokenException"
        assert reset(s.endpoint, secret="wrong").status == 400
        r = reset_from_page(s.endpoint)
        assert r.status == 403 and r.json()["__type"] == "AccessDeniedException"
        assert len(s.client("acm").list_certificates()["CertificateSummaryList"]) == 1
        r = reset(s.endpoint)
        assert r.status == 200 and r.json() == {"reset": True}
        assert s.client("acm").list_certificates()["CertificateSummaryList"] == []
    finally:
        s.stop()


def reset_from_page(endpoint):
    """What a web page of another origin could send: signed even (a leaked key), but from a browser."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method="POST", url=endpoint + "/_fleetport/reset", data=b"",
                     headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    SigV4Auth(Credentials("test", "test"), "fleetport", "us-east-1").add_auth(req)
    p = req.prepare()
    return send("POST", p.url, b"", dict(p.headers))


def test_input_limits_as_aws_has_them(server):
    """Item 5: a 65 KiB task definition is refused; text XML cannot carry is refused and never
    breaks a later describe; a 12-member awsQuery list keeps its order; `member.01` beside
    `member.1` is refused."""
    import botocore.exceptions
    from raw import query_call

    ecs = server.client("ecs")
    big = [{"name": "a", "image": "busybox", "memory": 64, "environment": [{"name": "PAD", "value": "x" * (65 * 1024)}]}]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.register_task_definition(family="big", containerDefinitions=big)
    assert e.value.response["Error"]["Code"] == "ClientException" and "64 KiB" in e.value.response["Error"]["Message"]
    assert ecs.list_task_definition_families()["families"] == []
    small = [{"name": "a", "image": "busybox", "memory": 64, "environment": [{"name": "PAD", "value": "x" * (60 * 1024)}]}]
    assert ecs.register_task_definition(family="fits", containerDefinitions=small)["taskDefinition"]["revision"] == 1

    elb = server.client("elbv2")
    lb = elb.create_load_balancer(Name="tags", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]["LoadBalancerArn"]
    r = query_call(server.endpoint, {"Action": "AddTags", "Version": "2015-12-01", "ResourceArns.member.1": lb,
                                     "Tags.member.1.Key": "k", "Tags.member.1.Value": "a\x01b"})
    assert r.status == 400 and b"ValidationError" in r.body, r.text
    # Every botocore describe still parses afterwards.
    assert elb.describe_tags(ResourceArns=[lb])["TagDescriptions"][0]["Tags"] == []
    tgs = [elb.create_target_group(Name=f"tg-{i}", Protocol="HTTP", Port=80, TargetType="ip",
                                   VpcId="vpc-local")["TargetGroups"][0]["TargetGroupArn"] for i in range(1, 13)]
    params = {"Action": "DescribeTargetGroups", "Version": "2015-12-01"}
    params.update({f"TargetGroupArns.member.{i}": arn for i, arn in enumerate(tgs, start=1)})
    r = query_call(server.endpoint, params)
    assert r.status == 200
    import re
    seen = re.findall(rb"<TargetGroupName>(tg-\d+)</TargetGroupName>", r.body)
    assert [s.decode() for s in seen] == [f"tg-{i}" for i in range(1, 13)]
    r = query_call(server.endpoint, {"Action": "DescribeTargetGroups", "Version": "2015-12-01",
                                     "TargetGroupArns.member.1": tgs[0], "TargetGroupArns.member.01": tgs[1]})
    assert r.status == 400 and b"ValidationError" in r.body, r.text


def test_agent_restart_keeps_its_instance_status_and_never_revives_one(server, tmp_path):
    """Item 7: drain, restart the agent: still DRAINING. Deregister, restart: the agent refuses to
    come back as that instance (and says why), and the instance stays INACTIVE. The identity file
    is written atomically (no temporary file left) and is private."""
    import os
    import signal
    import stat
    from test_ecs_tasks import Agent

    ecs = server.client("ecs")
    ecs.create_cluster(clusterName="hard")
    state = str(tmp_path / "agent")
    a = Agent(server, "hard", state)
    try:
        ecs.update_container_instances_state(cluster="hard", containerInstances=[a.arn], status="DRAINING")
        a.stop(signal.SIGKILL)
        b = Agent(server, "hard", state)
        assert b.arn == a.arn
        d = ecs.describe_container_instances(cluster="hard", containerInstances=[a.arn])["containerInstances"][0]
        assert d["status"] == "DRAINING" and d["agentConnected"]
        files = os.listdir(state)
        assert files == ["instance-hard.json"], files
        assert stat.S_IMODE(os.stat(os.path.join(state, files[0])).st_mode) == 0o600
        b.stop(signal.SIGKILL)
        ecs.deregister_container_instance(cluster="hard", containerInstance=a.arn, force=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        from conftest import BIN
        import subprocess
        r = subprocess.run([BIN, "agent", "--cluster", "hard", "--endpoint", server.endpoint, "--state-dir", state],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode != 0 and "deregistered" in r.stderr, r.stderr
        d = ecs.describe_container_instances(cluster="hard", containerInstances=[a.arn])["containerInstances"][0]
        assert d["status"] == "INACTIVE"
        assert ecs.list_container_instances(cluster="hard")["containerInstanceArns"] == []
    finally:
        a.stop(signal.SIGKILL)


def test_the_registry_scopes_blobs_to_repositories(server):
    """Item 6: a blob is reachable only through a repository that holds it; mount honours
    `from`; a manifest may name only its repository's blobs; Content-Range is validated; a
    cancelled upload leaves no session and no file."""
    import base64
    import hashlib
    import json
    import os
    from test_registry import basic

    ecr = server.client("ecr")
    for name in ("alpha", "beta"):
        ecr.create_repository(repositoryName=name)
    token = base64.b64decode(ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
    h = basic(*token.split(":"))
    e = server.endpoint
    secret = b"only alpha has this layer"
    d = "sha256:" + hashlib.sha256(secret).hexdigest()
    assert send("POST", f"{e}/v2/alpha/blobs/uploads/?digest={d}", secret, h).status == 201
    assert send("GET", f"{e}/v2/alpha/blobs/{d}", headers=h).body == secret
    blob_file = os.path.join(server.data_dir, "registry", "blobs", "sha256", d.split(":")[1])
    assert os.stat(blob_file).st_mode & 0o777 == 0o600
    r = send("GET", f"{e}/v2/beta/blobs/{d}", headers=h)
    assert r.status == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert send("HEAD", f"{e}/v2/beta/blobs/{d}", headers=h).status == 404
    assert ecr.batch_check_layer_availability(repositoryName="beta", layerDigests=[d])["failures"][0]["failureCode"] == "MissingLayerDigest"
    # A manifest in beta naming alpha's blob is refused.
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cd = "sha256:" + hashlib.sha256(config).hexdigest()
    assert send("POST", f"{e}/v2/beta/blobs/uploads/?digest={cd}", config, h).status == 201
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 99999999999}]}).encode()
    mh = dict(h, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    r = send("PUT", f"{e}/v2/beta/manifests/v1", manifest, mh)
    assert r.status == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # Mount without `from`, or from a repository without the blob: a plain upload starts instead.
    assert send("POST", f"{e}/v2/beta/blobs/uploads/?mount={d}", b"", h).status == 202
    assert send("POST", f"{e}/v2/beta/blobs/uploads/?mount={d}&from=beta", b"", h).status == 202
    assert send("POST", f"{e}/v2/beta/blobs/uploads/?mount={d}&from=alpha", b"", h).status == 201
    assert send("GET", f"{e}/v2/beta/blobs/{d}", headers=h).body == secret
    assert send("PUT", f"{e}/v2/beta/manifests/v1", manifest, mh).status == 201
    # The size reported is the stored one, not the manifest's claim.
    img = ecr.describe_images(repositoryName="beta")["imageDetails"][0]
    assert img["imageSizeInBytes"] == len(secret)
    # Content-Range must be a well-formed range matching the body.
    r = send("POST", f"{e}/v2/beta/blobs/uploads/", b"", h)
    loc = e + r.headers["location"]
    for bad in ("abc", "5-2", "0-", "0-99"):
        r = send("PATCH", loc, b"hello", dict(h, **{"Content-Range": bad, "Content-Type": "application/octet-stream"}))
        assert r.status == 400 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID", bad
    # A chunk whose request is abandoned mid-body: the session is never left Busy. Either it was
    # discarded with its file, or it kept what arrived and takes the rest.
    r = send("POST", f"{e}/v2/beta/blobs/uploads/", b"", h)
    path = r.headers["location"]
    session = path.rsplit("/", 1)[1]
    uploads = os.path.join(server.data_dir, "registry", "uploads")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
        s.sendall(f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Type: application/octet-stream\r\n"
                  f"Content-Length: 1000000\r\n\r\n".encode() + b"x" * 1000)
        time.sleep(0.5)
    time.sleep(0.5)
    r = send("GET", e + path, headers=h)
    if r.status == 404:
        assert session not in os.listdir(uploads)
    else:
        assert r.status == 204
        got = int(r.headers["range"].split("-")[1]) + 1
        rest = b"x" * (2000 - got)
        r = send("PATCH", e + path, rest, dict(h, **{"Content-Range": f"{got}-{1999}",
                                                      "Content-Type": "application/octet-stream"}))
        assert r.status == 202, r.text
        blob = "sha256:" + hashlib.sha256(b"x" * 2000).hexdigest()
        assert send("PUT", e + path + "?digest=" + blob, b"", h).status == 201
        assert session not in os.listdir(uploads)


def test_least_outstanding_routing_survives_cancelled_requests(server, backends):
    """Item 8: 1,000 requests whose clients hang up while their target is still answering leave
    no phantom load: a target added afterwards shares traffic instead of taking all of it."""
    from concurrent.futures import ThreadPoolExecutor

    a, b, c = backends("a"), backends("b"), backends("c")
    elb, lb, listener, port = make_alb(server, a)
    tg = elb.describe_target_groups(Names=["guard-tg"])["TargetGroups"][0]["TargetGroupArn"]
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "load_balancing.algorithm.type", "Value": "least_outstanding_requests"}])
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": b.port}])
    wait_for(lambda: {d["TargetHealth"]["State"] for d in elb.describe_target_health(TargetGroupArn=tg)
                      ["TargetHealthDescriptions"]} == {"healthy"}, 30)

    def hang_up(_):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)

    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(hang_up, range(1000)))
    time.sleep(1.5)
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": c.port}])
    wait_for(lambda: len([d for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
                          if d["TargetHealth"]["State"] == "healthy"]) == 3, 30)
    from test_elb import count_backends
    counts = count_backends(port, "/", 30)
    assert set(counts) == {"a", "b", "c"} and max(counts.values()) <= 20, counts


def race(**calls):
    """Runs the named calls at once in threads; returns each one's result, or its AWS error code."""
    import threading
    import botocore.exceptions
    results = {}

    def run(name, call):
        try:
            results[name] = call()
        except botocore.exceptions.ClientError as e:
            results[name] = e.response["Error"]["Code"]

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_certificate_cannot_be_deleted_while_a_listener_takes_it_up(server, tmp_path):
    """Item 8: DeleteCertificate and CreateListener race 20 times; afterwards no listener names
    a certificate that is gone, and every certificate that stayed is one a listener uses."""
    from test_elb import import_cert, make_cert

    acm, elb = server.client("acm"), server.client("elbv2")
    crt, key = make_cert(tmp_path, "race", "race.example")
    lb = elb.create_load_balancer(Name="race", Subnets=["subnet-a", "subnet-b"])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = make_tg(elb, "race-tg")
    outcomes = []
    for _ in range(20):
        arn = import_cert(acm, crt, key)
        port = free_port()
        results = race(
            listener=lambda: elb.create_listener(
                LoadBalancerArn=lb, Protocol="HTTPS", Port=port, Certificates=[{"CertificateArn": arn}],
                DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"],
            delete=lambda: acm.delete_certificate(CertificateArn=arn) and "deleted")
        created = results["listener"].startswith("arn:")
        assert created != (results["delete"] == "deleted"), results
        if created:
            assert acm.describe_certificate(CertificateArn=arn)["Certificate"]["CertificateArn"] == arn
            elb.delete_listener(ListenerArn=results["listener"])
            acm.delete_certificate(CertificateArn=arn)
        else:
            assert results["listener"] == "CertificateNotFound", results
        outcomes.append(created)


def test_run_task_and_delete_cluster_never_both_win(data_dir):
    """Item 8: RunTask re-checks its cluster inside the transaction that writes the tasks, so a
    DeleteCluster racing it either sees the task (and is refused) or makes RunTask fail."""

    s = Server(data_dir, ["--no-managed-capacity"]).start()
    try:
        ecs = s.client("ecs")
        ecs.register_task_definition(family="f", requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
                                     cpu="256", memory="512",
                                     containerDefinitions=[{"name": "a", "image": "busybox", "essential": True}])
        for i in range(15):
            name = f"race{i}"
            ecs.create_cluster(clusterName=name)
            results = race(
                run=lambda: ecs.run_task(
                    cluster=name, taskDefinition="f", launchType="FARGATE",
                    networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-a"]}})["tasks"],
                delete=lambda: ecs.delete_cluster(cluster=name) and "deleted")
            ran = isinstance(results["run"], list) and len(results["run"]) == 1
            assert ran != (results["delete"] == "deleted"), results
            status = ecs.describe_clusters(clusters=[name])["clusters"][0]["status"]
            assert status == ("ACTIVE" if ran else "INACTIVE")
    finally:
        s.stop()


def test_a_task_change_wakes_only_the_agent_it_concerns(data_dir):
    """Item 8: two instances long-poll; a task started on one answers that poll at once while
    the other's poll waits out its time."""
    import json
    import threading
    from raw import signed

    s = Server(data_dir, ["--no-managed-capacity"]).start()
    try:
        ecs = s.client("ecs")
        ecs.create_cluster(clusterName="wake")
        arns = []
        for _ in range(2):
            out = ecs.register_container_instance(
                cluster="wake", totalResources=[{"name": "CPU", "type": "INTEGER", "integerValue": 1024},
                                                {"name": "MEMORY", "type": "INTEGER", "integerValue": 1024}])
            arns.append(out["containerInstance"]["containerInstanceArn"])
        ecs.register_task_definition(family="w", containerDefinitions=[{"name": "a", "image": "busybox", "memory": 16}])

        def poll(arn, generation=None, wait=0):
            body = {"cluster": "wake", "containerInstance": arn, "waitSeconds": wait}
            if generation is not None:
                body["generation"] = generation
            r = signed(s.endpoint, json.dumps(body).encode(),
                       {"X-Amz-Target": "FleetportAgentV20261124.PollTaskAssignments",
                        "Content-Type": "application/x-amz-json-1.1"})
            assert r.status == 200, r.text
            return r.json()

        gens = [poll(a)["generation"] for a in arns]
        took = {}

        def waiting(i):
            t0 = time.monotonic()
            out = poll(arns[i], gens[i], wait=6)
            took[i] = (time.monotonic() - t0, len(out["tasks"]))

        threads = [threading.Thread(target=waiting, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(1)
        ecs.start_task(cluster="wake", taskDefinition="w", containerInstances=[arns[0]])
        for t in threads:
            t.join()
        assert took[0][0] < 3 and took[0][1] == 1, took
        assert took[1][0] > 5 and took[1][1] == 0, took
    finally:
        s.stop()
