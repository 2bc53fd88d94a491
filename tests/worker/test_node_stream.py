"""The node's session stream against a real coordinator.

In-process nodes (``run_node``) talk to an in-process coordinator, or to a
``dtq-server`` process when the test must SIGKILL or SIGSTOP the coordinator; a
``dtq-worker`` process stands in for a node that must itself be SIGSTOPped.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dtq_client import Client, NodeState, TaskState
from dtq_worker import Registry, TaskContext
from tests.harness import (
    InProcessCoordinator,
    Proc,
    start_node,
    start_server,
    wait_until,
)
from tests.worker.nodes import (
    FAST_TIMING,
    RESTART_TIMING,
    Gates,
    RunningNode,
    node_info,
    wait_state,
)

NODE = "test-node"
OUTAGE_S = 3.0
"""How long the coordinator stays down in the outbox test: past gRPC's own first
reconnect pauses (1 s, then 1.6 s), which the node must not wait out."""


def active_session(client: Client, node_id: str, not_session: str = "") -> str:
    """The session id of ``node_id`` once it is ACTIVE with its real registration
    (a coordinator restart recovers sessions with no slots until their nodes resume)."""

    def active() -> str:
        info = node_info(client, node_id)
        if info is None or info.state is not NodeState.ACTIVE or info.slots == 0:
            return ""
        return info.session_id if info.session_id != not_session else ""

    return wait_until(active, 20, what=f"node {node_id} active")


def counters(coordinator: InProcessCoordinator) -> Counter[str]:
    """A copy of the coordinator's session counters (rejections, expiries, ...)."""
    return coordinator.run(lambda: Counter(coordinator.server.coordinator.sessions.counters))


def rejected(coordinator: InProcessCoordinator) -> dict[str, int]:
    """Node reports the coordinator fenced off, by reason."""
    return {k: v for k, v in counters(coordinator).items() if k.startswith("rejected_") and v}


@pytest.mark.timeout(30)
def test_registers_runs_tasks_and_leaves(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
) -> None:
    running = run_node(coordinator_fast.address)
    info = node_info(client, NODE)
    assert info is not None
    assert info.state is NodeState.ACTIVE
    assert set(info.task_types) == {"add", "chatty", "echo", "gate", "kill_thread", "sleep"}
    assert (info.queues, info.slots, info.pid) == (("default",), 2, os.getpid())
    echoed = client.submit("echo", {"hi": [1, 2]})
    added = client.submit("add", {"a": 1, "b": 2})
    for task_id, value in ((echoed.id, {"hi": [1, 2]}), (added.id, 3)):
        done = client.wait(task_id, timeout_s=10)
        assert (done.state, done.attempt, done.node_id) == (TaskState.SUCCEEDED, 1, NODE)
        assert done.result_value() == value
        assert done.result_content_type == "application/json"
    assert running.stop() == 0
    gone = node_info(client, NODE, include_gone=True)
    assert gone is not None and gone.state is NodeState.LEFT
    assert node_info(client, NODE) is None


@pytest.mark.timeout(30)
def test_heartbeats_keep_flowing_while_a_long_handler_runs(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
) -> None:
    run_node(coordinator_fast.address)
    seconds = 2 * FAST_TIMING["heartbeat_timeout_s"]
    task = client.submit("sleep", {"seconds": seconds})
    wait_state(client, task.id, TaskState.RUNNING)
    info = node_info(client, NODE)
    assert info is not None and [(x.task_id, x.attempt) for x in info.leases] == [(task.id, 1)]
    seen_at = info.last_seen_at

    def heard_again() -> bool:
        again = node_info(client, NODE)
        return again is not None and again.last_seen_at != seen_at

    wait_until(heard_again, 2, what="a heartbeat while the handler runs")
    done = client.wait(task.id, timeout_s=seconds + 10)
    assert (done.state, done.attempt, done.lease_expiries) == (TaskState.SUCCEEDED, 1, 0)
    assert done.result_value() == {"slept": seconds}
    assert counters(coordinator_fast)["sessions_expired"] == 0


