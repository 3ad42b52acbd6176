"""ELBv2 black-box tests: the control API through boto3 and the AWS CLI, and the data plane
through real HTTP/TCP backends started here and plain sockets/curl."""
import datetime
import email.utils
import http.client
import http.server
import json
import pathlib
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse

import boto3
import botocore.config
import botocore.exceptions
import pytest

import conformance
from conftest import wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """A small HTTP server: `/health` answers `self.health` (or hangs when None), `/slow?s=N`
    sleeps, `/login` sets an application cookie `SESSION`, anything else echoes the request as
    JSON with the backend's name."""

    def __init__(self, name, tls=None):
        self.name = name
        self.health = 200
        self.hits = 0
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response: a header write and a body write would meet Nagle's
            # algorithm and delayed ACKs (40 ms per request).
            wbufsize = 65536

            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/health":
                    if backend.health is None:
                        time.sleep(5)
                    return self.reply(backend.health or 200, b"ok")
                backend.hits += 1
                if url.path == "/slow":
                    time.sleep(float(urllib.parse.parse_qs(url.query).get("s", ["1"])[0]))
                body = json.dumps({"backend": backend.name, "path": self.path,
                                   "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
                extra = {"Set-Cookie": f"SESSION={backend.name}; Path=/"} if url.path == "/login" else {}
                self.reply(200, body, extra)

            do_POST = do_GET

            def reply(self, code, body, extra=None):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Backend", backend.name)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.httpd = Threaded(("127.0.0.1", 0), Handler)
        if tls:
            # HTTPS only: (certificate, key) paths; the handshake runs as each client is accepted.
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def backends():
    made = []

    def make(name, tls=None):
        b = Backend(name, tls)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def get(port, path="/", host=None, headers=None, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    h = dict(headers or {})
    if host:
        h["Host"] = host
    c.request(method, path, headers=h)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def count_backends(port, path, n):
    """How many of n requests on one keep-alive connection each backend answered."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    counts = {}
    for _ in range(n):
        c.request("GET", path)
        r = c.getresponse()
        counts[r.getheader("X-Backend")] = counts.get(r.getheader("X-Backend"), 0) + 1
        r.read()
    c.close()
    return counts


def error_code(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def make_tg(elb, name, **kw):
    args = dict(Name=name, Protocol="HTTP", Port=80, TargetType="ip", VpcId="vpc-local",
                HealthCheckPath="/health", HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2,
                HealthyThresholdCount=2, UnhealthyThresholdCount=2)
    args.update(kw)
    out = elb.create_target_group(**args)
    conformance.check("elbv2", "CreateTargetGroup", out)
    return out["TargetGroups"][0]["TargetGroupArn"]


def health(elb, tg):
    out = elb.describe_target_health(TargetGroupArn=tg)
    conformance.check("elbv2", "DescribeTargetHealth", out)
    return {d["Target"]["Port"]: d["TargetHealth"] for d in out["TargetHealthDescriptions"]}


def test_cli_walkthrough_routes_real_traffic(server, backends):
    """The issue's walkthrough with the AWS CLI; curl reaches the targets by the LB's DNS name."""
    b1, b2, api = backends("b1"), backends("b2"), backends("api")
    cli = lambda *a: json.loads(server.cli(*a).stdout or "{}")  # noqa: E731
    lb = cli("elbv2", "create-load-balancer", "--name", "web-alb", "--type", "application",
             "--subnets", "subnet-a", "subnet-b")["LoadBalancers"][0]
    assert lb["State"]["Code"] == "provisioning" and lb["DNSName"].endswith(".elb.localhost")
    server.cli("elbv2", "wait", "load-balancer-available", "--load-balancer-arns", lb["LoadBalancerArn"])
    tg = cli("elbv2", "create-target-group", "--name", "web-tg", "--protocol", "HTTP", "--port", "3000",
             "--target-type", "ip", "--vpc-id", "vpc-local", "--health-check-path", "/health",
             "--health-check-interval-seconds", "5", "--health-check-timeout-seconds", "2")["TargetGroups"][0]
    assert (tg["HealthyThresholdCount"], tg["UnhealthyThresholdCount"], tg["Matcher"]) == (5, 2, {"HttpCode": "200"})
    tg2 = cli("elbv2", "create-target-group", "--name", "api-tg", "--protocol", "HTTP", "--port", "3000",
              "--target-type", "ip", "--vpc-id", "vpc-local", "--health-check-path", "/health",
              "--health-check-interval-seconds", "5", "--health-check-timeout-seconds", "2")["TargetGroups"][0]
    cli("elbv2", "register-targets", "--target-group-arn", tg["TargetGroupArn"], "--targets",
        f"Id=127.0.0.1,Port={b1.port}", f"Id=127.0.0.1,Port={b2.port}")
    cli("elbv2", "register-targets", "--target-group-arn", tg2["TargetGroupArn"], "--targets",
        f"Id=127.0.0.1,Port={api.port}")
    unused = cli("elbv2", "describe-target-health", "--target-group-arn", tg["TargetGroupArn"])
    assert {(d["TargetHealth"]["Reason"], d["TargetHealth"]["Description"]) for d in unused["TargetHealthDescriptions"]} == {
        ("Target.NotInUse", "Given target group is not configured to receive traffic from ELB")}
    port = free_port()
    listener = cli("elbv2", "create-listener", "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP",
                   "--port", str(port), "--default-actions",
                   f"Type=forward,TargetGroupArn={tg['TargetGroupArn']}")["Listeners"][0]
    cli("elbv2", "create-rule", "--listener-arn", listener["ListenerArn"], "--priority", "10", "--conditions",
        "Field=path-pattern,Values=/api/*", "--actions", f"Type=forward,TargetGroupArn={tg2['TargetGroupArn']}")
    server.cli("elbv2", "wait", "target-in-service", "--target-group-arn", tg["TargetGroupArn"])
    url = f"http://{lb['DNSName']}:{port}"
    seen = [subprocess.run(["curl", "-sf", url + "/"], capture_output=True, text=True, timeout=10).stdout
            for _ in range(4)]
    assert sorted(json.loads(s)["backend"] for s in seen) == ["b1", "b1", "b2", "b2"], "round robin"
    out = json.loads(subprocess.run(["curl", "-sf", url + "/api/users?x=1"], capture_output=True, text=True,
                                    timeout=10).stdout)
    assert out["backend"] == "api" and out["path"] == "/api/users?x=1", "the path is forwarded unchanged"
    h = out["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1" and h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-port"] == str(port) and h["host"] == f"{lb['DNSName']}:{port}"
    assert h["x-amzn-trace-id"].startswith("Root=1-") and len(h["x-amzn-trace-id"]) == len("Root=1-") + 8 + 1 + 24
    # Headers the client names in Connection are for this hop only (RFC 9110 7.6.1).
    out = json.loads(subprocess.run(["curl", "-sf", "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: 1",
                                     "-H", "X-End: 2", url + "/api/h"], capture_output=True, text=True,
                                    timeout=10).stdout)
    assert "x-hop" not in out["headers"] and out["headers"]["x-end"] == "2", out["headers"]
    rules = cli("elbv2", "describe-rules", "--listener-arn", listener["ListenerArn"])["Rules"]
    assert [(r["Priority"], r["IsDefault"]) for r in rules] == [("10", False), ("default", True)]


def test_rules_conditions_and_actions(server, backends):
    elb = server.client("elbv2")
    a, b = backends("a"), backends("b")
    lb = elb.create_load_balancer(Name="rules", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    tga, tgb = make_tg(elb, "tg-a"), make_tg(elb, "tg-b")
    elb.register_targets(TargetGroupArn=tga, Targets=[{"Id": "127.0.0.1", "Port": a.port}])
    elb.register_targets(TargetGroupArn=tgb, Targets=[{"Id": "127.0.0.1", "Port": b.port}])
    port = free_port()
    ln = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404", "ContentType": "text/plain",
                                                          "MessageBody": "no route"}}])["Listeners"][0]["ListenerArn"]
    fwd = lambda tg: [{"Type": "forward", "TargetGroupArn": tg}]  # noqa: E731
    rules = [
        (5, [{"Field": "path-pattern", "Values": ["/api/*"]}], fwd(tga)),
        (10, [{"Field": "path-pattern", "Values": ["/api/v1/*"]}], fwd(tgb)),
        (20, [{"Field": "host-header", "HostHeaderConfig": {"Values": ["*.example.com"]}}], fwd(tgb)),
        (30, [{"Field": "http-header", "HttpHeaderConfig": {"HttpHeaderName": "X-Env", "Values": ["stag?ng"]}}], fwd(tgb)),
        (40, [{"Field": "http-request-method", "HttpRequestMethodConfig": {"Values": ["POST"]}}], fwd(tgb)),
        (50, [{"Field": "query-string", "QueryStringConfig": {"Values": [{"Key": "v", "Value": "2"}, {"Value": "beta"}]}}], fwd(tgb)),
        (60, [{"Field": "source-ip", "SourceIpConfig": {"Values": ["10.0.0.0/8"]}}], fwd(tgb)),
        (70, [{"Field": "source-ip", "SourceIpConfig": {"Values": ["127.0.0.0/8"]}},
              {"Field": "path-pattern", "Values": ["/img/?.png"]}], fwd(tga)),
        (80, [{"Field": "path-pattern", "Values": ["/old/*"]}],
         [{"Type": "redirect", "RedirectConfig": {"Path": "/new/#{path}", "StatusCode": "HTTP_301"}}]),
        (90, [{"Field": "path-pattern", "Values": ["/secure"]}],
         [{"Type": "redirect", "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_302"}}]),
    ]
    for prio, conds, actions in rules:
        out = elb.create_rule(ListenerArn=ln, Priority=prio, Conditions=conds, Actions=actions)
        conformance.check("elbv2", "CreateRule", out)
    wait_for(lambda: set(s["State"] for s in health(elb, tga).values()) == {"healthy"})
    wait_for(lambda: set(s["State"] for s in health(elb, tgb).values()) == {"healthy"})
    who = lambda *a, **k: json.loads(get(port, *a, **k)[2])["backend"]  # noqa: E731
    assert who("/api/v1/x") == "a", "priority 5 beats 10"
    assert who("/x", host="www.EXAMPLE.com") == "b" and get(port, "/x", host="example.com")[0] == 404
    assert who("/x", headers={"X-Env": "STAGING"}) == "b"
    assert who("/x", method="POST") == "b"
    assert who("/x?v=2") == "b" and who("/x?anything=beta") == "b" and get(port, "/x?v=3")[0] == 404
    assert who("/img/a.png") == "a" and get(port, "/img/ab.png")[0] == 404
    status, headers, body = get(port, "/API/v1/x")
    assert (status, body) == (404, b"no route") and headers["content-type"] == "text/plain", "paths are case-sensitive"
    status, headers, _ = get(port, "/old/page?q=1", host="site.test")
    assert status == 301 and headers["location"] == f"http://site.test:{port}/new/old/page?q=1"
    status, headers, _ = get(port, "/secure?a=b", host=f"site.test:{port}")
    assert status == 302 and headers["location"] == "https://site.test/secure?a=b"
    assert get(port, "/x", method="TRACE")[0] == 405
    # Weighted forward: 80/20 over 1,000 requests, within a few percent.
    elb.modify_rule(RuleArn=elb.describe_rules(ListenerArn=ln)["Rules"][0]["RuleArn"], Actions=[
        {"Type": "forward", "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": tga, "Weight": 80},
                                                               {"TargetGroupArn": tgb, "Weight": 20}]}}])
    counts = count_backends(port, "/api/w", 1000)
    assert 760 <= counts["a"] <= 840, counts
    # SetRulePriorities swaps two rules at once; the default rule cannot move or go.
    listed = elb.describe_rules(ListenerArn=ln)["Rules"]
    r5, r10, default = listed[0]["RuleArn"], listed[1]["RuleArn"], listed[-1]["RuleArn"]
    out = elb.set_rule_priorities(RulePriorities=[{"RuleArn": r5, "Priority": 10}, {"RuleArn": r10, "Priority": 5}])
    conformance.check("elbv2", "SetRulePriorities", out)
    conformance.check("elbv2", "DescribeRules", elb.describe_rules(ListenerArn=ln))
    assert {r["RuleArn"]: r["Priority"] for r in out["Rules"]} == {r5: "10", r10: "5"}
    wait_for(lambda: who("/api/v1/x") == "b", 1, 0.05)  # changes apply within a second
    assert error_code(lambda: elb.delete_rule(RuleArn=default)) == "OperationNotPermitted"
    assert error_code(lambda: elb.set_rule_priorities(RulePriorities=[{"RuleArn": default, "Priority": 3}])) == "OperationNotPermitted"


def test_health_states_fail_open_and_alb_errors(server, backends):
    elb = server.client("elbv2")
    good, sick = backends("good"), backends("sick")
    sick.health = 404
    closed = free_port()
    lb = elb.create_load_balancer(Name="health", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = make_tg(elb, "hc", Matcher={"HttpCode": "200-299,302"})
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": p} for p in (good.port, sick.port, closed)])
    port = free_port()
    elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    first = health(elb, tg)
    assert all(h["State"] in ("initial", "healthy", "unhealthy") for h in first.values())
    wait_for(lambda: health(elb, tg)[sick.port]["State"] == "unhealthy", 20)
    h = health(elb, tg)
    assert h[good.port] == {"State": "healthy"}
    assert h[sick.port]["Reason"] == "Target.ResponseCodeMismatch" and "[404]" in h[sick.port]["Description"]
    wait_for(lambda: health(elb, tg)[closed]["State"] == "unhealthy", 20)
    assert health(elb, tg)[closed]["Reason"] == "Target.FailedHealthChecks"
    # Only the healthy target gets traffic.
    assert {get(port, "/x")[1]["x-backend"] for _ in range(10)} == {"good"}
    # Recovery needs HealthyThresholdCount (2) passes: about two intervals.
    sick.health = 302
    wait_for(lambda: health(elb, tg)[sick.port]["State"] == "healthy", 20)
    # Every target unhealthy: the ALB fails open to all of them; the closed one gives 502.
    good.health = sick.health = 500
    wait_for(lambda: {s["State"] for s in health(elb, tg).values()} == {"unhealthy"}, 25)
    statuses = [get(port, "/x")[0] for _ in range(9)]
    assert statuses.count(200) == 6 and statuses.count(502) == 3, statuses
    # A slow target with idle_timeout 2 s gets a 504 after about 2 s.
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb, Attributes=[{"Key": "idle_timeout.timeout_seconds", "Value": "2"}])
    elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": p} for p in (sick.port, closed)])
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "0"}])
    started = time.monotonic()
    status, headers, body = get(port, "/slow?s=4")
    assert status == 504 and 1.5 < time.monotonic() - started < 3.5
    assert headers["server"] == "awselb/2.0"
    # No registered target: 503 with the ALB's page.
    elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": good.port}])
    wait_for(lambda: get(port, "/x")[0] == 503, 5)
    status, headers, body = get(port, "/x")
    assert b"503 Service Temporarily Unavailable" in body and headers["content-type"] == "text/html"
    assert len(body) == 162, "the ALB's own 503 page, byte for byte in length"
    h = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": good.port}])
    assert h["TargetHealthDescriptions"][0]["TargetHealth"]["Reason"] == "Target.NotRegistered"


def test_draining_finishes_in_flight_requests(server, backends):
    elb = server.client("elbv2")
    a, b = backends("a"), backends("b")
    lb = elb.create_load_balancer(Name="drain", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = make_tg(elb, "drain")
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "4"}])
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": p} for p in (a.port, b.port)])
    port = free_port()
    elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    wait_for(lambda: {s["State"] for s in health(elb, tg).values()} == {"healthy"})
    results = []
    slow = [threading.Thread(target=lambda: results.append(get(port, "/slow?s=2"))) for _ in range(4)]
    for t in slow:
        t.start()
    time.sleep(0.5)
    elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": a.port}])
    h = health(elb, tg)[a.port]
    assert h == {"State": "draining", "Reason": "Target.DeregistrationInProgress",
                 "Description": "Target deregistration is in progress"}
    assert {get(port, "/x")[1]["x-backend"] for _ in range(6)} == {"b"}, "no new requests to a draining target"
    for t in slow:
        t.join()
    assert [r[0] for r in results] == [200] * 4 and {r[1]["x-backend"] for r in results} == {"a", "b"}
    wait_for(lambda: a.port not in health(elb, tg), 8)
    server.cli("elbv2", "wait", "target-deregistered", "--target-group-arn", tg,
               "--targets", f"Id=127.0.0.1,Port={a.port}")


def sticky_get(port, path="/x", cookies=None):
    """(backend name, {cookie name: (value, attributes)}) for one request with these cookies."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
    c.request("GET", path, headers=h)
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200
    set_cookies = {}
    for line in r.msg.get_all("Set-Cookie") or []:
        pair, _, attrs = line.partition(";")
        name, _, value = pair.partition("=")
        set_cookies[name.strip()] = (value, attrs.strip())
    return r.getheader("X-Backend"), set_cookies


def test_sticky_sessions(server, backends):
    """lb_cookie, app_cookie and target-group stickiness (AWSALB, AWSALBAPP-0, AWSALBTG)."""
    elb = server.client("elbv2")
    a, b, c, d = backends("a"), backends("b"), backends("c"), backends("d")
    lb = elb.create_load_balancer(Name="sticky", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = make_tg(elb, "sticky")
    out = elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "stickiness.enabled", "Value": "true"}, {"Key": "stickiness.type", "Value": "lb_cookie"},
        {"Key": "stickiness.lb_cookie.duration_seconds", "Value": "120"},
        {"Key": "deregistration_delay.timeout_seconds", "Value": "0"}])
    conformance.check("elbv2", "ModifyTargetGroupAttributes", out)
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": x.port} for x in (a, b, c)])
    port = free_port()
    ln = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                             DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"]
    wait_for(lambda: len(health(elb, tg)) == 3 and {s["State"] for s in health(elb, tg).values()} == {"healthy"})
    # Without a cookie: round robin, and every response offers a cookie that expires in 120 s.
    first, cookies = sticky_get(port)
    value, attrs = cookies["AWSALB"]
    assert attrs.startswith("Expires=") and attrs.endswith("GMT; Path=/"), attrs
    expires = email.utils.parsedate_to_datetime(attrs.split(";")[0][len("Expires="):])
    assert 100 < (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 121
    assert cookies["AWSALBCORS"][0] == value and cookies["AWSALBCORS"][1].endswith("SameSite=None; Secure")
    assert {sticky_get(port)[0] for _ in range(6)} == {"a", "b", "c"}
    # With it: always the same target, and the cookie comes back (its expiry refreshed).
    for _ in range(10):
        who, again = sticky_get(port, cookies={"AWSALB": value})
        assert who == first and again["AWSALB"][0] == value
    assert sticky_get(port, cookies={"AWSALBCORS": value})[0] == first
    # A cookie that names no target gets a fresh pick and a new cookie.
    who, fresh = sticky_get(port, cookies={"AWSALB": "garbage"})
    assert fresh["AWSALB"][0] != "garbage"
    # Its target leaves: the next request moves, the cookie is rewritten, and it sticks again.
    elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": {"a": a, "b": b, "c": c}[first].port}])
    time.sleep(1)
    moved, rewritten = sticky_get(port, cookies={"AWSALB": value})
    assert moved != first and rewritten["AWSALB"][0] != value
    assert {sticky_get(port, cookies={"AWSALB": rewritten["AWSALB"][0]})[0] for _ in range(6)} == {moved}
    # Application-cookie stickiness starts when the application sets its cookie.
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "stickiness.type", "Value": "app_cookie"}, {"Key": "stickiness.app_cookie.cookie_name", "Value": "SESSION"}])
    time.sleep(1)
    assert "AWSALBAPP-0" not in sticky_get(port)[1]
    who, cookies = sticky_get(port, "/login")
    assert cookies["SESSION"][0] == who and "AWSALBAPP-0" in cookies
    jar = {"SESSION": who, "AWSALBAPP-0": cookies["AWSALBAPP-0"][0]}
    assert {sticky_get(port, cookies=jar)[0] for _ in range(6)} == {who}
    # Target-group stickiness over weighted groups: AWSALBTG keeps a client in one group.
    tg2 = make_tg(elb, "sticky-2")
    elb.register_targets(TargetGroupArn=tg2, Targets=[{"Id": "127.0.0.1", "Port": d.port}])
    elb.modify_listener(ListenerArn=ln, DefaultActions=[{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": tg, "Weight": 50}, {"TargetGroupArn": tg2, "Weight": 50}],
        "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 300}}}])
    wait_for(lambda: health(elb, tg2)[d.port]["State"] == "healthy")
    seen = [sticky_get(port) for _ in range(20)]
    assert {w == "d" for w, _ in seen} == {True, False}, "both groups get new clients"
    for who, cookies in seen[:4]:
        group = cookies["AWSALBTG"][0]
        assert cookies["AWSALBTGCORS"][0] == group
        assert {sticky_get(port, cookies={"AWSALBTG": group})[0] == "d" for _ in range(8)} == {who == "d"}
    # Stickiness types belong to a protocol.
    assert error_code(lambda: elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "stickiness.type", "Value": "source_ip"}])) == "InvalidConfigurationRequest"
    tcp = elb.create_target_group(Name="sticky-tcp", Protocol="TCP", Port=1, TargetType="ip",
                                  VpcId="vpc-local")["TargetGroups"][0]["TargetGroupArn"]
    assert error_code(lambda: elb.modify_target_group_attributes(TargetGroupArn=tcp, Attributes=[
        {"Key": "stickiness.enabled", "Value": "true"}, {"Key": "stickiness.type", "Value": "lb_cookie"}])) == "InvalidConfigurationRequest"


