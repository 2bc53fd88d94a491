"""Lifecycle state survives kill -9 of the coordinator: paused queues, dependencies,
results, rate limits; and a per-key rate limit holds with real nodes."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_client import Client, NodeState
from tests.harness import Proc, start_node, start_server, wait_until


def submit(address: str, **fields: object) -> task_pb2.Task:
    with grpc.insecure_channel(address) as channel:
        spec = task_pb2.TaskSpec(type="witness", payload=task_pb2.Payload(data=b"{}"), **fields)  # type: ignore[arg-type]
        request = task_service_pb2.SubmitTaskRequest(task=spec)
        return TaskServiceStub(channel).SubmitTask(request, timeout=10).task


def get(address: str, task_id: str) -> task_pb2.Task:
    with grpc.insecure_channel(address) as channel:
        request = task_service_pb2.GetTaskRequest(task_id=task_id)
        return TaskServiceStub(channel).GetTask(request, timeout=10).task


@pytest.mark.timeout(120)
def test_paused_queue_dependencies_and_results_survive_kill_9(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    node: Proc | None = None
    try:
        with grpc.insecure_channel(server.address) as channel:
            AdminServiceStub(channel).UpdateQueue(
                admin_service_pb2.UpdateQueueRequest(name="held", paused=True), timeout=10
            )
        node = start_node(server.address, tmp_path, "n1", "--queues", "default,held")
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
        done = submit(server.address)
        wait_until(lambda: get(server.address, done.id).state == task_pb2.TASK_STATE_SUCCEEDED, 20)
        held = submit(server.address, queue="held")
        parent = submit(server.address, queue="held")
        child = submit(server.address, depends_on=[parent.id])
        assert child.state == task_pb2.TASK_STATE_WAITING
        server.kill9()
        server = start_server(tmp_path / "data", name="restarted", listen=server.address)
        # The result is kept, the queue still paused, the child still waiting.
        kept = get(server.address, done.id)
        assert kept.state == task_pb2.TASK_STATE_SUCCEEDED
        assert json.loads(kept.result.data)["attempt"] == 1
        with grpc.insecure_channel(server.address) as channel:
            admin = AdminServiceStub(channel)
            queues = admin.ListQueues(admin_service_pb2.ListQueuesRequest(), timeout=10).queues
            assert {q.name: q.paused for q in queues}["held"] is True
            assert get(server.address, held.id).state == task_pb2.TASK_STATE_QUEUED
            assert get(server.address, child.id).state == task_pb2.TASK_STATE_WAITING
            admin.UpdateQueue(
                admin_service_pb2.UpdateQueueRequest(name="held", paused=False), timeout=10
            )
        # Resumed: the held tasks run, and the child runs after its parent.
        wait_until(
            lambda: get(server.address, child.id).state == task_pb2.TASK_STATE_SUCCEEDED,
            30,
            what="child done after its parent",
        )
        assert get(server.address, parent.id).state == task_pb2.TASK_STATE_SUCCEEDED
        assert get(server.address, held.id).state == task_pb2.TASK_STATE_SUCCEEDED
    finally:
        if node is not None:
            node.stop()
        server.stop()


@pytest.mark.timeout(120)
def test_rate_limit_per_key_with_real_nodes_survives_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    witness = tmp_path / "witness.log"
    nodes: list[Proc] = []
    try:
        with grpc.insecure_channel(server.address) as channel:
            AdminServiceStub(channel).SetRateLimit(
                admin_service_pb2.SetRateLimitRequest(key="tenant-a", per_second=20, burst=1),
                timeout=10,
            )
        server.kill9()  # the limit is durable
        server = start_server(tmp_path / "data", name="restarted", listen=server.address)
        with grpc.insecure_channel(server.address) as channel:
            specs = [
                task_pb2.TaskSpec(
                    type="witness", rate_key=key, payload=task_pb2.Payload(data=b"{}")
                )
                for key, n in (("tenant-a", 120), ("tenant-b", 120))
                for _ in range(n)
            ]
            TaskServiceStub(channel).SubmitTasks(
                task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=30
            )
        for i in range(2):
            nodes.append(
                start_node(
                    server.address,
                    tmp_path,
                    f"n{i}",
                    "--prefetch",
                    "4",
                    env={"DTQ_TEST_WITNESS": str(witness), "DTQ_NODE_ID": f"n{i}"},
                )
            )
        with Client(server.address) as client:
            wait_until(
                lambda: client.queues()[0].succeeded == 240, 60, interval_s=0.2, what="all run"
            )
            ids_a = {t.id for t in client.iter_tasks(queue="default") if t.rate_key == "tenant-a"}
        runs = [json.loads(line) for line in witness.read_text().splitlines()]
        times_a = sorted(r["ts"] for r in runs if r["task_id"] in ids_a)
        times_b = sorted(r["ts"] for r in runs if r["task_id"] not in ids_a)
        span_a = times_a[-1] - times_a[0]
        # 120 tasks at 20/s (burst 1): about 6 s; the other key is not held back.
        assert 119 / 20 * 0.9 <= span_a <= 119 / 20 * 1.25, span_a
        assert times_b[-1] - times_b[0] < span_a / 2
    finally:
        for proc in [*nodes, server]:
            proc.stop()