@pytest.mark.timeout(30)
def test_progress_reaches_the_coordinator_and_the_last_value_wins(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
    gates: Gates,
) -> None:
    run_node(coordinator_fast.address, progress_interval_s=0.1)
    task = client.submit("chatty", {"gate": "chatty"})

    def at_100() -> bool:
        progress = client.get(task.id).progress
        return progress is not None and progress.percent == 100.0

    wait_until(at_100, 10, what="progress 100 while running")
    assert client.get(task.id).state is TaskState.RUNNING
    gates.open("chatty")
    assert client.wait(task.id, timeout_s=10).state is TaskState.SUCCEEDED


@pytest.mark.timeout(30)
def test_cancel_reaches_the_running_handler(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
) -> None:
    run_node(coordinator_fast.address)
    task = client.submit("sleep", {"seconds": 30})
    wait_state(client, task.id, TaskState.RUNNING)
    assert client.cancel(task.id).cancel_requested
    done = wait_state(client, task.id, TaskState.CANCELLED, timeout_s=5)
    assert done.attempt == 1
    assert done.last_error is not None
    assert done.last_error.type == "TaskCancelled"
    assert "cancelled while sleeping" in done.last_error.message
    # The slot is free again and the node takes new work.
    assert client.wait(client.submit("echo", 7).id, timeout_s=10).result_value() == 7


@pytest.mark.timeout(60)
def test_broken_stream_resumes_the_session_and_its_lease(
    tmp_path: Path,
    run_node: Callable[..., RunningNode],
    gates: Gates,
    processes: list[Proc],
) -> None:
    server = start_server(tmp_path / "data", **RESTART_TIMING)
    processes.append(server)
    running = run_node(server.address)
    with Client(server.address) as client:
        task = client.submit("gate", {"gate": "held", "result": "kept"})
        wait_state(client, task.id, TaskState.RUNNING)
        session = active_session(client, NODE)
        server.kill9()  # the stream breaks mid-task
        restarted = start_server(
            server.data_dir, name="restarted", listen=server.address, **RESTART_TIMING
        )
        processes.append(restarted)
        assert active_session(client, NODE) == session, "the node resumed its session"
        gates.open("held")  # the handler finishes only on the resumed stream
        done = client.wait(task.id, timeout_s=10)
        assert (done.state, done.attempt, done.lease_expiries) == (TaskState.SUCCEEDED, 1, 0)
        assert done.result_value() == "kept"
        assert running.stop() == 0
    assert "node.resume_refused" not in restarted.log()


@pytest.mark.timeout(60)
def test_result_produced_while_the_coordinator_is_down_is_delivered_once(
    make_coordinator: Callable[..., InProcessCoordinator],
    run_node: Callable[..., RunningNode],
    gates: Gates,
) -> None:
    coordinator = make_coordinator(**RESTART_TIMING)
    running = run_node(coordinator.address)
    with Client(coordinator.address) as client:
        task = client.submit("gate", {"gate": "offline", "result": {"v": 1}})
        wait_state(client, task.id, TaskState.RUNNING)
        session = active_session(client, NODE)
    coordinator.stop(grace_s=0)
    gates.open("offline")
    wait_until(lambda: gates.returned("offline"), 5, what="the handler to return")
    time.sleep(OUTAGE_S)  # the outage itself, not a wait for something to happen
    restarted = make_coordinator(listen=coordinator.address, **RESTART_TIMING)
    restarted_at = time.monotonic()

    def attached() -> bool:
        sessions = restarted.server.coordinator.registry.sessions
        return restarted.run(lambda: session in sessions and sessions[session].outbox is not None)

    wait_until(attached, 10, interval_s=0.01, what="the node to resume")
    reconnect_s = time.monotonic() - restarted_at
    assert reconnect_s < 1.2, f"back {reconnect_s:.2f} s after the restart (backoff max 0.2 s)"
    with Client(restarted.address) as client:
        done = client.wait(task.id, timeout_s=10)
        assert (done.state, done.attempt, done.lease_expiries) == (TaskState.SUCCEEDED, 1, 0)
        assert done.result_value() == {"v": 1}
        assert running.stop() == 0
    assert rejected(restarted) == {}
    assert counters(restarted)["resume_refused"] == 0