def scrape(server):
    """{(name, frozenset(labels)): value} from /metrics, checking every line's syntax."""
    import re
    import urllib.request
    with urllib.request.urlopen(server.endpoint + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP \w+ .+|TYPE \w+ (counter|gauge|histogram))", line), line
            continue
        m = re.fullmatch(r'(\w+)\{((?:\w+="[^"]*",?)*)\} (\S+)', line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def test_metrics_count_requests_connections_and_bytes(server, backends):
    elb = server.client("elbv2")
    a = backends("a")
    lb = elb.create_load_balancer(Name="metered", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = make_tg(elb, "metered")
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": p} for p in (a.port, free_port())])
    port = free_port()
    ln = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                             DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"]
    elb.create_rule(ListenerArn=ln, Priority=1, Conditions=[{"Field": "path-pattern", "Values": ["/none"]}],
                    Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])
    wait_for(lambda: sorted(s["State"] for s in health(elb, tg).values()) == ["healthy", "unhealthy"], 20)
    lbl = {("load_balancer", lb.split(":loadbalancer/")[1])}
    tgl = {("target_group", tg.rsplit(":", 1)[1]), ("load_balancer", lb.split(":loadbalancer/")[1])}
    m = lambda name, labels, extra=(): scrape(server).get((f"fleetport_elb_{name}", frozenset(set(labels) | set(extra))))  # noqa: E731
    assert m("requests_total", lbl) == 0 and m("healthy_hosts", tgl) == 1 and m("unhealthy_hosts", tgl) == 1
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for path, method in [("/x", "GET")] * 10 + [("/none", "GET"), ("/x", "TRACE")]:
        c.request(method, path)
        c.getresponse().read()
    assert m("active_connections", lbl) == 1 and m("new_connections_total", lbl) == 1
    c.close()
    wait_for(lambda: m("active_connections", lbl) == 0, 5)
    assert m("requests_total", lbl) == 12
    assert m("elb_responses_total", lbl, {("code", "4xx")}) == 2
    assert m("target_responses_total", tgl, {("code", "2xx")}) == 10
    assert m("target_response_time_seconds_count", tgl) == 10
    assert m("target_response_time_seconds_bucket", tgl, {("le", "+Inf")}) == 10
    assert 0 < m("target_response_time_seconds_sum", tgl) < 10
    # ProcessedBytes counts exactly what crossed the client connection, both ways.
    before = m("processed_bytes_total", lbl)
    request = f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    response = b"".join(iter(lambda: s.recv(65536), b""))
    s.close()
    assert response.startswith(b"HTTP/1.1 200")
    wait_for(lambda: m("processed_bytes_total", lbl) - before == len(request) + len(response), 5)
    assert m("new_connections_total", lbl) == 2


def test_websockets_and_http2_prior_knowledge(server, backends):
    """A WebSocket upgrade is tunnelled to the target that answered 101 (1,000 frames echoed);
    an HTTP/2 client speaking h2c with prior knowledge is served and forwarded as HTTP/1.1."""
    import http as http_status
    import websockets.sync.client
    import websockets.sync.server

    def echo(ws):
        for message in ws:
            ws.send(message)

    def health_or_upgrade(connection, request):
        if request.path == "/health":
            return connection.respond(http_status.HTTPStatus.OK, "ok\n")
        return None

    ws_server = websockets.sync.server.serve(echo, "127.0.0.1", 0, process_request=health_or_upgrade)
    threading.Thread(target=ws_server.serve_forever, daemon=True).start()
    try:
        elb = server.client("elbv2")
        h = backends("h")
        lb = elb.create_load_balancer(Name="ws", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
        tg_ws, tg_h = make_tg(elb, "ws"), make_tg(elb, "h")
        elb.register_targets(TargetGroupArn=tg_ws, Targets=[{"Id": "127.0.0.1", "Port": ws_server.socket.getsockname()[1]}])
        elb.register_targets(TargetGroupArn=tg_h, Targets=[{"Id": "127.0.0.1", "Port": h.port}])
        port = free_port()
        ln = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                                 DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_h}])["Listeners"][0]["ListenerArn"]
        elb.create_rule(ListenerArn=ln, Priority=1, Conditions=[{"Field": "path-pattern", "Values": ["/chat"]}],
                        Actions=[{"Type": "forward", "TargetGroupArn": tg_ws}])
        wait_for(lambda: health(elb, tg_ws)[ws_server.socket.getsockname()[1]]["State"] == "healthy")
        wait_for(lambda: health(elb, tg_h)[h.port]["State"] == "healthy")
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/chat", open_timeout=10) as ws:
            for i in range(1000):
                message = f"frame {i} " + "x" * (i % 300)
                ws.send(message)
                assert ws.recv(timeout=10) == message
            ws.send(b"\x00\x01binary")
            assert ws.recv(timeout=10) == b"\x00\x01binary"
        # HTTP/2 with prior knowledge (curl's nghttp2), on the same port as HTTP/1.1 clients.
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                              f"http://127.0.0.1:{port}/h2?x=1"], capture_output=True, text=True, timeout=30)
        body, _, status = out.stdout.rpartition("\n")
        assert status == "2 200", out
        seen = json.loads(body)
        assert seen["backend"] == "h" and seen["path"] == "/h2?x=1"
        assert seen["headers"]["host"] == f"127.0.0.1:{port}" and seen["headers"]["x-forwarded-proto"] == "http"
        assert get(port, "/h1")[0] == 200
    finally:
        ws_server.shutdown()


