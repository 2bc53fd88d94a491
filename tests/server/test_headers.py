"""Task headers (TaskSpec.headers) against a real in-process coordinator: stored, shown,
sent to nodes, validated and guarded by the idempotency key."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import InProcessCoordinator, RawNode

HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "a"}


def spec(headers: dict[str, str], key: str = "", queue: str = "headers") -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        type="echo",
        queue=queue,
        payload=task_pb2.Payload(data=b"{}"),
        idempotency_key=key,
        headers=headers,
    )


def submit(tasks: TaskServiceStub, task: task_pb2.TaskSpec) -> task_service_pb2.SubmitTaskResponse:
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=task), timeout=10)


def get(tasks: TaskServiceStub, task_id: str) -> task_pb2.Task:
    return tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10).task


def violations(exc: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []


def test_headers_are_stored_shown_and_survive_a_restart(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator()
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        answered = submit(tasks, spec(HEADERS)).task
        assert dict(answered.headers) == HEADERS
        plain = submit(tasks, spec({})).task
        assert not plain.headers
        listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(queue="headers"), timeout=10)
        assert [dict(t.headers) for t in listed.tasks] == [{}, HEADERS]  # newest first
    coordinator.stop()
    coordinator = make_coordinator()  # same data directory
    with grpc.insecure_channel(coordinator.address) as channel:
        assert dict(get(TaskServiceStub(channel), answered.id).headers) == HEADERS


@pytest.mark.parametrize("node_first", [True, False], ids=["handed-to-idle-node", "dispatched"])
def test_a_node_receives_the_headers_with_its_assignment(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, node_first: bool
) -> None:
    # An idle node (registered once RawNode returns) gets a new task leased in its own
    # insert (the handoff); a task already queued goes through a dispatch round, read
    # back from the store.
    node = RawNode(coordinator.address, queues=("headers",)) if node_first else None
    submitted = submit(tasks, spec(HEADERS)).task
    task_id = submitted.id
    handed = submitted.state == task_pb2.TASK_STATE_LEASED
    assert handed == node_first
    node = node or RawNode(coordinator.address, queues=("headers",))
    try:
        (assignment,) = node.next("assignments").assignments.assignments
        assert assignment.lease.task_id == task_id
        assert dict(assignment.headers) == HEADERS
    finally:
        node.close()


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({f"k{i}": "v" for i in range(33)}, "task.headers"),
        ({"bad key": "v"}, 'task.headers["bad key"]'),
        ({"k" * 65: "v"}, f'task.headers["{"k" * 65}"]'),
        ({"ok": "x" * 2049}, 'task.headers["ok"]'),
        ({"ok": "line\nbreak"}, 'task.headers["ok"]'),
    ],
    ids=["too-many", "bad-key", "long-key", "long-value", "unprintable-value"],
)
def test_bad_headers_name_the_header(
    tasks: TaskServiceStub, headers: dict[str, str], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as bad:
        submit(tasks, spec(headers))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(bad.value) == [field]
    batch = task_service_pb2.SubmitTasksRequest(tasks=[spec({}), spec(headers)])
    with pytest.raises(grpc.RpcError) as whole:
        tasks.SubmitTasks(batch, timeout=10)
    assert violations(whole.value) == [field.replace("task.", "tasks[1].", 1)]
    limits = {f"k{i:02}": "v" * 2048 for i in range(32)} | {"K-" + "k" * 62: "v"}
    assert len(limits) == 33  # one over: the limits themselves pass below
    del limits["K-" + "k" * 62]
    assert submit(tasks, spec(limits)).created


def test_a_resubmit_with_other_headers_is_answered_with_the_stored_task(
    tasks: TaskServiceStub,
) -> None:
    # Headers describe a submission (a retry from another trace carries another
    # traceparent), not the work: the idempotency key does not guard them.
    first = submit(tasks, spec({"a": "1", "b": "2"}, key="k"))
    for other in ({"b": "2", "a": "1"}, {"a": "1"}, {"a": "1", "b": "3"}, {}):
        again = submit(tasks, spec(other, key="k"))
        assert (again.created, again.task.id) == (False, first.task.id)
        assert dict(again.task.headers) == {"a": "1", "b": "2"}
    other_queue = spec({"a": "1", "b": "2"}, key="k", queue="elsewhere")
    with pytest.raises(grpc.RpcError) as clash:  # the work itself is still guarded
        submit(tasks, other_queue)
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_list_tasks_by_headers(tasks: TaskServiceStub) -> None:
    acme = [submit(tasks, spec({"tenant": "acme", "tier": t})).task.id for t in ("gold", "free")]
    submit(tasks, spec({"tenant": "other"}))
    submit(tasks, spec({}))
    submit(tasks, spec({"tenant": "acme"}, queue="elsewhere"))

    def listed(headers: dict[str, str], queue: str = "headers", page_size: int = 0) -> list[str]:
        ids, token = [], ""
        while True:
            request = task_service_pb2.ListTasksRequest(
                queue=queue, headers=headers, page_size=page_size, page_token=token
            )
            page = tasks.ListTasks(request, timeout=10)
            ids += [t.id for t in page.tasks]
            if not (token := page.next_page_token):
                return ids

    assert listed({"tenant": "acme"}) == acme[::-1]  # newest first
    assert listed({"tenant": "acme"}, page_size=1) == acme[::-1]  # across pages
    assert listed({"tenant": "acme", "tier": "gold"}) == acme[:1]  # every header must match
    assert listed({"tenant": "nobody"}) == []
    assert len(listed({"tenant": "acme"}, queue="")) == 3  # with no other filter
    with pytest.raises(grpc.RpcError) as bad:
        listed({"bad key": "x"})
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(bad.value) == ['headers["bad key"]']
    # A page token is tied to its filters: another header filter cannot reuse it.
    first = tasks.ListTasks(
        task_service_pb2.ListTasksRequest(queue="headers", headers={"tenant": "acme"}, page_size=1),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as moved:
        tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                queue="headers", headers={"tenant": "other"}, page_token=first.next_page_token
            ),
            timeout=10,
        )
    assert moved.value.code() == grpc.StatusCode.INVALID_ARGUMENT
