"""A node with prefetch holds tasks beyond its threads, and still runs only as many at once.

``--prefetch auto`` (the default) holds extra tasks only while they are short:
real nodes, real coordinator, the node's own heartbeats.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_client import Client, TaskSpec
from dtq_worker.prefetch import CAP_PER_SLOT
from tests.harness import (
    InProcessCoordinator,
    Proc,
    ServerProcess,
    start_node,
    start_server,
    wait_until,
)
from tests.worker.nodes import RunningNode, node_info


class _Cluster:
    """A coordinator process, the worker node processes started on it, and stubs."""

    def __init__(self, tmp_path: Path, channel: grpc.Channel, server: ServerProcess) -> None:
        self._tmp_path = tmp_path
        self.server = server
        self.nodes: list[Proc] = []
        self.admin = AdminServiceStub(channel)
        self.tasks = TaskServiceStub(channel)

    def start_node(self, node_id: str, *extra_args: str, threads: int) -> Proc:
        node = start_node(
            self.server.address, self._tmp_path, node_id, *extra_args, threads=threads
        )
        self.nodes.append(node)
        return node

    def listed(self) -> dict[str, admin_service_pb2.Node]:
        """The coordinator's nodes by id."""
        nodes = self.admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
        return {node.node_id: node for node in nodes}

    def sleeps(self, seconds: float, count: int) -> list[str]:
        """Submit ``count`` witness tasks of ``seconds`` each; their ids."""
        data = json.dumps({"sleep": seconds}).encode()
        spec = task_pb2.TaskSpec(type="witness", payload=task_pb2.Payload(data=data))
        request = task_service_pb2.SubmitTasksRequest(tasks=[spec] * count)
        return [result.task.id for result in self.tasks.SubmitTasks(request, timeout=10).results]

    def echoes(self, count: int, data: bytes = b"1") -> None:
        """Submit ``count`` echo tasks of payload ``data``."""
        specs = [task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=data))] * count
        self.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10)

    def succeeded(self, ids: list[str]) -> list[task_pb2.Task]:
        """The tasks once every one of them has succeeded, else []."""
        get = self.tasks.GetTask
        found = [get(task_service_pb2.GetTaskRequest(task_id=i), timeout=10).task for i in ids]
        return found if all(t.state == task_pb2.TASK_STATE_SUCCEEDED for t in found) else []


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[_Cluster]:
    """A real coordinator process; tests start the nodes. Everything stops afterwards."""
    server = start_server(tmp_path / "data")
    try:
        with grpc.insecure_channel(server.address) as channel:
            running = _Cluster(tmp_path, channel, server)
            try:
                yield running
            finally:
                for node in running.nodes:
                    node.stop()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_prefetch_buffers_leases_beyond_threads(cluster: _Cluster) -> None:
    cluster.start_node("buffered", "--prefetch", "3", threads=2)
    cluster.sleeps(3, 10)
    wait_until(
        lambda: (n := cluster.listed().get("buffered")) is not None and n.busy_slots == 5, 15
    )
    info = cluster.listed()["buffered"]
    assert (info.slots, info.prefetch) == (2, 3)

    def running() -> int:
        request = task_service_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_RUNNING)
        return len(cluster.tasks.ListTasks(request, timeout=10).tasks)

    wait_until(lambda: running() == 2, 10, what="two running")
    assert running() == 2, "prefetched tasks wait; only the threads run"


@pytest.mark.timeout(60)
def test_auto_prefetch_buffers_short_tasks(cluster: _Cluster) -> None:
    cluster.start_node("quick", threads=2)  # --prefetch auto
    wait_until(lambda: "quick" in cluster.listed(), 15, what="the node to register")
    assert cluster.listed()["quick"].prefetch == 0, "it starts holding nothing extra"
    cluster.echoes(3000)
    # Echo runs in well under the 2 ms round-trip floor: a deep buffer (at least 2
    # per slot even if the machine is slow enough to stretch jobs), within the cap.
    wait_until(lambda: cluster.listed()["quick"].prefetch >= 4, 20, what="prefetch >= 4")
    assert cluster.listed()["quick"].prefetch <= 2 * CAP_PER_SLOT