def test_slow_start_holds_back_a_new_target(server, backends):
    elb = server.client("elbv2")
    a, b = backends("a"), backends("b")
    lb = elb.create_load_balancer(Name="slow", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    tg = make_tg(elb, "slow")
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{"Key": "slow_start.duration_seconds", "Value": "60"}])
    assert error_code(lambda: elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "load_balancing.algorithm.type", "Value": "least_outstanding_requests"}])) == "InvalidConfigurationRequest"
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": a.port}])
    port = free_port()
    elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    wait_for(lambda: health(elb, tg)[a.port]["State"] == "healthy")
    # Slow start needs a target healthy for at least one interval (5 s) to yield to; targets
    # that turn healthy together, as the first batch, all take full traffic at once.
    time.sleep(5.5)
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": b.port}])
    wait_for(lambda: health(elb, tg)[b.port]["State"] == "healthy", 10, 0.05)
    # A few seconds into a 60 s ramp the new target gets a few percent, not half.
    counts = count_backends(port, "/x", 400)
    assert counts.get("b", 0) < 60, counts
    # Off again: plain round robin.
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{"Key": "slow_start.duration_seconds", "Value": "0"}])
    wait_for(lambda: {get(port, "/x")[1]["x-backend"] for _ in range(4)} == {"a", "b"}, 5)


