"""An agent cut off from the control plane for two minutes, as a host behind a failed link would
be: its tasks keep serving through the load balancer, ECS's view marks the agent disconnected
without replacing its tasks, and once the link is back the agent reconciles: a scale-up asked for
meanwhile starts exactly the one task it needs, and no task runs twice."""
import socket
import threading
import time

from conftest import wait_for
from test_ecs_services import alb, healthy_targets, service, stable_now, web
from test_ecs_tasks import Agent, docker, env, remove_containers  # noqa: F401  (fixture)
from test_postgres_store import RetryingLoad

PARTITION_SECONDS = 120


class Link:
    """A TCP path from the agent to the control plane that the test can cut and heal."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.conns, self.lock = [], threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.heal()

    def heal(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.listener = s
        threading.Thread(target=self.accept, args=(s,), daemon=True).start()

    def accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Nothing gets through: the listener is gone and open connections are reset."""
        # Shut down first: a close alone leaves the thread blocked in accept() (and the socket
        # listening) on Linux.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns = []


def test_a_partitioned_agent_keeps_serving_and_reconciles_without_duplicates(env):
    ecs, cluster, server = env["ecs"], env["cluster"], env["server"]
    link = Link(server.port)
    agent = Agent(server, cluster, env["tmp"] + "/partitioned", endpoint=f"http://127.0.0.1:{link.port}")
    env["agents"].append(agent)
    ecs.register_task_definition(family="web", containerDefinitions=[web(env["image"], "v1")])
    tg, port, _ = alb(server, "cut")
    ecs.create_service(cluster=cluster, serviceName="web", taskDefinition="web:1", desiredCount=2,
                       loadBalancers=[{"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}])
    elb = server.client("elbv2")

    def healthy():
        return len(healthy_targets(elb, tg))

    def connected():
        return ecs.describe_container_instances(cluster=cluster, containerInstances=[agent.arn])[
            "containerInstances"][0]["agentConnected"]

    def containers():
        return docker("ps", "-q", "--filter", f"label=com.amazonaws.ecs.cluster={cluster}").stdout.split()

    wait_for(lambda: stable_now(ecs, cluster, "web") and healthy() == 2, 90, 0.5)
    before = set(ecs.list_tasks(cluster=cluster, serviceName="web")["taskArns"])
    load = RetryingLoad(port)
    link.cut()
    cut_at = time.monotonic()
    print(f"cut the agent off the control plane for {PARTITION_SECONDS} s")
    # Past the agent timeout the instance shows disconnected; its tasks are not replaced.
    wait_for(lambda: connected() is False, 90, 1)
    print(f"agentConnected false {time.monotonic() - cut_at:.0f} s into the partition")
    ecs.update_service(cluster=cluster, service="web", desiredCount=3)
    while time.monotonic() - cut_at < PARTITION_SECONDS:
        assert set(ecs.list_tasks(cluster=cluster, serviceName="web")["taskArns"]) == before
        assert len(containers()) == 2
        time.sleep(5)
    svc = service(ecs, cluster, "web")
    assert svc["runningCount"] == 2 and svc["pendingCount"] == 0, svc
    link.heal()
    print("link healed")
    wait_for(connected, 30, 0.5)
    wait_for(lambda: stable_now(ecs, cluster, "web") and healthy() == 3, 90, 0.5)
    after = set(ecs.list_tasks(cluster=cluster, serviceName="web")["taskArns"])
    answers, failures = load.finish()
    print(f"through the load balancer meanwhile: {answers}; failed: {failures[:5]}")
    assert failures == [] and answers.get("v1", 0) > 100, (answers, failures[:5])
    # The two tasks from before still run, one more was started, nothing twice.
    assert before < after and len(after) == 3, (before, after)
    assert len(containers()) == 3
    assert ecs.list_tasks(cluster=cluster, serviceName="web", desiredStatus="STOPPED")["taskArns"] == []
    print("after the partition: the same two tasks and the one the scale-up asked for")
