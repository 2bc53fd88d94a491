"""Fixtures for the worker tests: real coordinators, and worker nodes running in threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dtq_client import Client
from dtq_worker import Node, Registry, WorkerConfig
from tests.harness import InProcessCoordinator
from tests.worker.nodes import FAST_TIMING, Gates, RunningNode, node_registry


@pytest.fixture
def gates() -> Iterator[Gates]:
    """Gates for this test; all are opened at the end so no handler lingers."""
    opened = Gates()
    yield opened
    opened.open_all()


@pytest.fixture
def run_node(gates: Gates) -> Iterator[Callable[..., RunningNode]]:
    """Start in-process nodes (waiting until registered); each is stopped at the end."""
    started: list[RunningNode] = []

    def start(address: str, registry: Registry | None = None, **overrides: Any) -> RunningNode:
        settings: dict[str, Any] = {
            "coordinator": address,
            "threads": 2,
            "node_id": "test-node",
            "shutdown_grace_s": 2.0,
            "rpc_timeout_s": 2.0,
            "reconnect_backoff_max_s": 0.2,
        }
        settings.update(overrides)
        running = RunningNode(Node(WorkerConfig(**settings), registry or node_registry(gates)))
        running.thread.start()
        started.append(running)
        assert running.node.ready.wait(10), f"node {running.node_id} did not register"
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.node.stop()
            running.node.stop()  # cut the grace short
            running.thread.join(10.0)


@pytest.fixture
def coordinator_fast(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> InProcessCoordinator:
    """An in-process coordinator with a 0.2 s heartbeat and a 1 s timeout."""
    return make_coordinator(**FAST_TIMING)


@pytest.fixture
def client(coordinator_fast: InProcessCoordinator) -> Iterator[Client]:
    """A client of ``coordinator_fast``."""
    with Client(coordinator_fast.address) as connected:
        yield connected