def test_live_changes_under_load_and_restart(data_dir, backends):
    from conftest import Server
    server = Server(data_dir).start()
    try:
        elb = server.client("elbv2")
        a, b = backends("a"), backends("b")
        lb = elb.create_load_balancer(Name="live", Subnets=["s-1", "s-2"])["LoadBalancers"][0]
        tg = make_tg(elb, "live")
        elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": a.port}])
        port = free_port()
        ln = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                                 DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]
        wait_for(lambda: health(elb, tg)[a.port]["State"] == "healthy")
        failures, done, count = [], threading.Event(), [0]

        def load():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while not done.is_set():
                try:
                    c.request("GET", "/x")
                    r = c.getresponse()
                    r.read()
                    count[0] += 1
                    if r.status != 200:
                        failures.append(r.status)
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": b.port}])
        for p in range(1, 20):
            elb.create_rule(ListenerArn=ln["ListenerArn"], Priority=p,
                            Conditions=[{"Field": "path-pattern", "Values": [f"/r{p}/*"]}],
                            Actions=[{"Type": "forward", "TargetGroupArn": tg}])
        second = free_port()
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=second,
                            DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "200"}}])
        started = time.monotonic()
        wait_for(lambda: get(second, "/")[0] == 200, 5)
        assert time.monotonic() - started < 1.0, "a new listener serves within a second"
        wait_for(lambda: health(elb, tg)[b.port]["State"] == "healthy")
        time.sleep(1)
        done.set()
        for w in workers:
            w.join()
        assert failures == [] and count[0] > 100, (failures[:5], count[0])
        assert b.hits > 0, "the new target took traffic"
        before = elb.describe_rules(ListenerArn=ln["ListenerArn"])["Rules"]
        server.stop()
        server.start()
        elb = server.client("elbv2")
        assert elb.describe_load_balancers()["LoadBalancers"][0]["DNSName"] == lb["DNSName"]
        assert elb.describe_rules(ListenerArn=ln["ListenerArn"])["Rules"] == before
        wait_for(lambda: health(elb, tg).get(a.port, {}).get("State") == "healthy", 10)
        assert get(port, "/x")[0] == 200 and get(second, "/")[0] == 200
    finally:
        server.stop()


def echo_server(tls=None):
    """A TCP server that echoes each connection's bytes as they come and closes it after the
    client's EOF; with tls=(certificate, key) it speaks TLS only. Returns its port."""
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(16)

    def serve(c):
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            try:
                c = ctx.wrap_socket(c, server_side=True)
            except OSError:
                c.close()
                return
        for d in iter(lambda: c.recv(65536), b""):
            c.sendall(d)
        c.close()

    def accept():
        while True:
            threading.Thread(target=serve, args=(echo.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return echo.getsockname()[1]


def test_nlb_tcp_forwarding_and_tcp_health(server):
    elb = server.client("elbv2")
    echo_port = echo_server()
    closed = free_port()
    lb = elb.create_load_balancer(Name="tcp", Type="network", Subnets=["s-1"])["LoadBalancers"][0]
    assert "/net/" in lb["LoadBalancerArn"]
    defaults = elb.create_target_group(Name="tcp-defaults", Protocol="TCP", Port=1, TargetType="ip",
                                       VpcId="vpc-local")["TargetGroups"][0]
    assert (defaults["HealthCheckProtocol"], defaults["HealthCheckTimeoutSeconds"]) == ("TCP", 10)
    assert "Matcher" not in defaults and "HealthCheckPath" not in defaults
    tg = elb.create_target_group(Name="tcp", Protocol="TCP", Port=1, TargetType="ip", VpcId="vpc-local",
                                 HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2)["TargetGroups"][0]
    arn = tg["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": "127.0.0.1", "Port": p} for p in (echo_port, closed)])
    port = free_port()
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TCP", Port=port,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}])
    wait_for(lambda: health(elb, arn).get(closed, {}).get("State") == "unhealthy", 20)
    assert health(elb, arn)[closed]["Reason"] == "Target.FailedHealthChecks"
    wait_for(lambda: health(elb, arn)[echo_port]["State"] == "healthy")
    payload = bytes(range(256)) * 4096
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)), daemon=True).start()
        got = b"".join(iter(lambda: s.recv(65536), b""))
        s.close()
        assert got == payload