def instant_witness() -> Registry:
    """A ``witness`` that returns at once: what the healthy node runs."""
    registry = Registry()

    @registry.task("witness")
    def witness(payload: Any, ctx: TaskContext) -> dict[str, int]:
        return {"attempt": ctx.attempt}

    return registry


@pytest.mark.timeout(60)
def test_silent_node_registers_a_new_session_and_drops_its_stale_task(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
    processes: list[Proc],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness.log"
    zombie = start_node(
        coordinator_fast.address, tmp_path, "zombie", threads=2,
        env={"DTQ_TEST_WITNESS": str(witness), "DTQ_NODE_ID": "zombie"},
    )  # fmt: skip
    processes.append(zombie)
    old_session = active_session(client, "zombie")
    task = client.submit("witness", {"sleep": 30})
    wait_state(client, task.id, TaskState.RUNNING)
    zombie.signal(signal.SIGSTOP)
    try:
        healthy = run_node(coordinator_fast.address, registry=instant_witness(), node_id="healthy")
        done = client.wait(task.id, timeout_s=FAST_TIMING["heartbeat_timeout_s"] + 10)
        assert (done.state, done.attempt, done.node_id) == (TaskState.SUCCEEDED, 2, "healthy")
        assert done.lease_expiries == 1
    finally:
        zombie.signal(signal.SIGCONT)
    active_session(client, "zombie", not_session=old_session)  # registered afresh
    assert healthy.stop() == 0
    fresh = [client.submit("witness", {}).id for _ in range(4)]
    for task_id in fresh:
        again = client.wait(task_id, timeout_s=10)
        assert (again.state, again.node_id, again.attempt) == (TaskState.SUCCEEDED, "zombie", 1)
    # The dropped task was never reported: a late or resent outcome would have been fenced off.
    assert rejected(coordinator_fast) == {}
    assert client.get(task.id).result_value() == {"attempt": 2}
    runs = [json.loads(line) for line in witness.read_text().splitlines()]
    assert [(r["task_id"], r["attempt"]) for r in runs if r["task_id"] == task.id] == [(task.id, 1)]
    zombie.signal(signal.SIGTERM)
    assert zombie.wait(15) == 0


@pytest.mark.timeout(60)
def test_silent_coordinator_is_detected_by_missing_heartbeat_acks(
    tmp_path: Path, processes: list[Proc]
) -> None:
    server = start_server(tmp_path / "data", **FAST_TIMING)
    processes.append(server)
    node = start_node(server.address, tmp_path, "watcher", threads=2)
    processes.append(node)
    with Client(server.address) as client:
        active_session(client, "watcher")
        in_flight = client.submit("witness", {"sleep": 0.5})
        wait_state(client, in_flight.id, TaskState.RUNNING)
        server.signal(signal.SIGSTOP)
        try:
            # Only the node can notice anything while the coordinator is frozen.
            wait_until(
                lambda: "no heartbeat ack within" in node.log(), 10, what="the node to give up"
            )
        finally:
            server.signal(signal.SIGCONT)
        active_session(client, "watcher")
        # Finished while the coordinator was frozen: delivered on the new stream (or, if
        # the coordinator woke up and expired the session first, run again).
        assert client.wait(in_flight.id, timeout_s=10).state is TaskState.SUCCEEDED
        done = client.wait(client.submit("echo", "still here").id, timeout_s=10)
        assert (done.state, done.node_id) == (TaskState.SUCCEEDED, "watcher")
        assert done.result_value() == "still here"
    node.signal(signal.SIGTERM)
    assert node.wait(15) == 0
