"""Helpers for running real worker nodes against real coordinators in tests.

A :class:`dtq_worker.Node` runs in a thread (:class:`RunningNode`, started by
the ``run_node`` fixture). Its ``gate`` tasks block on :class:`Gates` that the
test opens, so a test decides when a handler returns instead of guessing with
sleeps. The ``wait_*`` helpers poll the coordinator through a real client.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dtq_client import Client, NodeState, Task, TaskState
from dtq_client import Node as NodeInfo
from dtq_worker import Node, Registry, TaskCancelled, TaskContext
from dtq_worker.demo import add, echo, sleep
from tests import handlers
from tests.harness import wait_until

FAST_TIMING: dict[str, Any] = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.0}
"""Coordinator timing for tests that wait on heartbeats or their absence."""
RESTART_TIMING: dict[str, Any] = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 4.0}
"""Coordinator timing for restarts: a restarted coordinator keeps a session for one
heartbeat timeout, which must comfortably outlast the node's reconnect."""
GATE_LIMIT_S = 30.0
"""A gate nobody opens still lets its handler return (the thread is a daemon anyway)."""


class Gates:
    """Named events that ``gate`` tasks wait on; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: dict[str, threading.Event] = {}
        self._returned: dict[str, threading.Event] = {}

    def _event(self, table: dict[str, threading.Event], name: str) -> threading.Event:
        with self._lock:
            return table.setdefault(name, threading.Event())

    def open(self, name: str) -> None:
        """Let the ``gate`` task(s) waiting on ``name`` return."""
        self._event(self._opened, name).set()

    def open_all(self) -> None:
        """Open every gate a handler waits on (at the end of a test)."""
        with self._lock:
            events = list(self._opened.values())
        for event in events:
            event.set()

    def returned(self, name: str) -> bool:
        """True once a handler of gate ``name`` has returned its result."""
        return self._event(self._returned, name).is_set()

    def gate(self, payload: dict[str, Any], ctx: TaskContext) -> Any:
        """Handler: wait for ``payload["gate"]`` to open, then return ``payload["result"]``."""
        name = payload["gate"]
        if not self._event(self._opened, name).wait(GATE_LIMIT_S) or ctx.cancelled:
            raise TaskCancelled(f"gate {name} never opened")
        self._event(self._returned, name).set()
        return payload.get("result", name)

    def chatty(self, payload: dict[str, Any], ctx: TaskContext) -> None:
        """Handler: report progress 0-100 in 10,001 steps, then wait for its gate."""
        for i in range(10_001):
            ctx.report_progress(i / 100)
        self.gate(payload, ctx)


def node_registry(gates: Gates) -> Registry:
    """The handlers in-process nodes run: the demo's, gated ones and a thread killer."""
    registry = Registry()
    registry.register("echo", echo)
    registry.register("add", add)
    registry.register("sleep", sleep)
    registry.register("gate", gates.gate)
    registry.register("chatty", gates.chatty)
    registry.register("kill_thread", handlers.kill_thread)
    return registry


@dataclass
class RunningNode:
    """A node running ``Node.run`` in a thread."""

    node: Node
    thread: threading.Thread = field(init=False)
    result: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(
            target=lambda: self.result.__setitem__("exit_code", self.node.run()),
            name=f"node-{self.node_id}",
            daemon=True,
        )

    @property
    def node_id(self) -> str:
        return self.node.config.node_id

    def stop(self, timeout_s: float = 10.0) -> int:
        """Ask for a graceful shutdown and return the exit code."""
        self.node.stop()
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 10.0) -> int:
        """Wait for the node to exit on its own and return the exit code."""
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"node {self.node_id} did not exit"
        return self.result["exit_code"]


def node_info(client: Client, node_id: str, include_gone: bool = False) -> NodeInfo | None:
    """The newest session of ``node_id`` as the coordinator lists it."""
    found = [n for n in client.nodes(include_gone=include_gone) if n.node_id == node_id]
    return found[-1] if found else None


def wait_state(client: Client, task_id: str, state: TaskState, timeout_s: float = 10) -> Task:
    """Wait until the task is in ``state`` and return it."""

    def reached() -> Task | None:
        task = client.get(task_id)
        return task if task.state is state else None

    task = wait_until(reached, timeout_s, what=f"task {task_id} {state}")
    assert task is not None
    return task


def wait_left(client: Client, node_id: str, timeout_s: float = 10) -> None:
    """Wait until the coordinator shows the node LEFT (its session ended by Leave)."""

    def left() -> bool:
        info = node_info(client, node_id, include_gone=True)
        return info is not None and info.state is NodeState.LEFT

    wait_until(left, timeout_s, what=f"node {node_id} LEFT")