def test_instance_targets_resolve_to_container_instances(server, backends, tmp_path):
    """`instance` targets name ECS container instances (their ec2InstanceId); traffic goes to
    the address the agent registered with, and stops when the instance is deregistered."""
    from test_ecs_tasks import Agent

    elb, ecs = server.client("elbv2"), server.client("ecs")
    ecs.create_cluster(clusterName="lb")
    agent = Agent(server, "lb", str(tmp_path / "agent"))
    try:
        inst = ecs.describe_container_instances(cluster="lb", containerInstances=[agent.arn])["containerInstances"][0]
        iid = inst["ec2InstanceId"]
        b1, b2 = backends("b1"), backends("b2")
        lb = elb.create_load_balancer(Name="inst", Subnets=["s-1", "s-2"])["LoadBalancers"][0]
        tg = make_tg(elb, "inst", TargetType="instance")
        assert error_code(lambda: elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1"}])) == "ValidationError"
        assert error_code(lambda: elb.register_targets(
            TargetGroupArn=tg, Targets=[{"Id": "i-0123456789abcdef0"}])) == "InvalidTarget"
        server.cli("elbv2", "register-targets", "--target-group-arn", tg,
                   "--targets", f"Id={iid},Port={b1.port}", f"Id={iid},Port={b2.port}")
        port = free_port()
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
        wait_for(lambda: all(h["State"] == "healthy" for h in health(elb, tg).values()), 20)
        out = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
        assert sorted((d["Target"]["Id"], d["Target"]["Port"]) for d in out) == sorted([(iid, b1.port), (iid, b2.port)])
        assert count_backends(port, "/x", 10) == {"b1": 5, "b2": 5}

        # A deregistered instance stops getting traffic and cannot be registered again.
        agent.stop()
        ecs.deregister_container_instance(cluster="lb", containerInstance=agent.arn, force=True)
        wait_for(lambda: all(h.get("Reason") == "Target.InvalidState" for h in health(elb, tg).values()), 10)
        assert {h["State"] for h in health(elb, tg).values()} == {"unused"}
        assert get(port, "/x")[0] == 503
        r = server.cli("elbv2", "register-targets", "--target-group-arn", tg, "--targets", f"Id={iid},Port=81",
                       check=False)
        assert r.returncode != 0 and "InvalidTarget" in r.stderr and "not in a running state" in r.stderr
    finally:
        agent.stop()


def make_cert(tmp, name, cn, sans=(), ec=False):
    """A self-signed certificate and its key, made with the openssl CLI; returns the paths."""
    crt, key = str(tmp / f"{name}.crt"), str(tmp / f"{name}.key")
    algo = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if ec else ["-newkey", "rsa:2048"]
    args = ["openssl", "req", "-x509", *algo, "-nodes", "-keyout", key, "-out", crt, "-days", "30", "-subj", f"/CN={cn}"]
    if sans:
        args += ["-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in sans)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return crt, key


def import_cert(acm, crt, key, **kw):
    with open(crt, "rb") as c, open(key, "rb") as k:
        return acm.import_certificate(Certificate=c.read(), PrivateKey=k.read(), **kw)["CertificateArn"]


def tls_peek(port, server_name, alpn=("h2", "http/1.1")):
    """Handshakes with the listener: the certificate it served (DER), the ALPN protocol and the
    TLS version."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as t:
            return t.getpeercert(binary_form=True), t.selected_alpn_protocol(), t.version()


def assert_tls_echo(port, ca, server_name, payload):
    """Sends `payload` over TLS verified against `ca` for `server_name`; the same bytes must
    come back."""
    import ssl
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as t:
            t.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += t.recv(65536)
            assert got == payload


def der_of(crt):
    import ssl
    with open(crt) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def test_https_listeners_serve_acm_certificates_with_alpn_and_sni(server, backends, tmp_path):
    """ACM import → HTTPS listener: TLS with the policy's versions, HTTP/2 by ALPN, the
    certificate chosen by SNI, re-import served at once, and a certificate in use kept."""
    acm, elb = server.client("acm"), server.client("elbv2")
    www_crt, www_key = make_cert(tmp_path, "www", "www.example.test", ["www.example.test", "*.example.test"])
    api_crt, api_key = make_cert(tmp_path, "api", "api.other.test", ec=True)
    out = json.loads(server.cli("acm", "import-certificate", "--certificate", f"fileb://{www_crt}",
                                "--private-key", f"fileb://{www_key}", "--tags", "Key=team,Value=web").stdout)
    www = out["CertificateArn"]
    assert www.startswith("arn:aws:acm:us-east-1:")
    api = import_cert(acm, api_crt, api_key)
    d = acm.describe_certificate(CertificateArn=www)
    conformance.check("acm", "DescribeCertificate", d)
    c = d["Certificate"]
    assert (c["DomainName"], c["SubjectAlternativeNames"]) == ("www.example.test", ["www.example.test", "*.example.test"])
    assert (c["Type"], c["Status"], c["KeyAlgorithm"], c["InUseBy"]) == ("IMPORTED", "ISSUED", "RSA_2048", [])
    assert c["NotAfter"] > c["NotBefore"]
    assert acm.list_tags_for_certificate(CertificateArn=www)["Tags"] == [{"Key": "team", "Value": "web"}]
    assert acm.get_certificate(CertificateArn=www)["Certificate"].strip() == open(www_crt).read().strip()
    # ACM lists only RSA_1024/RSA_2048 certificates unless asked for other key types.
    listed = acm.list_certificates()
    conformance.check("acm", "ListCertificates", listed)
    assert [x["CertificateArn"] for x in listed["CertificateSummaryList"]] == [www]
    ec = acm.list_certificates(Includes={"keyTypes": ["EC_prime256v1"]})["CertificateSummaryList"]
    assert [(x["CertificateArn"], x["KeyAlgorithm"]) for x in ec] == [(api, "EC_prime256v1")]
    with open(www_crt, "rb") as crt, open(api_key, "rb") as key:
        bad = dict(Certificate=crt.read(), PrivateKey=key.read())
    assert error_code(lambda: acm.import_certificate(**bad)) == "ValidationException"
    assert error_code(lambda: acm.describe_certificate(CertificateArn=www[:-4] + "0000")) == "ResourceNotFoundException"
    assert error_code(lambda: acm.describe_certificate(CertificateArn="certificate-without-an-arn")) == "InvalidArnException"

    b = backends("b1")
    lb = elb.create_load_balancer(Name="tls", Subnets=["s-1", "s-2"])["LoadBalancers"][0]
    tg = make_tg(elb, "tls")
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": b.port}])
    port = free_port()
    listen = dict(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTPS", Port=port,
                  DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    assert error_code(lambda: elb.create_listener(**listen)) == "ValidationError"
    assert error_code(lambda: elb.create_listener(**listen, Certificates=[{"CertificateArn": www[:-4] + "0000"}])) \
        == "CertificateNotFound"
    assert error_code(lambda: elb.create_listener(**listen, Certificates=[{"CertificateArn": www}],
                                                  SslPolicy="Nope")) == "SSLPolicyNotFound"
    created = elb.create_listener(**listen, Certificates=[{"CertificateArn": www}],
                                  SslPolicy="ELBSecurityPolicy-TLS13-1-2-2021-06")
    conformance.check("elbv2", "CreateListener", created)
    listener = created["Listeners"][0]
    assert listener["Certificates"] == [{"CertificateArn": www}]
    wait_for(lambda: health(elb, tg)[b.port]["State"] == "healthy", 20)

    # Verified against the certificate as a CA, by name, over HTTP/2.
    url = f"https://www.example.test:{port}/x"
    r = subprocess.run(["curl", "-s", "--cacert", www_crt, "--resolve", f"www.example.test:{port}:127.0.0.1",
                        "-w", "\n%{http_version} %{http_code}", url], capture_output=True, text=True, timeout=20)
    body, _, status = r.stdout.rpartition("\n")
    assert status == "2 200", r.stderr
    headers = json.loads(body)["headers"]
    assert headers["x-forwarded-proto"] == "https" and headers["x-forwarded-port"] == str(port)
    assert headers["host"] == f"www.example.test:{port}"
    cert, alpn, version = tls_peek(port, "www.example.test")
    assert (cert, alpn, version) == (der_of(www_crt), "h2", "TLSv1.3")
    assert tls_peek(port, "x.example.test", alpn=("http/1.1",))[1:] == ("http/1.1", "TLSv1.3")

    # A second certificate for another name, chosen by SNI; unknown names get the default.
    added = elb.add_listener_certificates(ListenerArn=listener["ListenerArn"], Certificates=[{"CertificateArn": api}])
    conformance.check("elbv2", "AddListenerCertificates", added)
    listed = elb.describe_listener_certificates(ListenerArn=listener["ListenerArn"])["Certificates"]
    assert sorted((x["CertificateArn"], x["IsDefault"]) for x in listed) == sorted([(www, True), (api, False)])
    wait_for(lambda: tls_peek(port, "api.other.test")[0] == der_of(api_crt), 5)
    assert tls_peek(port, "unknown.test")[0] == der_of(www_crt)
    assert error_code(lambda: elb.remove_listener_certificates(
        ListenerArn=listener["ListenerArn"], Certificates=[{"CertificateArn": www}])) == "OperationNotPermitted"

    # In use: described so, and kept.
    assert acm.describe_certificate(CertificateArn=www)["Certificate"]["InUseBy"] == [lb["LoadBalancerArn"]]
    assert error_code(lambda: acm.delete_certificate(CertificateArn=www)) == "ResourceInUseException"
    # Re-importing rotates the certificate behind the same ARN; the next handshake gets it.
    new_crt, new_key = make_cert(tmp_path, "www2", "www.example.test", ["www.example.test"])
    assert import_cert(acm, new_crt, new_key, CertificateArn=www) == www
    wait_for(lambda: tls_peek(port, "www.example.test")[0] == der_of(new_crt), 5)
    r = subprocess.run(["curl", "-s", "--cacert", new_crt, "--resolve", f"www.example.test:{port}:127.0.0.1",
                        "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True, timeout=20)
    assert r.stdout == "200", r.stderr

    # Back to plain HTTP: the certificates are released and can be deleted.
    elb.remove_listener_certificates(ListenerArn=listener["ListenerArn"], Certificates=[{"CertificateArn": api}])
    elb.modify_listener(ListenerArn=listener["ListenerArn"], Protocol="HTTP")

    def plain_ok():
        try:
            return get(port, "/x")[0] == 200
        # The port still speaks TLS for a moment: a plain request is reset, or answered with a
        # TLS alert that http.client reads as a bad status line.
        except (OSError, http.client.HTTPException):
            return False
    wait_for(plain_ok, 5)
    acm.delete_certificate(CertificateArn=www)
    assert error_code(lambda: acm.get_certificate(CertificateArn=www)) == "ResourceNotFoundException"


def test_nlb_tls_listener_terminates_tls(server, tmp_path):
    acm, elb = server.client("acm"), server.client("elbv2")
    crt, key = make_cert(tmp_path, "nlb", "tcp.example.test")
    arn = import_cert(acm, crt, key)
    echo_port = echo_server()
    lb = elb.create_load_balancer(Name="tlsnlb", Type="network", Subnets=["s-1"])["LoadBalancers"][0]
    tg = elb.create_target_group(Name="tlsnlb", Protocol="TCP", Port=1, TargetType="ip", VpcId="vpc-local",
                                 HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2)["TargetGroups"][0]
    elb.register_targets(TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": "127.0.0.1", "Port": echo_port}])
    port = free_port()
    assert error_code(lambda: elb.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TLS", Port=port, Certificates=[{"CertificateArn": arn}],
        AlpnPolicy=["HTTP3"], DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])) \
        == "ALPNPolicyNotFound"
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TLS", Port=port,
                        Certificates=[{"CertificateArn": arn}], AlpnPolicy=["HTTP2Preferred"],
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])
    cert, alpn, version = tls_peek(port, "tcp.example.test")
    # ELBSecurityPolicy-2016-08 (the default) has no TLS 1.3.
    assert (cert, alpn, version) == (der_of(crt), "h2", "TLSv1.2")
    assert_tls_echo(port, crt, "tcp.example.test", bytes(range(256)) * 64)


def test_https_and_tls_target_groups_reach_targets_over_tls(server, backends, tmp_path):
    """HTTPS target groups: requests and health checks go to the targets over TLS, whose
    self-signed certificates are not validated (as on AWS); a TLS target group does the same for
    an NLB's connections. The same TLS-only target in an HTTP target group fails its checks."""
    elb = server.client("elbv2")
    crt, key = make_cert(tmp_path, "target", "target.internal")
    secure = backends("secure", tls=(crt, key))
    lb = elb.create_load_balancer(Name="to-tls", Subnets=["s-1", "s-2"])["LoadBalancers"][0]
    https_tg = make_tg(elb, "to-tls-https", Protocol="HTTPS", Port=443)
    described = elb.describe_target_groups(TargetGroupArns=[https_tg])["TargetGroups"][0]
    assert (described["Protocol"], described["HealthCheckProtocol"]) == ("HTTPS", "HTTPS")
    plain_tg = make_tg(elb, "to-tls-plain")
    for tg in (https_tg, plain_tg):
        elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": secure.port}])
    port = free_port()
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                                   DefaultActions=[{"Type": "forward", "TargetGroupArn": https_tg}])
    elb.create_rule(ListenerArn=listener["Listeners"][0]["ListenerArn"], Priority=1,
                    Conditions=[{"Field": "path-pattern", "Values": ["/plain/*"]}],
                    Actions=[{"Type": "forward", "TargetGroupArn": plain_tg}])

    # An NLB TLS listener in front of a TLS target group of a TLS-only echo server: TLS is
    # terminated and opened again towards the target. A TCP listener passes bytes through and
    # cannot forward to a TLS group.
    listener_crt, listener_key = make_cert(tmp_path, "front", "front.example.test")
    cert = import_cert(server.client("acm"), listener_crt, listener_key)
    echo_port = echo_server(tls=(crt, key))
    nlb = elb.create_load_balancer(Name="to-tls-nlb", Type="network", Subnets=["s-1"])["LoadBalancers"][0]
    tls_tg = elb.create_target_group(Name="to-tls-tls", Protocol="TLS", Port=443, TargetType="ip",
                                     VpcId="vpc-local", HealthCheckIntervalSeconds=5,
                                     HealthCheckTimeoutSeconds=2)["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=tls_tg, Targets=[{"Id": "127.0.0.1", "Port": echo_port}])
    nlb_port = free_port()
    forward_tls = [{"Type": "forward", "TargetGroupArn": tls_tg}]
    assert error_code(lambda: elb.create_listener(
        LoadBalancerArn=nlb["LoadBalancerArn"], Protocol="TCP", Port=nlb_port,
        DefaultActions=forward_tls)) == "IncompatibleProtocols"
    elb.create_listener(LoadBalancerArn=nlb["LoadBalancerArn"], Protocol="TLS", Port=nlb_port,
                        Certificates=[{"CertificateArn": cert}], DefaultActions=forward_tls)

    wait_for(lambda: health(elb, https_tg)[secure.port]["State"] == "healthy", 20)
    status, h, body = get(port, "/hello", host="to-tls.example")
    assert (status, h["x-backend"]) == (200, "secure"), body
    seen = json.loads(body)
    assert seen["path"] == "/hello" and seen["headers"]["x-forwarded-proto"] == "http"
    # Several requests on one client connection reuse the pooled TLS connection.
    assert count_backends(port, "/again", 5) == {"secure": 5}

    wait_for(lambda: health(elb, plain_tg)[secure.port]["State"] == "unhealthy", 20)
    assert health(elb, plain_tg)[secure.port]["Reason"] == "Target.FailedHealthChecks"
    # Fail-open sends the request anyway; plain HTTP to a TLS-only target breaks: 502.
    assert get(port, "/plain/x")[0] == 502

    wait_for(lambda: health(elb, tls_tg)[echo_port]["State"] == "healthy", 20)
    assert_tls_echo(nlb_port, listener_crt, "front.example.test", bytes(range(256)) * 32)


def named_tcp_target(name, port=0):
    """A TCP server on `port` (any when 0) answering each read with `name:` and the bytes;
    returns (port, stop), where stop() closes the listening socket (health checks then fail)
    but not open connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen(16)

    def answer(c):
        try:
            for d in iter(lambda: c.recv(65536), b""):
                c.sendall(f"{name}:".encode() + d)
        except ConnectionResetError:
            pass  # the load balancer ended the connection
        c.close()

    def accept():
        while True:
            try:
                c = srv.accept()[0]
            except OSError:
                return
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    def stop():
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1], stop


def udp_target(name):
    """A UDP server answering each datagram with `name:` and the datagram, and a TCP server on
    the same port number doing the same per connection (health checks, TCP_UDP); returns the
    port."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    named_tcp_target(name, port)

    def answer_datagrams():
        while True:
            data, peer = udp.recvfrom(65535)
            udp.sendto(f"{name}:".encode() + data, peer)

    threading.Thread(target=answer_datagrams, daemon=True).start()
    return port


def test_nlb_udp_and_tcp_udp_listeners_relay_flows(server):
    """UDP listeners relay datagrams per flow (a client's datagrams all go to one target, and
    its replies come back from the listener's port); TCP_UDP listeners take both on one port."""
    elb = server.client("elbv2")
    ports = {udp_target(n): n for n in ("u1", "u2")}
    lb = elb.create_load_balancer(Name="udp", Type="network", Subnets=["s-1"])["LoadBalancers"][0]
    assert error_code(lambda: elb.create_target_group(
        Name="udp-bad", Protocol="UDP", Port=53, TargetType="ip", VpcId="vpc-local",
        HealthCheckProtocol="UDP")) == "ValidationError"
    tgs = {}
    for proto in ("UDP", "TCP_UDP"):
        tgs[proto] = elb.create_target_group(
            Name=f"udp-{proto.lower().replace('_', '-')}", Protocol=proto, Port=53, TargetType="ip",
            VpcId="vpc-local", HealthCheckIntervalSeconds=5,
            HealthCheckTimeoutSeconds=2)["TargetGroups"][0]
        assert tgs[proto]["HealthCheckProtocol"] == "TCP"
        elb.register_targets(TargetGroupArn=tgs[proto]["TargetGroupArn"],
                             Targets=[{"Id": "127.0.0.1", "Port": p} for p in ports])
    udp_port, both_port = free_port(), free_port()
    assert error_code(lambda: elb.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TCP", Port=udp_port,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tgs["UDP"]["TargetGroupArn"]}])) \
        == "IncompatibleProtocols"
    for proto, port in (("UDP", udp_port), ("TCP_UDP", both_port)):
        out = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol=proto, Port=port,
                                  DefaultActions=[{"Type": "forward", "TargetGroupArn": tgs[proto]["TargetGroupArn"]}])
        conformance.check("elbv2", "CreateListener", out)
    for tg in tgs.values():
        wait_for(lambda: all(h["State"] == "healthy" for h in health(elb, tg["TargetGroupArn"]).values()), 20)

    relayed = 0

    def exchange(client, port, payload):
        nonlocal relayed
        client.sendto(payload, ("127.0.0.1", port))
        data, frm = client.recvfrom(65535)
        assert frm == ("127.0.0.1", port), frm
        name, _, echoed = data.partition(b":")
        assert echoed == payload
        relayed += len(payload) + len(data)
        return name.decode()

    seen = set()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(12)]
    for i, c in enumerate(clients):
        c.settimeout(5)
        first = exchange(c, udp_port, f"hello {i}".encode())
        # The flow keeps its target, large datagrams included.
        assert exchange(c, udp_port, bytes(range(256)) * 100) == first
        assert exchange(c, udp_port, b"again") == first
        seen.add(first)
    assert seen == {"u1", "u2"}, "twelve flows should not all hash to one target"
    # TCP_UDP: datagrams and connections on the same port.
    assert exchange(clients[0], both_port, b"datagram") in ("u1", "u2")
    with socket.create_connection(("127.0.0.1", both_port), timeout=5) as t:
        t.sendall(b"stream")
        assert t.recv(100).partition(b":")[2] == b"stream"
    # 13 flows: the twelve clients on the UDP listener, and the first again on TCP_UDP's port.
    label = ("load_balancer", lb["LoadBalancerArn"].split("loadbalancer/")[1])
    udp = lambda name: scrape(server).get((f"fleetport_elb_{name}", frozenset({label})))  # noqa: E731
    assert udp("new_flows_udp_total") == 13
    assert udp("active_flows_udp") == 13
    assert udp("processed_bytes_udp_total") == relayed
    assert udp("processed_bytes_total") >= relayed + 2 * len(b"stream") + 3
    for c in clients:
        c.close()


def test_workers_run_as_sched_batch_unless_told_otherwise(data_dir, tmp_path):
    """The ELB worker threads are SCHED_BATCH (policy 3) by default, and keep the policy
    Fleetport started with under --elb-scheduling normal; either way they serve traffic."""
    from conftest import Server

    def worker_policies(server):
        out = []
        for task in pathlib.Path(f"/proc/{server.proc.pid}/task").iterdir():
            stat = (task / "stat").read_text()
            if stat[stat.index("(") + 1:stat.rindex(")")].startswith("elb-worker-"):
                out.append(int(stat[stat.rindex(")") + 2:].split()[38]))
        return out

    started = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[38])
    for mode, dir_, want in (("batch", data_dir, 3), ("normal", str(tmp_path), started)):
        server = Server(dir_, ["--elb-scheduling", mode, "--elb-workers", "2"]).start()
        try:
            elb = server.client("elbv2")
            lb = elb.create_load_balancer(Name=f"sched-{mode}", Subnets=["s-1", "s-2"])["LoadBalancers"][0]
            port = free_port()
            elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                                DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {
                                    "StatusCode": "200", "MessageBody": mode}}])
            wait_for(lambda: len(worker_policies(server)) == 2, 10)
            assert worker_policies(server) == [want, want], mode
            for _ in range(20):
                body = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/"], capture_output=True,
                                      text=True, timeout=10).stdout
                assert body == mode
        finally:
            server.stop()


