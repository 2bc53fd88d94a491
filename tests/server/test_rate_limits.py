"""Rate limits per key and per queue, enforced by the coordinator across nodes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import grpc

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import InProcessCoordinator, RawNode, succeeded, wait_until


class EagerNode:
    """A RawNode that completes every assignment at once and records when it got it."""

    def __init__(self, address: str, slots: int, node_id: str) -> None:
        self.node = RawNode(address, node_id=node_id, slots=slots, auto_heartbeat=True)
        self.received: dict[str, list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.node.next("assignments", timeout_s=0.2)
            except AssertionError:
                continue
            now = time.monotonic()
            for a in message.assignments.assignments:
                key = a.payload.data.decode()
                self.received[key].append(now)
                self.node.report(succeeded(a.lease.task_id, a.lease.attempt, b"1"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.node.close()


def submit_many(tasks: TaskServiceStub, n: int, rate_key: str) -> None:
    specs = [
        task_pb2.TaskSpec(
            type="echo", rate_key=rate_key, payload=task_pb2.Payload(data=rate_key.encode())
        )
        for _ in range(n)
    ]
    tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=30)


def test_per_key_limit_holds_while_another_key_runs_unthrottled(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    # A burst of ten tokens: a dispatch round that comes later than the bucket's fill
    # (the round before it waits for its leases' commit; this process also runs the
    # nodes) loses the time beyond what the bucket holds. With a burst of 1 a loaded
    # run reached 154 of 500, with 5 a CI run 444; ten hold 200 ms.
    limit = admin.SetRateLimit(
        admin_service_pb2.SetRateLimitRequest(key="tenant-a", per_second=50, burst=10), timeout=10
    ).rate_limit
    assert (limit.key, limit.per_second, limit.burst) == ("tenant-a", 50, 10)
    listed = admin.ListRateLimits(admin_service_pb2.ListRateLimitsRequest(), timeout=10)
    assert [x.key for x in listed.rate_limits] == ["tenant-a"]
    submit_many(tasks, 700, "tenant-a")
    submit_many(tasks, 300, "tenant-b")
    nodes = [EagerNode(coordinator.address, slots=8, node_id=f"eager-{i}") for i in range(2)]
    try:
        started = time.monotonic()
        window_s = 10.0

        def count(key: str, until: float) -> int:
            return sum(t <= until for n in nodes for t in n.received[key])

        wait_until(lambda: count("tenant-b", float("inf")) == 300, 10, what="tenant-b done")
        b_done = max(t for n in nodes for t in n.received["tenant-b"]) - started
        # The window opens with the first tenant-a task, not before the nodes had
        # connected: on a busy machine that alone took over a second.
        wait_until(lambda: count("tenant-a", float("inf")) > 0, 10, what="tenant-a to start")
        first_a = min(t for n in nodes for t in n.received["tenant-a"])
        wait_until(lambda: time.monotonic() - first_a > window_s, window_s + 1)
        a_in_window = count("tenant-a", first_a + window_s)
        print(f"\ntenant-a: {a_in_window} in {window_s:.0f} s; tenant-b: 300 in {b_done:.2f} s")
        # The limit holds (the burst, then 50/s, plus 10 %), and is not much stricter
        # than asked: a limiter at half its rate, say, fails this.
        assert 400 <= a_in_window <= 10 + 550, a_in_window
        assert b_done < 5.0, "the unlimited key is not held back by the limited one"
    finally:
        for node in nodes:
            node.close()


def test_queue_rate_limit_is_durable_and_removable(
    coordinator: InProcessCoordinator, admin: AdminServiceStub
) -> None:
    queue = admin.UpdateQueue(
        admin_service_pb2.UpdateQueueRequest(name="slow", rate_limit=2.5), timeout=10
    ).queue
    assert queue.rate_limit == 2.5
    queue = admin.UpdateQueue(
        admin_service_pb2.UpdateQueueRequest(name="slow", rate_limit=0), timeout=10
    ).queue
    assert queue.rate_limit == 0
    try:
        admin.SetRateLimit(admin_service_pb2.SetRateLimitRequest(key="", per_second=1))
        raise AssertionError("an empty key must be refused")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_queue_rate_limit_paces_dispatch(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    admin.UpdateQueue(admin_service_pb2.UpdateQueueRequest(name="default", rate_limit=20))
    submit_many(tasks, 60, "")
    node = EagerNode(coordinator.address, slots=16, node_id="eager")
    try:
        wait_until(lambda: len(node.received[""]) == 60, 10, what="all 60 dispatched")
        times = sorted(node.received[""])
        # Burst of 20, then 20/s: the last of 60 comes about 2 s after the first.
        assert 1.6 <= times[-1] - times[0] <= 3.0, times[-1] - times[0]
    finally:
        node.close()
