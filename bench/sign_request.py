#!/usr/bin/env python3
"""Writes a wrk Lua script that replays one botocore-signed ECS request.

The signature stays valid for the 5-minute SigV4 window, long enough for one benchmark phase;
the script is regenerated before each phase. Usage: sign_request.py ENDPOINT OPERATION BODY OUT.lua
"""
import os
import sys

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def main():
    endpoint, operation, body, out = sys.argv[1:5]
    req = AWSRequest(method="POST", url=endpoint + "/", data=body.encode(), headers={
        "X-Amz-Target": f"AmazonEC2ContainerServiceV20141113.{operation}",
        "Content-Type": "application/x-amz-json-1.1",
    })
    # SIGN_KEY/SIGN_SECRET sign as another principal (an IAM user's key, another account's
    # 12-digit key); SIGN_REGION for another region.
    key = os.environ.get("SIGN_KEY", "test")
    secret = os.environ.get("SIGN_SECRET", "test")
    region = os.environ.get("SIGN_REGION", "us-east-1")
    SigV4Auth(Credentials(key, secret), "ecs", region).add_auth(req)
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_str(body)}"]
    for k, v in req.prepare().headers.items():
        if k.lower() in ("content-length",):
            continue
        lines.append(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}")
    # Report wrk's count of error statuses, so a benchmark of errors cannot pass for a fast one.
    lines.append("done = function(summary, latency, requests) io.write(string.format('non2xx %d\\n', summary.errors.status)) end")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