def test_nlb_connections_end_with_their_target_as_the_group_says(server):
    """NLB connections and UDP flows outlive their target's deregistration only when
    deregistration_delay.connection_termination.enabled is false (the TCP default; UDP groups
    default to true), and end when their target turns unhealthy while another is healthy."""
    elb = server.client("elbv2")
    lb = elb.create_load_balancer(Name="cut", Type="network", Subnets=["s-1"])["LoadBalancers"][0]["LoadBalancerArn"]
    checks = dict(HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2, HealthyThresholdCount=2,
                  UnhealthyThresholdCount=2)
    targets = {name: named_tcp_target(name) for name in ("a", "b", "c")}
    tcp = elb.create_target_group(Name="cut-tcp", Protocol="TCP", Port=1, TargetType="ip", VpcId="vpc-local",
                                  **checks)["TargetGroups"][0]["TargetGroupArn"]
    udp = elb.create_target_group(Name="cut-udp", Protocol="UDP", Port=1, TargetType="ip", VpcId="vpc-local",
                                  **checks)["TargetGroups"][0]["TargetGroupArn"]
    attrs = lambda tg: {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(TargetGroupArn=tg)["Attributes"]}  # noqa: E731
    assert attrs(tcp)["deregistration_delay.connection_termination.enabled"] == "false"
    assert attrs(tcp)["target_health_state.unhealthy.connection_termination.enabled"] == "true"
    assert attrs(udp)["deregistration_delay.connection_termination.enabled"] == "true"
    assert attrs(udp)["preserve_client_ip.enabled"] == "true"
    for tg in (tcp, udp):
        elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": "1"}])
    elb.register_targets(TargetGroupArn=tcp, Targets=[{"Id": "127.0.0.1", "Port": p} for p, _ in targets.values()])
    udp_ports = {udp_target(n): n for n in ("u1", "u2")}
    elb.register_targets(TargetGroupArn=udp, Targets=[{"Id": "127.0.0.1", "Port": p} for p in udp_ports])
    tcp_port, udp_port = free_port(), free_port()
    for proto, port, tg in (("TCP", tcp_port, tcp), ("UDP", udp_port, udp)):
        elb.create_listener(LoadBalancerArn=lb, Protocol=proto, Port=port,
                            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])

    def all_healthy(tg, n):
        h = health(elb, tg)
        return len(h) == n and all(t["State"] == "healthy" for t in h.values())

    wait_for(lambda: all_healthy(tcp, 3) and all_healthy(udp, 2), 30)

    def talk(c):
        c.sendall(b"hi")
        return c.recv(100).partition(b":")[0].decode()

    def connection_to(name):
        for _ in range(12):
            c = socket.create_connection(("127.0.0.1", tcp_port), timeout=5)
            if talk(c) == name:
                return c
            c.close()
        raise AssertionError(f"no connection reached {name}")

    def reset_within(c, seconds):
        """Whether the load balancer resets the connection (as AWS does) within `seconds`."""
        c.settimeout(seconds)
        try:
            c.recv(100)
        except ConnectionResetError:
            return True
        except socket.timeout:
            pass
        return False

    def deregister(tg, port):
        elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": port}])
        wait_for(lambda: port not in health(elb, tg), 10)

    # Termination off (the TCP default): the connection outlives its target's deregistration.
    a_port = targets["a"][0]
    kept = connection_to("a")
    deregister(tcp, a_port)
    time.sleep(2)
    assert talk(kept) == "a"
    kept.close()
    # Termination on: the connection ends when the delay does.
    elb.modify_target_group_attributes(TargetGroupArn=tcp, Attributes=[
        {"Key": "deregistration_delay.connection_termination.enabled", "Value": "true"}])
    elb.register_targets(TargetGroupArn=tcp, Targets=[{"Id": "127.0.0.1", "Port": a_port}])
    wait_for(lambda: all_healthy(tcp, 3), 20)
    doomed = connection_to("a")
    deregister(tcp, a_port)
    assert reset_within(doomed, 5), "the deregistered target's connection should have been reset"
    # An unhealthy target loses its connections while another target is healthy.
    on_b = connection_to("b")
    targets["b"][1]()
    wait_for(lambda: health(elb, tcp)[targets["b"][0]]["State"] == "unhealthy", 20)
    assert reset_within(on_b, 5), "the unhealthy target's connection should have been reset"
    on_c = connection_to("c")
    assert talk(on_c) == "c", "a healthy target's connection stays"
    on_c.close()
    # UDP: the flow's target is deregistered, so the client's next datagrams go to the other.
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)

    def udp_talk():
        client.sendto(b"x", ("127.0.0.1", udp_port))
        return client.recvfrom(100)[0].partition(b":")[0].decode()

    first = udp_talk()
    gone = next(p for p, n in udp_ports.items() if n == first)
    deregister(udp, gone)
    wait_for(lambda: udp_talk() != first, 10)
    client.close()


