"""The worker protocol against a real coordinator: credits, fencing, resume, expiry, retries.

A RawNode speaks the protocol by hand, so each test controls exactly what a
node sends (or fails to send).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import structlog

from dtq.v1 import (
    admin_service_pb2,
    task_pb2,
    task_service_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_server.models import Lease, TaskFilter
from dtq_server.sessions import REJECTIONS_PER_LINE, RESENDS_PER_LEASE
from dtq_server.updates import Succeeded
from dtq_server.validation import SpecInput
from tests.harness import (
    HEARTBEAT_TIMEOUT_S,
    InProcessCoordinator,
    RawNode,
    failed,
    released,
    started,
    succeeded,
    wait_until,
)

QUEUED, SUCCEEDED, FAILED = (
    task_pb2.TASK_STATE_QUEUED,
    task_pb2.TASK_STATE_SUCCEEDED,
    task_pb2.TASK_STATE_FAILED,
)


def submit(tasks: TaskServiceStub, type_: str = "echo", **fields: Any) -> str:
    spec = task_pb2.TaskSpec(type=type_, payload=task_pb2.Payload(data=b"{}"), **fields)
    return str(tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task.id)


def get(tasks: TaskServiceStub, task_id: str) -> task_pb2.Task:
    return tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10).task


def assigned(node: RawNode, timeout_s: float = 10) -> list[task_pb2.Lease]:
    message = node.next("assignments", timeout_s)
    return [a.lease for a in message.assignments.assignments]


def test_dispatch_only_against_free_slots(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    ids = [submit(tasks) for _ in range(5)]
    node = RawNode(coordinator.address, slots=2)
    leases = assigned(node)
    while len(leases) < 2:
        leases += assigned(node)
    assert len(leases) == 2
    assert [lease.task_id for lease in leases] == ids[:2]  # FIFO
    assert all(lease.attempt == 1 for lease in leases)
    node.heartbeat(1)
    node.next("heartbeat_ack")
    assert node.unread() == [], "no work beyond the node's slots"
    node.report(succeeded(leases[0].task_id, 1, b'"ok"'))
    node.next("update_acks")
    assert [lease.task_id for lease in assigned(node)] == [ids[2]]
    node.close()


def test_a_reported_outcome_lends_its_slot_while_it_commits(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """The node freed the slot when it reported: the next task is leased in the same
    group commit as the outcome, not in the commit after it."""
    first, second = submit(tasks), submit(tasks)
    node = RawNode(coordinator.address, node_id="lender", slots=1)
    assert [lease.task_id for lease in assigned(node)] == [first]
    server = coordinator.server.coordinator
    [session] = coordinator.run(lambda: server.registry.live_for_node("lender"))
    release = threading.Event()
    blocker = coordinator.hold_writer(release)
    try:
        node.report(succeeded(first, 1, b'"ok"'))
        wait_until(
            lambda: coordinator.run(lambda: dict(session.leases)) == {first: 1, second: 1},
            10,
            what="the second task planned while the first one's outcome waits for the store",
        )
    finally:
        release.set()
    wait_until(blocker.done, 10, what="the writer released")
    assert [lease.task_id for lease in assigned(node)] == [second]
    [ack] = node.next("update_acks").update_acks.acks
    assert ack.accepted and ack.lease.task_id == first
    assert coordinator.run(lambda: (dict(session.leases), session.finishing)) == ({second: 1}, 0)
    node.close()


def test_a_backlog_in_one_queue_does_not_hold_back_another_queue_s_task(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """A node serving two queues takes them in turn, not the older backlog first."""
    bulk = [submit(tasks, queue="bulk") for _ in range(5)]
    node = RawNode(coordinator.address, queues=("bulk", "emails"), slots=1)
    [first] = assigned(node)
    assert first.task_id == bulk[0]
    email = submit(tasks, queue="emails")
    node.report(succeeded(first.task_id, 1, b'"ok"'))
    [second] = assigned(node)
    assert second.task_id == email, "the email waited behind the bulk backlog"
    node.report(succeeded(email, 1, b'"ok"'))
    assert [lease.task_id for lease in assigned(node)] == [bulk[1]]
    node.close()


def test_an_outcome_without_a_start_records_the_start_too(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """Nodes fold a start into an outcome sent in the same frame (short tasks)."""
    first, second = submit(tasks), submit(tasks)
    node = RawNode(coordinator.address, slots=2)
    leases = assigned(node)
    while len(leases) < 2:
        leases += assigned(node)
    node.report(succeeded(first, 1, b'"a"'), started(second, 1), succeeded(second, 1, b'"b"'))
    acks = node.next("update_acks").update_acks.acks
    assert [(a.lease.task_id, a.accepted) for a in acks] == [(first, True), (second, True)]
    for task_id in (first, second):
        task = get(tasks, task_id)
        assert task.state == SUCCEEDED
        assert task.HasField("start_time")
        assert task.start_time.ToNanoseconds() <= task.finish_time.ToNanoseconds()
    node.close()


def test_a_watch_sees_the_result_as_the_node_update_committed_it(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks)
    node = RawNode(coordinator.address, slots=1)
    [lease] = assigned(node)
    stream = tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=10)
    first = next(stream).task
    assert first.state != SUCCEEDED
    wait_until(
        lambda: coordinator.run(
            lambda: bool(coordinator.server.coordinator.watchers.watched([task_id]))
        ),
        10,
        what="the watch to subscribe",
    )
    node.report(succeeded(task_id, lease.attempt, b'"done"'))
    last = [m.task for m in stream][-1]
    assert last.state == SUCCEEDED
    assert last.result.data == b'"done"'
    assert last.HasField("start_time") and last.HasField("finish_time")
    assert last == get(tasks, task_id)  # what the commit left is what a read sees
    node.close()


def test_prefetch_adds_credits_beyond_slots(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
):
    for _ in range(5):
        submit(tasks)
    node = RawNode(coordinator.address, slots=1, prefetch=2)
    leases = assigned(node)
    while len(leases) < 3:
        leases += assigned(node)
    node.heartbeat(1)
    node.next("heartbeat_ack")
    assert node.unread() == [], "slots + prefetch, no more"
    (listed,) = admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
    assert (listed.slots, listed.prefetch, listed.busy_slots) == (1, 2, 3)
    node.close()


def test_tasks_go_only_to_nodes_that_declared_type_and_queue(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    other_type = submit(tasks, "other")
    other_queue = submit(tasks, queue="emails")
    mine = submit(tasks)
    node = RawNode(coordinator.address, slots=3)
    assert [lease.task_id for lease in assigned(node)] == [mine]
    emails = RawNode(coordinator.address, node_id="emails", queues=("emails",), slots=3)
    assert [lease.task_id for lease in assigned(emails)] == [other_queue]
    assert get(tasks, other_type).state == QUEUED
    node.close()
    emails.close()


def test_late_result_from_expired_session_is_rejected(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks)
    zombie = RawNode(coordinator.address, node_id="zombie")
    assigned(zombie)
    # The zombie goes silent (no heartbeats): after the timeout its lease is requeued.
    healthy = RawNode(coordinator.address, node_id="healthy", auto_heartbeat=True)
    (lease2,) = assigned(healthy, timeout_s=HEARTBEAT_TIMEOUT_S + 1.5)
    assert (lease2.task_id, lease2.attempt) == (task_id, 2)
    # The zombie's stream was ended with SESSION_EXPIRED; its late result cannot apply.
    zombie.closed.wait(5)
    assert zombie.error is not None
    assert zombie.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (zombie.error.details() or "")
    # Even a stream-level replay with the old attempt is fenced off.
    healthy.report(succeeded(task_id, 1, b'"zombie"'))
    ack = healthy.next("update_acks").update_acks.acks[0]
    assert (ack.accepted, ack.reason) == (False, "STALE_ATTEMPT")
    healthy.report(succeeded(task_id, 2, b'"healthy"'))
    assert healthy.next("update_acks").update_acks.acks[0].accepted
    task = get(tasks, task_id)
    assert (task.state, task.attempt, task.result.data) == (SUCCEEDED, 2, b'"healthy"')
    assert task.lease_expiries == 1
    assert task.node_id == "healthy"
    healthy.close()


def test_forged_leases_are_rejected_without_state_change(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks)
    holder = RawNode(coordinator.address, node_id="holder")
    assigned(holder)
    thief = RawNode(coordinator.address, node_id="thief")
    thief.report(
        succeeded("00000000-0000-4000-8000-000000000000", 1, b"1"),
        succeeded(task_id, 1, b"2"),
        succeeded(task_id, 7, b"3"),
    )
    acks = thief.next("update_acks").update_acks.acks
    assert [(a.accepted, a.reason) for a in acks] == [
        (False, "TASK_NOT_FOUND"),
        (False, "NOT_LEASED"),
        (False, "STALE_ATTEMPT"),
    ]
    assert get(tasks, task_id).state == task_pb2.TASK_STATE_LEASED
    holder.heartbeat(1, ((task_id, 1), ("00000000-0000-4000-8000-000000000000", 3)))
    stale = holder.next("heartbeat_ack").heartbeat_ack.stale_leases
    assert [(s.task_id, s.attempt) for s in stale] == [("00000000-0000-4000-8000-000000000000", 3)]
    holder.close()
    thief.close()


def test_refused_outcomes_are_each_audited_a_hundred_to_a_log_line(
    coordinator: InProcessCoordinator,
):
    """A reconnecting node can send thousands of stale outcomes in a frame: each was a
    log line of its own. Each is still named (RELIABILITY B7: every attempt audited),
    grouped by reason and kind of update, REJECTIONS_PER_LINE to a line."""
    node = RawNode(coordinator.address, node_id="forger")
    forged = [str(uuid.uuid4()) for _ in range(REJECTIONS_PER_LINE + 5)]
    with structlog.testing.capture_logs() as logs:
        node.report(*(succeeded(task_id, 1, b"1") for task_id in forged))
        acks: list[worker_service_pb2.TaskUpdateAck] = []
        while len(acks) < len(forged):
            acks += node.next("update_acks").update_acks.acks
    node.close()
    assert {(a.accepted, a.reason) for a in acks} == {(False, "TASK_NOT_FOUND")}
    lines = [e for e in logs if e["event"] == "report.rejected"]
    assert [(e["node_id"], e["reason"], e["update"], e["count"]) for e in lines] == [
        ("forger", "TASK_NOT_FOUND", "Succeeded", REJECTIONS_PER_LINE),
        ("forger", "TASK_NOT_FOUND", "Succeeded", 5),
    ]
    audited = [lease for e in lines for lease in e["leases"].split()]
    assert audited == [f"{task_id}#1" for task_id in forged]


def test_resumed_session_keeps_its_lease(coordinator: InProcessCoordinator, tasks: TaskServiceStub):
    task_id = submit(tasks)
    node = RawNode(coordinator.address, node_id="flaky")
    assigned(node)
    node.abort()  # the stream breaks (say, a network reset)
    again = RawNode(
        coordinator.address,
        node_id="flaky",
        resume_session_id=node.session_id,
        leases=((task_id, 1),),
    )
    assert again.registered.resumed
    assert again.session_id == node.session_id
    again.report(succeeded(task_id, 1, b'"done"'))
    assert again.next("update_acks").update_acks.acks[0].accepted
    # A resend of an applied result (its ack was lost) is accepted, not applied twice.
    again.report(succeeded(task_id, 1, b'"done"'))
    assert again.next("update_acks").update_acks.acks[0].accepted
    task = get(tasks, task_id)
    assert (task.state, task.attempt, task.lease_expiries) == (SUCCEEDED, 1, 0)
    again.close()


def test_resume_resends_assignments_the_node_never_got(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """An assignment in flight when the stream broke is sent again, same lease (N8)."""
    task_id = submit(tasks)
    node = RawNode(coordinator.address, node_id="lossy")
    assigned(node)
    node.abort()
    again = RawNode(coordinator.address, node_id="lossy", resume_session_id=node.session_id)
    assert again.registered.resumed
    (lease,) = assigned(again)  # the same lease: not requeued as a new attempt
    assert (lease.task_id, lease.attempt) == (task_id, 1)
    stored = get(tasks, task_id)
    assert (stored.attempt, stored.lease_expiries) == (1, 0)
    again.report(succeeded(task_id, 1, b'"ok"'))
    [ack] = again.next("update_acks").update_acks.acks
    assert ack.accepted
    again.close()


def resend_settled(coordinator: InProcessCoordinator) -> bool:
    """No resend of a resumed session's assignments is still reading the store."""
    sessions = coordinator.server.coordinator.sessions
    return coordinator.run(lambda: not sessions._background)


