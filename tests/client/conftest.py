"""Shared fixtures for the client tests: a real coordinator and worker node, and builders."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dtq_client import Client, NodeState
from dtq_client.models import Progress, Task, TaskError, TaskState
from dtq_server.tokens import entry, new_token
from tests.harness import (
    InProcessCoordinator,
    Proc,
    server_config,
    start_node,
    start_server,
    wait_until,
)

DEMO_REGISTRY = "dtq_worker.demo:registry"
"""The handlers the shared node runs: echo, sleep, fail and add."""

NOBODY = "nobody.handles.this"
"""A task type no node serves."""

NODE_ID = "client-tests-node"
NODE_THREADS = 4


@dataclass
class Cluster:
    """A real coordinator and one ``dtq-worker`` process serving its default queue."""

    address: str
    node: Proc
    node_id: str
    coordinator: InProcessCoordinator | None = None
    """The coordinator when it runs in this process (None for a ``dtq-server`` process)."""

    def watching(self, task_id: str) -> bool:
        """True while some WatchTask stream of the in-process coordinator follows ``task_id``.

        Read from the coordinator's watcher table, on its loop: nothing on the
        wire says when the server side of a stream has ended.
        """
        coordinator = self.coordinator
        assert coordinator is not None, "only an in-process coordinator can be looked into"
        watchers = coordinator.server.coordinator.watchers
        return coordinator.run(lambda: bool(watchers.watched([task_id])))


def node_is_active(address: str, node_id: str) -> bool:
    """True once ``node_id`` is registered and ACTIVE at the coordinator at ``address``."""
    with Client(address, timeout_s=5.0) as client:
        return any(n.node_id == node_id and n.state is NodeState.ACTIVE for n in client.nodes())


def wait_for_node(address: str, node: Proc, node_id: str, timeout_s: float = 20.0) -> None:
    """Wait until the node process has registered; fail with its log if it does not."""
    try:
        wait_until(
            lambda: node_is_active(address, node_id) or not node.alive(),
            timeout_s,
            what=f"node {node_id} to register",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{node.log()}") from None
    if not node.alive():
        raise AssertionError(f"node {node_id} exited {node.popen.returncode}:\n{node.log()}")


@contextmanager
def demo_node(
    address: str,
    log_dir: Path,
    node_id: str = NODE_ID,
    *,
    queues: str | None = None,
    threads: int = NODE_THREADS,
    prefetch: int | None = None,
) -> Iterator[Proc]:
    """A registered ``dtq-worker`` process running the demo handlers, killed at the end.

    ``queues`` (comma-separated) replaces the ``default`` queue the node serves;
    ``prefetch`` replaces its default (``auto``).
    """
    extra: tuple[str, ...] = ("--queues", queues) if queues else ()
    if prefetch is not None:
        extra += ("--prefetch", str(prefetch))
    node = start_node(address, log_dir, node_id, *extra, module=DEMO_REGISTRY, threads=threads)
    try:
        wait_for_node(address, node, node_id)
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An in-process coordinator and a demo node, shared by a test module.

    The node takes tasks from the ``default`` queue only: tests that need a
    task to stay queued submit it to a queue of their own (see ``queue``).
    """
    root = tmp_path_factory.mktemp("cluster")
    coordinator = InProcessCoordinator(server_config(root / "data")).start()
    try:
        with demo_node(coordinator.address, root) as node:
            yield Cluster(coordinator.address, node, NODE_ID, coordinator)
    finally:
        coordinator.stop()


@pytest.fixture(scope="module")
def process_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Like ``cluster``, but the coordinator is a ``dtq-server`` process.

    For tests that capture this process's stdout (the CLI under CliRunner),
    where an in-process coordinator's log lines would mix into the output.
    """
    root = tmp_path_factory.mktemp("process-cluster")
    server = start_server(root / "data")
    try:
        with demo_node(server.address, root) as node:
            yield Cluster(server.address, node, NODE_ID)
    finally:
        server.stop()


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, which no node serves: tasks submitted there stay queued."""
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def served(cluster: Cluster, queue: str, tmp_path: Path) -> Iterator[Callable[[int], None]]:
    """Start a registered demo node serving only ``queue``, with so many threads."""
    with ExitStack() as nodes:

        def start(threads: int) -> None:
            # No prefetch: each task is leased only when a thread is free for it, so
            # tasks start in dispatch order, each reported in a frame of its own.
            node_id = f"node-{queue}"
            nodes.enter_context(
                demo_node(
                    cluster.address, tmp_path, node_id, queues=queue, threads=threads, prefetch=0
                )
            )

        yield start


@pytest.fixture
def token_coordinator(
    make_coordinator: Callable[..., InProcessCoordinator], tmp_path: Path
) -> tuple[InProcessCoordinator, str]:
    """An in-process coordinator that checks tokens, and the token of its submitter "web-app"."""
    token = new_token()
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(entry("web-app", "submitter", token))
    return make_coordinator(tokens_file=tokens_file), token


@pytest.fixture
def full_task() -> Task:
    """A task with every field set to a non-default value."""
    return Task(
        id="0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10",
        type="email.send",
        queue="mail",
        state=TaskState.FAILED,
        attempt=3,
        max_attempts=3,
        failures=2,
        idempotency_key="order-42",
        payload=b'{"to":"ada@example.com"}',
        content_type="application/json",
        result=b'{"sent":false}',
        result_content_type="application/json",
        last_error=TaskError(
            type="SMTPError", message="relay refused", traceback="Traceback ...", retryable=True
        ),
        node_id="host-1234",
        lease_expiries=1,
        cancel_requested=True,
        progress=Progress(percent=42.5, message="halfway"),
        created_at=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        updated_at=datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC),
        started_at=datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC),
        finished_at=datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC),
        next_attempt_at=datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC),
        priority=-7,
        scheduled_at=datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        execution_timeout_s=2.5,
        expires_at=datetime(2024, 5, 8, 12, 0, 5, tzinfo=UTC),
        rate_key="tenant-7",
        depends_on=("5d1e8c1a-7b9f-4c3e-8a2d-1f0e9b8c7d6a", "6e2f9d2b-8c0a-4d4f-9b3e-2a1f0c9d8e7b"),
        group_id="3f2a9c0d4e5b6a7c8d9e0f1a2b3c4d5e",
        submitted_by="billing-app",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