def test_invalid_requests_get_aws_error_codes(server):
    # The server must refuse what botocore would catch on the client side too.
    elb = boto3.client("elbv2", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test",
                       config=botocore.config.Config(parameter_validation=False, retries={"max_attempts": 1}))
    lb = elb.create_load_balancer(Name="errs", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"]
    conformance.check("elbv2", "DescribeLoadBalancers", elb.describe_load_balancers())
    tg = make_tg(elb, "errs")
    tcp_tg = elb.create_target_group(Name="errs-tcp", Protocol="TCP", Port=80, TargetType="ip",
                                     VpcId="vpc-local")["TargetGroups"][0]["TargetGroupArn"]
    port = free_port()
    ln = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                             DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"]
    conformance.check("elbv2", "DescribeListeners", elb.describe_listeners(LoadBalancerArn=lb))
    conformance.check("elbv2", "DescribeListenerAttributes", elb.describe_listener_attributes(ListenerArn=ln))
    conformance.check("elbv2", "DescribeLoadBalancerAttributes", elb.describe_load_balancer_attributes(LoadBalancerArn=lb))
    again = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port,
                                DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    assert again["Listeners"][0]["ListenerArn"] == ln, "CreateListener is idempotent"
    assert elb.create_load_balancer(Name="errs", Subnets=["s-1", "s-2"])["LoadBalancers"][0]["LoadBalancerArn"] == lb
    fixed = lambda code: [{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": code}}]  # noqa: E731
    missing_lb = lb[:-4] + "0000"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    cases = [
        ("LoadBalancerNotFound", lambda: elb.describe_load_balancers(LoadBalancerArns=[missing_lb])),
        ("LoadBalancerNotFound", lambda: elb.describe_load_balancers(Names=["nope"])),
        ("TargetGroupNotFound", lambda: elb.describe_target_health(TargetGroupArn=tg[:-4] + "0000")),
        ("ListenerNotFound", lambda: elb.describe_listeners(ListenerArns=[ln[:-4] + "0000"])),
        ("RuleNotFound", lambda: elb.describe_rules(RuleArns=[ln.replace(":listener/", ":listener-rule/") + "/0000000000000000"])),
        ("DuplicateLoadBalancerName", lambda: elb.create_load_balancer(Name="errs", Type="network", Subnets=["s-1"])),
        ("DuplicateTargetGroupName", lambda: make_tg(elb, "errs", Port=81)),
        ("DuplicateListener", lambda: elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=port, DefaultActions=fixed("200"))),
        ("ValidationError", lambda: elb.create_load_balancer(Name="-bad")),
        ("ValidationError", lambda: elb.create_load_balancer(Name="a" * 33)),
        ("ValidationError", lambda: elb.create_load_balancer(Name="internal-x")),
        ("ValidationError", lambda: elb.create_load_balancer(Name="a_b")),
        ("ValidationError", lambda: make_tg(elb, "t1", HealthCheckIntervalSeconds=4)),
        ("ValidationError", lambda: make_tg(elb, "t2", HealthyThresholdCount=11)),
        ("ValidationError", lambda: make_tg(elb, "t3", HealthCheckTimeoutSeconds=5, HealthCheckIntervalSeconds=5)),
        ("ValidationError", lambda: make_tg(elb, "t4", Matcher={"HttpCode": "600"})),
        ("ValidationError", lambda: elb.modify_load_balancer_attributes(LoadBalancerArn=lb, Attributes=[{"Key": "no.such", "Value": "1"}])),
        ("ValidationError", lambda: elb.create_rule(ListenerArn=ln, Priority=1, Conditions=[{"Field": "path-pattern", "Values": ["/x"]}], Actions=fixed("301"))),
        ("PriorityInUse", lambda: [elb.create_rule(ListenerArn=ln, Priority=7, Conditions=[{"Field": "path-pattern", "Values": [f"/{i}"]}], Actions=fixed("200")) for i in range(2)]),
        ("ResourceInUse", lambda: elb.delete_target_group(TargetGroupArn=tg)),
        ("IncompatibleProtocols", lambda: elb.create_rule(ListenerArn=ln, Priority=2, Conditions=[{"Field": "path-pattern", "Values": ["/t"]}], Actions=[{"Type": "forward", "TargetGroupArn": tcp_tg}])),
        ("InvalidLoadBalancerAction", lambda: elb.create_rule(ListenerArn=ln, Priority=3, Conditions=[{"Field": "path-pattern", "Values": ["/r"]}], Actions=[{"Type": "redirect", "RedirectConfig": {"StatusCode": "HTTP_301"}}])),
        ("InvalidTarget", lambda: elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "not-an-ip"}])),
        ("InvalidConfigurationRequest", lambda: elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=taken.getsockname()[1], DefaultActions=fixed("200"))),
        ("OperationNotPermitted", lambda: (elb.modify_load_balancer_attributes(LoadBalancerArn=lb, Attributes=[{"Key": "deletion_protection.enabled", "Value": "true"}]), elb.delete_load_balancer(LoadBalancerArn=lb))),
        ("ValidationError", lambda: elb.create_rule(ListenerArn=ln, Priority=4, Conditions=[{"Field": "path-pattern", "Values": ["/1", "/2", "/3"]}, {"Field": "host-header", "Values": ["a.b", "c.d", "e.f"]}], Actions=fixed("200"))),
        ("DuplicateTagKeys", lambda: elb.add_tags(ResourceArns=[lb], Tags=[{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}])),
    ]
    spare = free_port()
    many_tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    cases.append(("TooManyTags", lambda: elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=spare, DefaultActions=fixed("200"), Tags=many_tags)))
    for expected, call in cases:
        assert error_code(call) == expected, expected
    taken.close()
    # The failed CreateListener opened its port to check it, and closed it again.
    with socket.socket() as s:
        s.bind(("127.0.0.1", spare))
    # Failed changes changed nothing.
    attrs = {a["Key"]: a["Value"] for a in elb.describe_load_balancer_attributes(LoadBalancerArn=lb)["Attributes"]}
    assert attrs["idle_timeout.timeout_seconds"] == "60" and "no.such" not in attrs
    assert [t["TargetGroupName"] for t in elb.describe_target_groups()["TargetGroups"]] == ["errs", "errs-tcp"]
    assert len(elb.describe_rules(ListenerArn=ln)["Rules"]) == 2
    # Deleting what is gone succeeds; deleting an LB takes its listeners but not its target groups.
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb, Attributes=[{"Key": "deletion_protection.enabled", "Value": "false"}])
    elb.delete_load_balancer(LoadBalancerArn=missing_lb)
    elb.add_tags(ResourceArns=[lb, tg], Tags=[{"Key": "team", "Value": "web"}])
    tags = elb.describe_tags(ResourceArns=[lb, tg])
    conformance.check("elbv2", "DescribeTags", tags)
    assert [d["Tags"] for d in tags["TagDescriptions"]] == [[{"Key": "team", "Value": "web"}]] * 2
    elb.delete_load_balancer(LoadBalancerArn=lb)
    assert error_code(lambda: elb.describe_listeners(ListenerArns=[ln])) == "ListenerNotFound"
    elb.delete_target_group(TargetGroupArn=tg)
    attrs = {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(TargetGroupArn=tcp_tg)["Attributes"]}
    assert attrs["deregistration_delay.timeout_seconds"] == "300" and attrs["stickiness.type"] == "source_ip"
    for op, out in [("DescribeTargetGroups", elb.describe_target_groups()),
                    ("DescribeTargetGroupAttributes", elb.describe_target_group_attributes(TargetGroupArn=tcp_tg)),
                    ("DescribeSSLPolicies", elb.describe_ssl_policies())]:
        conformance.check("elbv2", op, out)
    limits = elb.describe_account_limits()
    conformance.check("elbv2", "DescribeAccountLimits", limits)
    assert elb.describe_ssl_policies(Names=["ELBSecurityPolicy-2016-08"])["SslPolicies"][0]["Name"] == "ELBSecurityPolicy-2016-08"
