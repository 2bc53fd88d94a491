"""How a node stops, against a real coordinator: drain, graceful shutdown, escalation.

Whatever the trigger, running tasks are reported or released, never left for
the coordinator to find by its heartbeat timeout, and the node ends its
session with Leave (the coordinator shows it LEFT).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dtq_client import Client, NodeState, TaskState
from dtq_worker.node import EXIT_RESTART_INTENSITY
from tests.harness import InProcessCoordinator, wait_until
from tests.worker.nodes import Gates, RunningNode, node_info, wait_left, wait_state

NODE = "test-node"
SLOW_TIMING = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0}
"""A heartbeat timeout long enough to tell a release from an expiry."""


@pytest.mark.timeout(30)
def test_drain_finishes_running_tasks_then_exits_zero(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
    gates: Gates,
) -> None:
    running = run_node(coordinator_fast.address)
    task = client.submit("gate", {"gate": "drain", "result": "finished"})
    wait_state(client, task.id, TaskState.RUNNING)
    assert client.drain(NODE).state is NodeState.DRAINING
    late = client.submit("echo", "late")
    gates.open("drain")
    assert running.wait(10) == 0
    done = client.get(task.id)
    assert (done.state, done.attempt, done.result_value()) == (TaskState.SUCCEEDED, 1, "finished")
    wait_left(client, NODE)
    untouched = client.get(late.id)  # a draining node takes no work
    assert (untouched.state, untouched.attempt) == (TaskState.QUEUED, 0)


@pytest.mark.timeout(30)
def test_shutdown_reports_what_finishes_in_the_grace_and_releases_the_rest(
    make_coordinator: Callable[..., InProcessCoordinator],
    run_node: Callable[..., RunningNode],
    gates: Gates,
) -> None:
    coordinator = make_coordinator(**SLOW_TIMING)
    grace_s = 1.0
    leaving = run_node(coordinator.address, node_id="leaving", shutdown_grace_s=grace_s)
    with Client(coordinator.address) as client:
        quick = client.submit("gate", {"gate": "quick", "result": "in time"})
        slow = client.submit("sleep", {"seconds": 30})
        for task_id in (quick.id, slow.id):
            wait_state(client, task_id, TaskState.RUNNING)
        run_node(coordinator.address, node_id="taker")
        stopped_at = time.monotonic()
        leaving.node.stop()
        gates.open("quick")  # finishes within the grace

        def re_leased() -> bool:
            task = client.get(slow.id)
            return task.node_id == "taker" and task.state is TaskState.RUNNING

        wait_until(re_leased, 10, what="the slow task re-leased to the taker")
        handover_s = time.monotonic() - stopped_at
        assert handover_s < grace_s + 1.5 < SLOW_TIMING["heartbeat_timeout_s"], handover_s
        assert leaving.wait(10) == 0
        done = client.get(quick.id)
        assert (done.state, done.attempt, done.node_id) == (TaskState.SUCCEEDED, 1, "leaving")
        assert done.result_value() == "in time"
        assert client.get(slow.id).lease_expiries == 0, "released, not expired"
        wait_left(client, "leaving")


@pytest.mark.timeout(30)
def test_assignments_after_stop_are_not_run_and_leave_hands_them_back(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
    gates: Gates,
) -> None:
    running = run_node(coordinator_fast.address, shutdown_grace_s=10.0)
    busy = client.submit("gate", {"gate": "busy"})
    wait_state(client, busy.id, TaskState.RUNNING)
    running.node.stop()
    # The coordinator still sees a free slot and leases the stopping node a task.
    late = client.submit("echo", "late")
    wait_state(client, late.id, TaskState.LEASED)
    gates.open("busy")
    assert running.wait(10) == 0
    assert client.get(busy.id).state is TaskState.SUCCEEDED
    # An echo that ran would have succeeded long ago: it was held, unrun, and handed back
    # by the Leave (which the coordinator commits just after ending the session).
    handed_back = wait_state(client, late.id, TaskState.QUEUED, timeout_s=2)
    assert handed_back.attempt == 1
    assert (handed_back.lease_expiries, handed_back.started_at) == (0, None)
    wait_left(client, NODE)
    run_node(coordinator_fast.address, node_id="taker")
    done = client.wait(late.id, timeout_s=10)
    assert (done.state, done.attempt, done.node_id) == (TaskState.SUCCEEDED, 2, "taker")


@pytest.mark.timeout(30)
def test_a_second_stop_cuts_the_grace_short(
    coordinator_fast: InProcessCoordinator,
    client: Client,
    run_node: Callable[..., RunningNode],
) -> None:
    running = run_node(coordinator_fast.address, shutdown_grace_s=30.0)
    task = client.submit("sleep", {"seconds": 30})
    wait_state(client, task.id, TaskState.RUNNING)
    stopped_at = time.monotonic()
    running.node.stop()
    running.node.stop()
    assert running.wait(10) == 0
    assert time.monotonic() - stopped_at < 5.0
    released = wait_state(client, task.id, TaskState.QUEUED, timeout_s=2)
    assert released.lease_expiries == 0
    # The coordinator may lease a released task straight back to the node before its
    # Leave; the node then holds it unrun and the Leave hands it back (attempt 2).
    assert released.attempt in (1, 2)
    wait_left(client, NODE)


@pytest.mark.timeout(30)
def test_restart_intensity_exceeded_releases_everything_and_exits_70(
    make_coordinator: Callable[..., InProcessCoordinator],
    run_node: Callable[..., RunningNode],
) -> None:
    # One lost lease dead-letters a task, so a poison task crashes the node only once.
    coordinator = make_coordinator(max_lease_expiries=1, **SLOW_TIMING)
    running = run_node(coordinator.address, max_restarts=1, restart_period_s=60.0)
    with Client(coordinator.address) as client:
        sleeper = client.submit("sleep", {"seconds": 30})
        wait_state(client, sleeper.id, TaskState.RUNNING)
        first = client.submit("kill_thread", {})
        crashed = wait_state(client, first.id, TaskState.FAILED)
        assert crashed.last_error is not None and crashed.last_error.type == "WORKER_DIED"

        def restarts() -> int:
            info = node_info(client, NODE)
            return info.supervisor_restarts if info is not None else 0

        wait_until(lambda: restarts() == 1, 5, what="the restart reported in a heartbeat")
        assert client.get(sleeper.id).state is TaskState.RUNNING, "one crash is tolerated"
        client.submit("kill_thread", {})
        assert running.wait(10) == EXIT_RESTART_INTENSITY
        assert running.node.restarts == 1
        # Released at once with the Leave, not found by the heartbeat timeout.
        released = wait_state(client, sleeper.id, TaskState.QUEUED, timeout_s=2)
        assert released.lease_expiries == 0
        assert released.attempt in (1, 2)  # see test_a_second_stop_cuts_the_grace_short
        wait_left(client, NODE)
