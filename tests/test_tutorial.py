"""The tutorial (docs/tutorial.md) as a test: its `sh` blocks run in order in one shell, exactly
as written, with the AWS CLI, Docker and `fleetport` on PATH; blocks the tutorial says to run "in
a second terminal" run in the background. The Korean tutorial must carry the same commands."""
import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import AWS_CLI, BIN, ROOT
from test_ecs_tasks import docker, remove_containers

DOC = os.path.join(ROOT, "docs", "tutorial.md")
DOC_KO = os.path.join(ROOT, "docs", "tutorial.ko.md")


def blocks(path):
    """(background, code) for each ```sh block, in order; a block runs in the background when the
    line just before it says so."""
    text = open(path, encoding="utf-8").read()
    out = []
    for m in re.finditer(r"(?P<before>[^\n]*)\n```sh\n(?P<code>.*?)\n```", text, re.S):
        before = m.group("before")
        background = "second terminal" in before or "두 번째 터미널" in before
        out.append((background, m.group("code")))
    return out


def test_korean_tutorial_runs_the_same_commands():
    assert blocks(DOC_KO) == blocks(DOC)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_tutorial_runs_as_written():
    if not shutil.which("node"):
        pytest.fail("the tutorial builds its image from the host's node binary: install nodejs")
    for port in (4566, 8080, 3000):
        assert port_free(port), f"port {port} is in use; the tutorial needs it"
    tmp = tempfile.mkdtemp(prefix="fleetport-tutorial-")
    script = ["set -euo pipefail", "set -x"]
    for n, (background, code) in enumerate(blocks(DOC)):
        if background:
            script.append(f"( {code} ) > {tmp}/bg{n}.log 2>&1 &")
            script.append(f"echo $! >> {tmp}/pids")
            if "fleetport up" in code:
                # What a reader sees as the banner: wait until the endpoint answers.
                script.append("for i in $(seq 1 100); do curl -s -o /dev/null localhost:4566 && break; sleep 0.2; done")
        else:
            script.append(code)
    env = dict(os.environ)
    env.update(HOME=tmp, DOCKER_CONFIG=os.path.join(tmp, ".docker"), AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               PATH=os.pathsep.join([os.path.dirname(BIN), os.path.dirname(AWS_CLI), env.get("PATH", "")]))
    # Why a request failed is in the load balancer's debug log, kept with the test's output.
    env.setdefault("FLEETPORT_LOG", "info,fleetport_elb=debug,fleetport_ecs=debug")
    for k in ("AWS_PROFILE", "XDG_DATA_HOME", "FLEETPORT_ENDPOINT", "FLEETPORT_CLUSTER"):
        env.pop(k, None)
    try:
        r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp, env=env, capture_output=True, text=True,
                           timeout=900)
        log = r.stdout + "\n--- stderr ---\n" + r.stderr[-6000:]
        if os.environ.get("TUTORIAL_LOG"):
            with open(os.environ["TUTORIAL_LOG"], "w") as f:
                f.write(log + "\n--- fleetport up ---\n" + open(f"{tmp}/bg0.log").read())
        assert r.returncode == 0, log
        out = r.stdout
        # Step 6: two tasks answer through the load balancer.
        hellos = re.findall(r"Hello from (\w+) \(version (\d)\)", out)
        assert len({h for h, v in hellos if v == "1"}) == 2, log
        # Step 7: every request during the rolling update answered 200, and v2 took over.
        codes = open(os.path.join(tmp, "codes.txt")).read().split()
        assert codes, "the load loop made no request"
        bad = len(codes) - codes.count("200")
        if bad:
            up_log = open(f"{tmp}/bg0.log").read()
            failed = [line for line in up_log.splitlines() if "target failed" in line]
            raise AssertionError(f"{bad} of {len(codes)} requests failed during the rolling update: "
                                 f"{sorted(set(codes))}; {failed[-5:]}\n{log}")
        assert hellos[-1][1] == "2" or "(version 2)" in out, log
        # Step 8: the Fargate service answers; a Spot task was interrupted and replaced.
        assert '"stopCode": "SpotInterruption"' in out or "SpotInterruption" in out, log
        # Step 9: the events of the classic mistakes.
        assert "(service too-big) was unable to place a task because no container instance met all of its " \
               "requirements. The closest matching (container-instance " in out and \
               "has insufficient memory available." in out, log
        assert "is already using a port required by your task." in out, log
        assert re.search(r"\(service web-bad\) \(task \w+\) \(instance i-\w+\) \(port \d+\) is unhealthy in "
                         r"\(target-group arn:aws:elasticloadbalancing:[^)]+\) due to \(reason Health checks failed "
                         r"with these codes: \[200\]\)\.", out), log
        for s in ("has reached a steady state.", "targets in (target-group", "deployment completed."):
            assert s in out, s
    finally:
        pids = os.path.join(tmp, "pids")
        if os.path.exists(pids):
            for pid in open(pids).read().split():
                subprocess.run(["pkill", "-TERM", "-P", pid], check=False)
                subprocess.run(["kill", "-TERM", pid], check=False)
        remove_containers("demo")
        for tag in ("1", "2"):
            docker("rmi", "-f", f"localhost:4566/web:{tag}", check=False)
        shutil.rmtree(tmp, ignore_errors=True)