@pytest.mark.timeout(60)
def test_auto_prefetch_holds_fewer_large_payloads(cluster: _Cluster) -> None:
    # 2 kB payloads against a 20 kB budget: at most 10 held, where echo tasks this
    # short would otherwise get dozens (the test above).
    cluster.start_node("bounded", "--prefetch-buffer-bytes", "20000", threads=2)
    wait_until(lambda: "bounded" in cluster.listed(), 15, what="the node to register")
    seen: set[int] = set()

    def prefetch() -> int:
        seen.add(value := cluster.listed()["bounded"].prefetch)
        return value

    for _ in range(3):  # 2 MB a request, within the message limit
        cluster.echoes(1000, json.dumps("x" * 1998).encode())
    wait_until(lambda: prefetch() >= 4, 20, what="prefetch >= 4")
    wait_until(lambda: cluster.listed()["bounded"].busy_slots == 0, 30, what="the echoes done")
    assert max(seen) <= 10, f"the node held more than its byte budget: {sorted(seen)}"


@pytest.mark.timeout(60)
def test_auto_prefetch_leaves_long_tasks_for_an_idle_node(cluster: _Cluster) -> None:
    cluster.start_node("first", threads=1)  # --prefetch auto
    wait_until(lambda: "first" in cluster.listed(), 15, what="the first node")
    ids = cluster.sleeps(1, 4)
    wait_until(lambda: cluster.listed()["first"].busy_slots == 1, 15, what="one running")
    cluster.start_node("second", threads=1)
    wait_until(lambda: bool(cluster.succeeded(ids)), 30, what="the four tasks")
    ran_on = [task.node_id for task in cluster.succeeded(ids)]
    assert ran_on.count("second") >= 1, f"queued long tasks waited on a busy node: {ran_on}"
    assert cluster.listed()["first"].prefetch == 0


@pytest.mark.timeout(60)
def test_auto_prefetch_is_sent_as_soon_as_it_grows_not_at_the_next_heartbeat(
    make_coordinator: Callable[..., InProcessCoordinator],
    run_node: Callable[..., RunningNode],
) -> None:
    # Heartbeats every 30 s: none is due during the test, so a prefetch the
    # coordinator learns came in the heartbeat the node sent of its own accord.
    coordinator = make_coordinator(heartbeat_interval_s=30.0, heartbeat_timeout_s=60.0)
    node = run_node(coordinator.address, node_id="eager", threads=2)
    with Client(coordinator.address) as client:
        wait_until(lambda: node_info(client, "eager") is not None, 10, what="registered")
        client.submit_many([TaskSpec("echo", i) for i in range(2000)])

        def prefetch() -> int:
            info = node_info(client, "eager")
            return 0 if info is None else info.prefetch

        wait_until(lambda: prefetch() > 0, 20, what="the node's prefetch to reach the coordinator")
    assert node.node.prefetch > 0


@pytest.mark.timeout(90)
def test_auto_prefetch_hands_back_queued_tasks_that_turned_long(cluster: _Cluster) -> None:
    first = cluster.start_node("first", threads=2)  # --prefetch auto
    wait_until(lambda: "first" in cluster.listed(), 15, what="the first node")
    cluster.echoes(3000)
    queue = admin_service_pb2.ListQueuesRequest()
    wait_until(
        lambda: cluster.admin.ListQueues(queue, timeout=10).queues[0].succeeded == 3000,
        30,
        what="the short tasks",
    )
    assert cluster.listed()["first"].prefetch >= 10, "short tasks: a deep buffer"
    # Now long tasks: the node takes all ten (two run, eight wait in its buffer).
    ids = cluster.sleeps(1.5, 10)
    # Within about one run time the node sees they are long and hands back
    # the queued ones; a node started now can run them.
    wait_until(lambda: cluster.listed()["first"].prefetch == 0, 20, what="prefetch 0")
    cluster.start_node("second", "--prefetch", "0", threads=2)
    wait_until(lambda: bool(cluster.succeeded(ids)), 60, what="the ten long tasks")
    ran_on = [(task.node_id, task.attempt) for task in cluster.succeeded(ids)]
    assert any(node == "second" for node, _ in ran_on), f"kept on a busy node: {ran_on}"
    assert any(attempt == 2 for _, attempt in ran_on), ran_on  # handed back, leased again
    assert "tasks.handed_back" in first.log_path.read_text()
