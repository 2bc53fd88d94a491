"""A node with prefetch holds tasks beyond its threads, and still runs only as many at once."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import start_node, start_server, wait_until


@pytest.mark.timeout(60)
def test_prefetch_buffers_leases_beyond_threads(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    node = start_node(server.address, tmp_path, "buffered", "--prefetch", "3", threads=2)
    try:
        with grpc.insecure_channel(server.address) as channel:
            admin, tasks = AdminServiceStub(channel), TaskServiceStub(channel)
            specs = [
                task_pb2.TaskSpec(type="witness", payload=task_pb2.Payload(data=b'{"sleep": 3}'))
                for _ in range(10)
            ]
            tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10)

            def listed() -> admin_service_pb2.Node | None:
                nodes = admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
                return nodes[0] if nodes else None

            wait_until(lambda: (n := listed()) is not None and n.busy_slots == 5, 15)
            node_info = listed()
            assert node_info is not None
            assert (node_info.slots, node_info.prefetch) == (2, 3)

            def running() -> int:
                request = task_service_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_RUNNING)
                return len(tasks.ListTasks(request, timeout=10).tasks)

            wait_until(lambda: running() == 2, 10, what="two running")
            assert running() == 2, "prefetched tasks wait; only the threads run"
    finally:
        node.stop()
        server.stop()
