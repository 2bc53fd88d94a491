"""NUL characters in strings, which protobuf carries and PostgreSQL's text cannot hold.

On PostgreSQL they made the store fail: a submit with a NUL in its idempotency
key, or a filter or page token holding one, answered UNAVAILABLE (retryable,
so a client retried it for ever) and a write flipped the coordinator's health
to NOT_SERVING; a node's outcome with a NUL in its error message or result
content type was never applied (its commit failed, the node sent it again, and
again). Run on both stores (it is in the Makefile's PostgreSQL pass).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtq.v1 import admin_service_pb2 as admin_pb
from dtq.v1 import task_pb2, worker_service_pb2
from dtq.v1 import task_service_pb2 as task_service
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_client import Client, TaskState
from tests.harness import InProcessCoordinator, RawNode, succeeded, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def channel(coordinator: InProcessCoordinator) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(coordinator.address) as ch:
        yield ch


def serving(channel: grpc.Channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_requests_holding_nul_are_refused_as_bad_input(channel: grpc.Channel) -> None:
    tasks, admin = TaskServiceStub(channel), AdminServiceStub(channel)
    spec = task_pb2.TaskSpec(type="echo", idempotency_key="order-\x00-1")
    error = refused(lambda: tasks.SubmitTask(task_service.SubmitTaskRequest(task=spec), timeout=5))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "task.idempotency_key: must not contain NUL" in (error.details() or "")

    # Filters no task can match: a NUL, or a name the queue and type rules refuse.
    filtered: list[Callable[[str, str], object]] = [
        lambda q, t: tasks.ListTasks(task_service.ListTasksRequest(queue=q, type=t), timeout=5),
        lambda q, t: tasks.CancelTasks(task_service.CancelTasksRequest(queue=q, type=t), timeout=5),
        lambda q, t: tasks.RetryTasks(task_service.RetryTasksRequest(queue=q, type=t), timeout=5),
        lambda q, t: tasks.PurgeTasks(
            task_service.PurgeTasksRequest(queue=q, type=t, state=task_pb2.TASK_STATE_SUCCEEDED),
            timeout=5,
        ),
    ]
    for call in filtered:
        for queue, type_, field in (("q\x00", "", "queue"), ("", "t\x00", "type"),
                                    ("my queue", "", "queue")):  # fmt: skip
            error = refused(lambda: call(queue, type_))  # noqa: B023 - called at once
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (queue, type_)
            assert (error.details() or "").startswith(f"{field}: "), error.details()

    missing = task_service.GetGroupRequest(group_id="g\x00")
    assert refused(lambda: tasks.GetGroup(missing, timeout=5)).code() is grpc.StatusCode.NOT_FOUND

    for method, listing in (("ListQueues", "ListQueues"), ("ListRateLimits", "ListRateLimits")):
        raw = json.dumps({"listing": listing, "after": ["a\x00"]}).encode()
        request = getattr(admin_pb, f"{method}Request")(page_token=base64.b64encode(raw).decode())
        error = refused(lambda: getattr(admin, method)(request, timeout=5))  # noqa: B023
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (error.details() or "")
    assert serving(channel), "one bad request flipped the coordinator's health"


def test_a_nodes_text_holding_nul_is_stored_with_a_replacement_character(
    coordinator: InProcessCoordinator, channel: grpc.Channel
) -> None:
    node = RawNode(coordinator.address, "nul-node", slots=3, queues=("nul",), auto_heartbeat=True)
    try:
        with Client(coordinator.address) as client:
            ids = [client.submit("echo", i, queue="nul", max_attempts=1).id for i in range(3)]
            leases: dict[str, int] = {}
            while len(leases) < 3:
                frame = node.next("assignments").assignments.assignments
                leases.update((a.lease.task_id, a.lease.attempt) for a in frame)

            def lease(task_id: str) -> task_pb2.Lease:
                return task_pb2.Lease(task_id=task_id, attempt=leases[task_id])

            progressed, failing, succeeding = ids
            error = task_pb2.TaskError(type="Bad\x00Error", message="m\x00", traceback="t\x00")
            node.report(
                worker_service_pb2.TaskUpdate(
                    lease=lease(progressed),
                    progress=task_pb2.TaskProgress(percent=50, message="half\x00way"),
                ),
                worker_service_pb2.TaskUpdate(
                    lease=lease(failing), failed=worker_service_pb2.TaskFailed(error=error)
                ),
                worker_service_pb2.TaskUpdate(
                    lease=lease(succeeding),
                    succeeded=worker_service_pb2.TaskSucceeded(
                        result=task_pb2.Payload(data=b"x", content_type="text/\x00plain")
                    ),
                ),
            )
            wait_until(lambda: client.get(succeeding).is_terminal, 10, what="the outcomes")
            failed = client.wait(failing, timeout_s=10)
            assert failed.state is TaskState.FAILED and failed.last_error is not None
            assert (failed.last_error.type, failed.last_error.message) == (
                "Bad\ufffdError",
                "m\ufffd",
            )
            assert failed.last_error.traceback == "t\ufffd"
            done = client.get(succeeding)
            assert (done.state, done.result_content_type) == (
                TaskState.SUCCEEDED,
                "text/\ufffdplain",
            )
            wait_until(lambda: client.get(progressed).progress is not None, 10, what="progress")
            progress = client.get(progressed).progress
            assert progress is not None and progress.message == "half\ufffdway"
            assert serving(channel)
    finally:
        node.close()


def test_an_outcome_for_a_made_up_id_holding_nul_is_refused_and_the_stream_goes_on(
    coordinator: InProcessCoordinator, channel: grpc.Channel
) -> None:
    """On PostgreSQL the store read for it failed, ending the node's stream; the node
    sent the outcome again on its next stream, and never got work."""
    node = RawNode(
        coordinator.address, "nul-ids", slots=1, queues=("nul-ids",), auto_heartbeat=True
    )
    try:
        node.report(succeeded("made\x00up", 1, b"1"))
        [ack] = node.next("update_acks").update_acks.acks
        assert ack.lease.task_id == "made\x00up" and not ack.accepted
        with Client(coordinator.address) as client:
            task = client.submit("echo", 1, queue="nul-ids")
            [assignment] = node.next("assignments").assignments.assignments
            assert assignment.lease.task_id == task.id
        assert serving(channel)
    finally:
        node.close()
