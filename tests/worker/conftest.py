"""Fixtures for the worker tests: a fake coordinator and nodes running in threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dtq_worker import Node, Registry, WorkerConfig
from dtq_worker.demo import registry as demo_registry
from tests.worker.fake_coordinator import FakeCoordinator, serve


@pytest.fixture
def fake() -> Iterator[FakeCoordinator]:
    """A scripted worker-protocol coordinator on a free loopback port (``fake.address``)."""
    coordinator = FakeCoordinator()
    server, _ = serve(coordinator)
    try:
        yield coordinator
    finally:
        server.stop(grace=None)


@dataclass
class RunningNode:
    """A node running ``Node.run`` in a thread."""

    node: Node
    thread: threading.Thread
    result: dict[str, int] = field(default_factory=dict)

    def stop(self, timeout_s: float = 5.0) -> int:
        """Ask for a graceful shutdown and return the exit code."""
        self.node.stop()
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 5.0) -> int:
        """Wait for the node to exit on its own and return the exit code."""
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "node did not exit"
        return self.result["exit_code"]


@pytest.fixture
def start_node(
    fake: FakeCoordinator,
) -> Iterator[Callable[..., RunningNode]]:
    """Start nodes against ``fake``; each is stopped at the end of the test."""
    started: list[RunningNode] = []

    def start(registry: Registry = demo_registry, **overrides: Any) -> RunningNode:
        settings: dict[str, Any] = {
            "coordinator": fake.address,
            "threads": 2,
            "node_id": "test-node",
            "shutdown_grace_s": 2.0,
            "rpc_timeout_s": 2.0,
            "reconnect_backoff_max_s": 0.2,
        }
        settings.update(overrides)
        node = Node(WorkerConfig(**settings), registry)
        running = RunningNode(node, threading.Thread(target=lambda: None))
        running.thread = threading.Thread(
            target=lambda: running.result.__setitem__("exit_code", node.run()),
            name="test-node",
            daemon=True,
        )
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.node.stop()
            running.thread.join(5.0)
