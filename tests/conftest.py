"""Black-box fixtures: start a real `fleetport up` and drive it with real AWS clients.

The binary comes from FLEETPORT_BIN (default: target/debug/fleetport, built by scripts/test).
Each server gets an ephemeral port and its own data directory.
"""
import os
import re
import signal
import subprocess
import tempfile
import time

import boto3
import botocore.config
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FLEETPORT_BIN", os.path.join(ROOT, "target", "debug", "fleetport"))
AWS_CLI = os.environ.get("FLEETPORT_AWS_CLI", os.path.join(ROOT, ".venv", "bin", "aws"))


def wait_for(check, seconds=30, every=0.2):
    """Polls `check` until it returns something truthy, which it returns; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


class Server:
    """One running `fleetport up` process."""

    def __init__(self, data_dir, extra_args=(), env=None, host="127.0.0.1", preexec_fn=None):
        self.preexec_fn = preexec_fn
        self.data_dir = data_dir
        self.host = host
        self.extra_args = list(extra_args)
        self.env = env
        self.proc = None
        self.endpoint = None
        self.banner = ""

    def start(self, port=0):
        args = [BIN, "up", "--listen", f"{self.host}:{port}", "--data-dir", self.data_dir, *self.extra_args]
        env = dict(os.environ)
        env.update(self.env or {})
        started = time.monotonic()
        # The log goes to a file: a pipe nobody reads fills up and blocks the server's logging.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True,
                                     preexec_fn=self.preexec_fn)
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("fleetport exited: " + self.logs())
            lines.append(line)
            m = re.match(r"\s+listening:\s+(\S+)", line)
            if m:
                # Clients always use loopback, even when the server binds every address.
                self.endpoint = "http://127.0.0.1:" + m.group(1).rsplit(":", 1)[1]
            if line.startswith("  export AWS_ENDPOINT_URL"):
                break
        self.ready_seconds = time.monotonic() - started
        self.banner = "".join(lines)
        return self

    def logs(self):
        """Everything the server logged so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    @property
    def port(self):
        return int(self.endpoint.rsplit(":", 1)[1])

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def client(self, service, key="test", secret="test", region="us-east-1"):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )

    def cli(self, *args, check=True, key="test", secret="test", timeout=60):
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=key,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        )
        env.pop("AWS_PROFILE", None)
        r = subprocess.run([AWS_CLI, *args, "--output", "json"], capture_output=True, text=True, env=env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed: {r.stderr}")
        return r


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="fleetport-test-") as d:
        yield d


@pytest.fixture
def server(data_dir):
    s = Server(data_dir, ["--enable-reset"]).start()
    yield s
    s.stop()


@pytest.fixture
def ecs(server):
    return server.client("ecs")
