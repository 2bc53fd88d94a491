"""Lifecycle features with real coordinator and node processes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from dtq.v1 import admin_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq_client import Client, NodeState, TaskSpec, TaskState
from tests.harness import Proc, start_node, start_server, wait_until


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.timeout(120)
def test_global_concurrency_limit_of_3_across_3_nodes_x_4_threads(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    witness = tmp_path / "witness.log"
    nodes: list[Proc] = []
    try:
        with Client(server.address) as client:
            with grpc.insecure_channel(server.address) as channel:
                AdminServiceStub(channel).UpdateQueue(
                    admin_service_pb2.UpdateQueueRequest(name="default", max_running=3),
                    timeout=10,
                )
            for i in range(3):
                nodes.append(
                    start_node(
                        server.address,
                        tmp_path,
                        f"n{i}",
                        threads=4,
                        env={"DTQ_TEST_WITNESS": str(witness), "DTQ_NODE_ID": f"n{i}"},
                    )
                )
            wait_until(lambda: sum(n.state is NodeState.ACTIVE for n in client.nodes()) == 3, 20)
            ids = [r.task.id for r in client.submit_many([TaskSpec("span", {"sleep": 0.2})] * 30)]
            wait_until(
                lambda: all(client.get(i).state is TaskState.SUCCEEDED for i in ids),
                60,
                interval_s=0.2,
                what="all 30 done",
            )
        running = peak = 0
        for event in sorted(events(witness), key=lambda e: (e["ts"], e["event"] == "start")):
            running += 1 if event["event"] == "start" else -1
            peak = max(peak, running)
        assert peak == 3, f"at most 3 at once (and the limit is used): peak {peak}"
        assert len({e["node_id"] for e in events(witness)}) >= 2
    finally:
        for proc in [*nodes, server]:
            proc.stop()


@pytest.mark.timeout(120)
def test_delayed_task_survives_kill_9_and_runs_on_time(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    witness = tmp_path / "witness.log"
    node = None
    try:
        with Client(server.address) as client:
            due = time.time() + 4
            task = client.submit("witness", {}, run_at=datetime.fromtimestamp(due, UTC))
        server.kill9()
        server = start_server(tmp_path / "data", name="restarted", listen=server.address)
        node = start_node(server.address, tmp_path, "late", env={"DTQ_TEST_WITNESS": str(witness)})
        with Client(server.address) as client:
            done = client.wait(task.id, timeout_s=30)
            assert done.state is TaskState.SUCCEEDED
        (run,) = events(witness)
        wall = float(run["wall"])  # type: ignore[arg-type]
        assert wall >= due - 0.05, "never dispatched before its time"
        assert wall <= due + 3
    finally:
        if node is not None:
            node.stop()
        server.stop()