def test_a_resume_while_a_lease_commits_gets_that_lease_not_a_second_attempt(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """Chaos N8 (1 run in 5): the node resumed while a dispatch round's lease was
    committing. The resume found the lease missing from the node, read the task from
    the store (not yet leased there) and requeued it; the commit then sent attempt 1
    to the new stream and attempt 2 followed: the task ran twice. Now the commit's
    own send is the one the node gets."""
    first, second = submit(tasks), submit(tasks)
    node = RawNode(coordinator.address, node_id="rotated", slots=1)
    assert [lease.task_id for lease in assigned(node)] == [first]
    server = coordinator.server.coordinator
    [session] = coordinator.run(lambda: server.registry.live_for_node("rotated"))
    release = threading.Event()
    blocker = coordinator.hold_writer(release)
    try:
        node.report(succeeded(first, 1, b'"ok"'))  # frees the slot: ``second`` is planned
        wait_until(
            lambda: coordinator.run(lambda: second in session.leases),
            10,
            what="the second task's lease planned, its commit behind the blocked writer",
        )
        node.abort()  # the connection rotates before the assignment is sent
        again = RawNode(
            coordinator.address, node_id="rotated", resume_session_id=node.session_id,
            leases=((first, 1),),  # reported, not yet acknowledged
        )  # fmt: skip
        assert again.registered.resumed
        wait_until(lambda: resend_settled(coordinator), 10, what="the resume's resend")
    finally:
        release.set()
    wait_until(blocker.done, 10, what="the writer released")
    (lease,) = assigned(again)
    assert (lease.task_id, lease.attempt) == (second, 1)
    again.report(succeeded(first, 1, b'"ok"'), succeeded(second, 1, b'"ok"'))
    acks = again.next("update_acks").update_acks.acks
    assert [(a.lease.task_id, a.accepted) for a in acks] == [(first, True), (second, True)]
    stored = get(tasks, second)
    assert (stored.state, stored.attempt, stored.lease_expiries) == (SUCCEEDED, 1, 0)
    again.heartbeat(1)
    again.next("heartbeat_ack")
    assert "assignments" not in again.unread(), "no second attempt"
    again.close()


def test_a_resume_while_a_direct_handoff_commits_gets_that_lease(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """The same race on the submit path: a task handed straight to an idle node is
    leased in its insert; a resume before the insert commits must not requeue it."""
    node = RawNode(coordinator.address, node_id="idle", slots=1)
    server = coordinator.server.coordinator
    [session] = coordinator.run(lambda: server.registry.live_for_node("idle"))
    release = threading.Event()
    blocker = coordinator.hold_writer(release)
    submitted: list[str] = []
    submitter = threading.Thread(target=lambda: submitted.append(submit(tasks)))
    try:
        submitter.start()
        wait_until(
            lambda: coordinator.run(lambda: bool(session.leases)),
            10,
            what="the new task reserved for the idle node, its insert behind the writer",
        )
        node.abort()
        again = RawNode(coordinator.address, node_id="idle", resume_session_id=node.session_id)
        assert again.registered.resumed
        wait_until(lambda: resend_settled(coordinator), 10, what="the resume's resend")
    finally:
        release.set()
    wait_until(blocker.done, 10, what="the writer released")
    submitter.join(10)
    [task_id] = submitted
    (lease,) = assigned(again)
    assert (lease.task_id, lease.attempt) == (task_id, 1)
    again.report(succeeded(task_id, 1, b'"ok"'))
    assert again.next("update_acks").update_acks.acks[0].accepted
    stored = get(tasks, task_id)
    assert (stored.state, stored.attempt, stored.lease_expiries) == (SUCCEEDED, 1, 0)
    again.close()


def test_a_node_that_leaves_gets_no_lease_that_commits_after_its_leave(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """A lease planned for a node that leaves before the lease commits is handed back
    with the node's others; the commit does not send it down the closing stream."""
    task_id = submit(tasks)
    server = coordinator.server.coordinator
    release = threading.Event()
    blocker = coordinator.hold_writer(release)
    try:
        node = RawNode(coordinator.address, node_id="leaver", slots=1)
        [session] = coordinator.run(lambda: server.registry.live_for_node("leaver"))
        wait_until(
            lambda: coordinator.run(lambda: task_id in session.leases),
            10,
            what="the task's lease planned, its commit behind the blocked writer",
        )
        node.send(worker_service_pb2.ConnectRequest(leave=worker_service_pb2.Leave(reason="t")))
        wait_until(lambda: coordinator.run(lambda: not session.live), 10, what="the leave")
    finally:
        release.set()
    wait_until(blocker.done, 10, what="the writer released")
    assert node.closed.wait(10) and node.error is None
    assert "assignments" not in node.unread()
    other = RawNode(coordinator.address, node_id="other", slots=1)
    (lease,) = assigned(other)
    assert (lease.task_id, lease.attempt) == (task_id, 2)
    assert get(tasks, task_id).lease_expiries == 0  # handed back, not lost
    other.close()


def test_a_cancel_made_while_the_node_was_away_reaches_it_when_it_resumes(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """A cancel is sent on the node's stream; with none attached (a network blip, a
    connection rotation) it used to be dropped, and the node ran the task to its end."""
    kept, resent = submit(tasks), submit(tasks)
    node = RawNode(coordinator.address, node_id="away", slots=2)
    leases = assigned(node)
    while len(leases) < 2:
        leases += assigned(node)
    node.abort()
    for task_id in (kept, resent):
        response = tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)
        assert response.task.cancel_requested
    # It got ``kept`` and holds it; ``resent`` was lost on the way (it is sent again).
    again = RawNode(
        coordinator.address, node_id="away", resume_session_id=node.session_id,
        leases=((kept, 1),), slots=2,
    )  # fmt: skip
    assert again.registered.resumed
    cancels = [(c.task_id, c.attempt) for c in again.next("cancel").cancel.leases]
    assert cancels == [(kept, 1)]
    (lease,) = assigned(again)
    assert (lease.task_id, lease.attempt) == (resent, 1)
    cancels = [(c.task_id, c.attempt) for c in again.next("cancel").cancel.leases]
    assert cancels == [(resent, 1)], "the cancel follows the assignment it cancels"
    again.report(failed(kept, 1, "TaskCancelled"), failed(resent, 1, "TaskCancelled"))
    assert all(a.accepted for a in again.next("update_acks").update_acks.acks)
    for task_id in (kept, resent):
        assert get(tasks, task_id).state == task_pb2.TASK_STATE_CANCELLED
    again.close()


def test_a_drain_survives_the_node_reconnecting(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
):
    """A draining node whose stream breaks resumes draining (it used to resume ACTIVE
    and take work again), and a node drained while away is told when it is back."""
    node = RawNode(coordinator.address, node_id="drained", slots=2)
    admin.DrainNode(admin_service_pb2.DrainNodeRequest(node_id="drained"), timeout=10)
    node.abort()  # say the drain never got through
    again = RawNode(coordinator.address, node_id="drained", resume_session_id=node.session_id)
    assert again.registered.resumed
    again.next("drain")
    task_id = submit(tasks)
    again.heartbeat(1)
    again.next("heartbeat_ack")
    assert "assignments" not in again.unread()
    assert get(tasks, task_id).state == QUEUED
    nodes = admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
    assert [n.state for n in nodes if n.node_id == "drained"] == [
        admin_service_pb2.NODE_STATE_DRAINING
    ]
    again.close()
    # Drained while away: accepted (its session is live), delivered on the resume.
    away = RawNode(coordinator.address, node_id="away", queues=("elsewhere",))
    away.abort()
    response = admin.DrainNode(admin_service_pb2.DrainNodeRequest(node_id="away"), timeout=10)
    assert response.node.node_id == "away"
    back = RawNode(
        coordinator.address, node_id="away", queues=("elsewhere",),
        resume_session_id=away.session_id,
    )  # fmt: skip
    back.next("drain")
    submit(tasks, queue="elsewhere")
    back.heartbeat(1)
    back.next("heartbeat_ack")
    assert "assignments" not in back.unread()
    back.close()


def test_an_assignment_that_never_arrives_counts_as_lost_after_three_resends(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """A node whose link cannot carry an assignment within the heartbeat timeout breaks
    its stream each time the assignment is sent. It is sent again on three resumes in a
    row, then the lease counts as lost (requeued as attempt 2), not resent forever."""
    task_id = submit(tasks)
    node = RawNode(coordinator.address, node_id="narrow")
    assigned(node)
    session_id = node.session_id
    for resend in range(1, RESENDS_PER_LEASE + 2):
        node.abort()  # as if the assignment never got through: the node holds nothing
        node = RawNode(coordinator.address, node_id="narrow", resume_session_id=session_id)
        assert node.registered.resumed
        if resend <= RESENDS_PER_LEASE:
            (lease,) = assigned(node)  # sent again: same lease
            assert (lease.task_id, lease.attempt) == (task_id, 1)
    # The fourth resume gave up on it: a lost lease, leased anew (here, to the same node).
    (lease,) = assigned(node)
    assert (lease.task_id, lease.attempt) == (task_id, 2)
    stored = get(tasks, task_id)
    assert (stored.attempt, stored.lease_expiries) == (2, 1)
    node.report(succeeded(task_id, 2, b'"ok"'))
    assert node.next("update_acks").update_acks.acks[0].accepted
    node.close()


def test_a_resend_that_arrives_resets_the_count(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """Only resumes in a row without the lease count: a node that got it is back to zero."""
    task_id = submit(tasks)
    node = RawNode(coordinator.address, node_id="flappy")
    assigned(node)
    session_id = node.session_id
    for _ in range(RESENDS_PER_LEASE):
        node.abort()
        node = RawNode(coordinator.address, node_id="flappy", resume_session_id=session_id)
        assigned(node)
    # This time the node kept it: it resumes holding the lease, twice.
    for _ in range(2):
        node.abort()
        node = RawNode(
            coordinator.address, node_id="flappy", resume_session_id=session_id,
            leases=((task_id, 1),),
        )  # fmt: skip
        assert node.registered.resumed
    node.abort()
    node = RawNode(coordinator.address, node_id="flappy", resume_session_id=session_id)
    (lease,) = assigned(node)  # lost once more: a first resend again, not an expiry
    assert (lease.task_id, lease.attempt) == (task_id, 1)
    assert get(tasks, task_id).lease_expiries == 0
    node.close()


def test_release_and_leave_requeue_at_once(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    first, second = submit(tasks), submit(tasks)
    node = RawNode(coordinator.address, node_id="leaving", slots=2)
    leases = assigned(node)
    while len(leases) < 2:
        leases += assigned(node)
    node.report(released(first, 1))
    assert node.next("update_acks").update_acks.acks[0].accepted
    (again,) = assigned(node)  # requeued at once; its slot is free again
    assert (again.task_id, again.attempt) == (first, 2)
    node.report(released(first, 1))  # that lease is gone now
    assert not node.next("update_acks").update_acks.acks[0].accepted
    node.close()  # Leave while holding both: they are handed back at once
    assert node.error is None, "the coordinator closes a left stream with OK"
    other = RawNode(coordinator.address, node_id="other", slots=2)
    leases = assigned(other)
    while len(leases) < 2:
        leases += assigned(other)
    assert sorted((lease.task_id, lease.attempt) for lease in leases) == sorted(
        [(first, 3), (second, 2)]
    )
    assert get(tasks, second).lease_expiries == 0
    other.close()


def test_half_close_without_leave_keeps_the_session_resumable(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks)
    node = RawNode(coordinator.address, node_id="quiet")
    assigned(node)
    node._outgoing.put(None)  # half-close, no Leave
    node.closed.wait(5)
    again = RawNode(
        coordinator.address, node_id="quiet", resume_session_id=node.session_id,
        leases=((task_id, 1),),
    )  # fmt: skip
    assert again.registered.resumed
    again.close()


def test_retryable_failures_back_off_then_dead_letter(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks, max_attempts=3)
    node = RawNode(coordinator.address)
    for attempt in (1, 2, 3):
        (lease,) = assigned(node)
        assert (lease.task_id, lease.attempt) == (task_id, attempt)
        node.report(failed(task_id, attempt))
        assert node.next("update_acks").update_acks.acks[0].accepted
        task = get(tasks, task_id)
        if attempt < 3:
            assert task.state == QUEUED
            assert task.HasField("next_attempt_time")
    task = get(tasks, task_id)
    assert (task.state, task.failures, task.attempt) == (FAILED, 3, 3)
    assert (task.last_error.type, task.last_error.message) == ("ValueError", "boom")
    node.close()


def test_non_retryable_failure_fails_at_once(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks, max_attempts=5)
    node = RawNode(coordinator.address)
    assigned(node)
    node.report(failed(task_id, 1, "BadInput", retryable=False))
    node.next("update_acks")
    task = get(tasks, task_id)
    assert (task.state, task.failures) == (FAILED, 1)
    assert not task.last_error.retryable
    node.close()


def test_poison_task_dead_letters_after_lease_expiry_cap(
    make_coordinator: Callable[..., InProcessCoordinator],
):
    coordinator = make_coordinator(max_lease_expiries=2, heartbeat_timeout_s=1.0)
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        task_id = submit(tasks)
        for attempt in (1, 2):
            node = RawNode(coordinator.address, node_id=f"victim-{attempt}")
            (lease,) = assigned(node)
            assert lease.attempt == attempt
            node.closed.wait(5)  # it never heartbeats: expired
        wait_until(lambda: get(tasks, task_id).state == FAILED, 5, what="dead letter")
        task = get(tasks, task_id)
        assert task.lease_expiries == 2
        assert task.last_error.type == "LEASE_EXPIRED"
        assert not task.last_error.retryable


def test_cancel_running_task_reaches_the_node(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks)
    node = RawNode(coordinator.address)
    assigned(node)
    response = tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)
    assert response.task.cancel_requested
    cancel = node.next("cancel").cancel.leases
    assert [(c.task_id, c.attempt) for c in cancel] == [(task_id, 1)]
    node.report(failed(task_id, 1, "TaskCancelled"))
    node.next("update_acks")
    assert get(tasks, task_id).state == task_pb2.TASK_STATE_CANCELLED
    node.close()


def test_drain_stops_dispatch_and_tells_the_node(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
):
    node = RawNode(coordinator.address, node_id="drainme", slots=4)
    response = admin.DrainNode(admin_service_pb2.DrainNodeRequest(node_id="drainme"), timeout=10)
    assert response.node.state == admin_service_pb2.NODE_STATE_DRAINING
    node.next("drain")
    task_id = submit(tasks)
    node.heartbeat(1)
    node.next("heartbeat_ack")
    assert node.unread() == []
    assert get(tasks, task_id).state == QUEUED
    try:
        admin.DrainNode(admin_service_pb2.DrainNodeRequest(node_id="ghost"), timeout=10)
        raise AssertionError("draining an unknown node must fail")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
    node.close()


def test_list_nodes_shows_leases_and_gone_nodes(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
):
    task_id = submit(tasks)
    node = RawNode(coordinator.address, node_id="lister", slots=3)
    assigned(node)
    (listed,) = admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
    assert (listed.node_id, listed.slots, listed.busy_slots) == ("lister", 3, 1)
    assert [(lease.task_id, lease.attempt) for lease in listed.leases] == [(task_id, 1)]
    node.close()
    assert list(admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes) == []
    gone = admin.ListNodes(admin_service_pb2.ListNodesRequest(include_gone=True), timeout=10)
    assert [n.state for n in gone.nodes] == [admin_service_pb2.NODE_STATE_LEFT]
    queues = admin.ListQueues(admin_service_pb2.ListQueuesRequest(), timeout=10).queues
    assert [(q.name, q.queued) for q in queues] == [("default", 1)]


def test_first_message_must_register(coordinator: InProcessCoordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        heartbeat = worker_service_pb2.ConnectRequest(heartbeat=worker_service_pb2.Heartbeat())
        try:
            list(stub.Connect(iter([heartbeat]), timeout=10))
            raise AssertionError("a stream without RegisterNode must fail")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = worker_service_pb2.ConnectRequest(
            register=worker_service_pb2.RegisterNode(node_id="x", slots=0, task_types=["echo"])
        )
        try:
            list(stub.Connect(iter([bad]), timeout=10))
            raise AssertionError("zero slots must fail")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "register.slots" in (exc.details() or "")


def test_a_node_serving_too_many_queue_type_pairs_is_refused_and_nothing_kept(
    coordinator: InProcessCoordinator,
):
    """Each (queue, type) a node serves is kept in memory and in the store: 1,000 types
    on 1,000 queues took ~160 MiB and held submits ~4 s; the largest registration a
    message holds would have taken the coordinator past its memory."""
    types = [f"t{i}" for i in range(400)]
    cases = {
        "100,001 queues": (["echo"], [f"q{i}" for i in range(100_001)], "100,001 (queue"),
        "100,400 pairs": (types, [f"q{i}" for i in range(251)], "100,400 (queue, type) pairs"),
    }
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        for case, (task_types, queues, why) in cases.items():
            register = worker_service_pb2.RegisterNode(
                node_id="big", slots=1, task_types=task_types, queues=queues
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(
                    stub.Connect(
                        iter([worker_service_pb2.ConnectRequest(register=register)]), timeout=10
                    )
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert "register.queues" in (refused.value.details() or ""), case
            assert why in (refused.value.details() or ""), case
    declared = coordinator.run(lambda: len(coordinator.server.coordinator.task_types._known))
    assert declared == 0
    # 400 types on 250 queues (100,000 pairs) is still a node; so is one serving a
    # queue per tenant, 5,000 of them.
    for node_id, task_types_, queue_count in (("wide", types, 250), ("tenants", ["echo"], 5_000)):
        node = RawNode(
            coordinator.address, node_id=node_id, task_types=tuple(task_types_),
            queues=tuple(f"q{i}" for i in range(queue_count)),
        )  # fmt: skip
        try:
            assert node.session_id
        finally:
            node.close()


def test_a_submit_whose_caller_gives_up_during_the_commit_still_queues_the_task(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """A cancelled call (deadline, client gone) must not leave a stored task off the queue."""
    server = coordinator.server.coordinator
    spec = SpecInput(
        type="echo",
        queue="",
        payload=b"{}",
        content_type="",
        max_attempts=0,
        idempotency_key="",
        retry_backoff_s=None,
    )

    async def submit_then_give_up() -> None:
        call = asyncio.ensure_future(server.submit([spec], batch=False))
        await asyncio.sleep(0)  # the submit now waits for its commit
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call

    coordinator.call(submit_then_give_up())
    node = RawNode(coordinator.address, slots=1)
    [lease] = assigned(node)  # stored AND queued: dispatched without a restart
    assert get(tasks, lease.task_id).state != QUEUED
    node.close()


def test_an_outcome_whose_stream_is_torn_down_during_the_commit_still_ends_the_lease(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    """A connection rotation can cancel the stream's reader while its commit runs (N8)."""
    task_id = submit(tasks)
    node = RawNode(coordinator.address, slots=1)
    [lease] = assigned(node)
    server = coordinator.server.coordinator
    outcome = Succeeded(Lease(task_id, lease.attempt), b'"ok"', "application/json")

    async def apply_then_tear_down() -> bool:
        session = server.registry.sessions[node.session_id]
        call = asyncio.ensure_future(server.sessions.apply_updates(session, [outcome]))
        await asyncio.sleep(0)  # the commit is queued; the stream goes away now
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.2)  # the commit and its follow-up finish on their own
        return task_id in session.leases

    assert coordinator.call(apply_then_tear_down()) is False, "the lease is still held"
    assert get(tasks, task_id).state == SUCCEEDED
    # The node never saw an ack and resends its result: it is the same one, accepted.
    node.report(succeeded(task_id, lease.attempt, b'"ok"'))
    [ack] = node.next("update_acks").update_acks.acks
    assert ack.accepted, ack
    node.close()


def test_a_retry_whose_caller_gives_up_during_the_commit_still_queues_the_task(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
):
    task_id = submit(tasks)
    tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)
    server = coordinator.server.coordinator

    async def retry_then_give_up() -> None:
        call = asyncio.ensure_future(server.bulk.retry([task_id], TaskFilter()))
        for _ in range(100):  # until the retry's commit is queued
            if coordinator.writer_backlog():
                break
            await asyncio.sleep(0)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call

    coordinator.call(retry_then_give_up())
    node = RawNode(coordinator.address, slots=1)
    assert [lease.task_id for lease in assigned(node)] == [task_id]  # back on the queue
    node.close()


def test_heartbeats_and_registrations_list_at_most_what_a_node_can_hold(
    coordinator: InProcessCoordinator,
):
    """80,000 made-up leases in a heartbeat took the coordinator 209 ms of CPU each
    time and came back whole in the ack."""
    most = 3 * 10_000  # slots and prefetch (at most 10,000 each), and unacked outcomes
    made_up = tuple((str(uuid.uuid4()), 1) for _ in range(most + 1))
    node = RawNode(coordinator.address, node_id="listing")
    try:
        node.heartbeat(1, made_up[:most])  # as many as a node may hold: answered
        assert len(node.next("heartbeat_ack").heartbeat_ack.stale_leases) == most
        node.heartbeat(2, made_up)
        assert node.closed.wait(10) and node.error is not None
        assert node.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "heartbeat.leases" in (node.error.details() or "")
    finally:
        node.channel.close()
    with pytest.raises(AssertionError, match=r"register\.leases"):
        RawNode(coordinator.address, node_id="resuming", leases=made_up)


def test_acks_of_a_huge_frame_of_outcomes_come_in_frames_a_node_can_receive(
    coordinator: InProcessCoordinator,
):
    """40,000 outcomes (here for leases the node never had) were answered in one
    message past the 4 MiB a node receives by default: its stream broke."""
    node = RawNode(coordinator.address, node_id="reporter", auto_heartbeat=True)
    try:
        node.report(*(succeeded(str(uuid.uuid4()), 1, b"1") for _ in range(40_000)))
        acks, frames = 0, 0
        while acks < 40_000:
            frame = node.next("update_acks", 60).update_acks
            assert not any(ack.accepted for ack in frame.acks)
            acks, frames = acks + len(frame.acks), frames + 1
        assert acks == 40_000 and frames >= 2 and not node.closed.is_set()
    finally:
        node.close()
