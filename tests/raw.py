"""Raw HTTP requests signed by botocore's own SigV4 implementation, for inputs SDKs refuse to send."""
import datetime
import json
import urllib.error
import urllib.parse
import urllib.request

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ECS_PREFIX = "AmazonEC2ContainerServiceV20141113"


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


def send(method, url, body=b"", headers=None):
    req = urllib.request.Request(url, data=body if method != "GET" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Reply(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


def signed(endpoint, body, headers, service="ecs", key="test", secret="test", region="us-east-1",
           method="POST", path="/", when=None, presign=False, sign_body=True):
    url = endpoint + path
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    creds = Credentials(key, secret)
    if presign:
        auth = SigV4QueryAuth(creds, service, region, expires=300)
    else:
        auth = SigV4Auth(creds, service, region)
    if when is not None:
        # botocore reads the clock through datetime; sign as of a chosen instant.
        import botocore.auth as ba

        real = ba.datetime.datetime

        class Fixed(real):
            @classmethod
            def utcnow(cls):
                return when

            @classmethod
            def now(cls, tz=None):
                return when.replace(tzinfo=tz) if tz else when

        ba.datetime.datetime = Fixed
        try:
            auth.add_auth(req)
        finally:
            ba.datetime.datetime = real
    else:
        if not sign_body:
            req.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        auth.add_auth(req)
    prepared = req.prepare()
    hdrs = {k: v for k, v in prepared.headers.items()}
    return send(method, prepared.url, prepared.body or b"", hdrs)


def ecs_call(endpoint, operation, payload, **kw):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"X-Amz-Target": f"{ECS_PREFIX}.{operation}", "Content-Type": "application/x-amz-json-1.1"}
    return signed(endpoint, body, headers, **kw)


def query_call(endpoint, params, service="elasticloadbalancing", **kw):
    body = urllib.parse.urlencode(params).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    return signed(endpoint, body, headers, service=service, **kw)


def utc(seconds_from_now):
    return datetime.datetime.utcnow() + datetime.timedelta(seconds=seconds_from_now)


def reset(endpoint, **kw):
    """POST /_fleetport/reset, signed like any API call (the scope's service is not checked)."""
    # urllib adds a form Content-Type to every POST; name it so that it is signed.
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return signed(endpoint, b"", headers, service="fleetport", path="/_fleetport/reset", **kw)
