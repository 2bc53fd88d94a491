"""The client's calls over real gRPC, against a scripted scripted_coordinator.

These cover what the client decides on its own: idempotency keys, retries,
batching, paging, watch reconnection and deadlines, and error details.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq_client import (
    Client,
    ClientConfig,
    InvalidArgument,
    NodeNotFound,
    NodeState,
    RetryPolicy,
    SubmitManyError,
    TaskNotFound,
    TaskSpec,
    TaskState,
    Unavailable,
    WaitTimeout,
)

from .scripted import (
    ScriptedCoordinator,
    abort,
    block_until_cancelled,
    rich_status,
    start_server,
    task_message,
)

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=5.0)


@pytest.fixture
def scripted_coordinator() -> Iterator[tuple[ScriptedCoordinator, str]]:
    scripted = ScriptedCoordinator()
    server, address = start_server(scripted)
    yield scripted, address
    server.stop(grace=None)


@pytest.fixture
def scripted(scripted_coordinator: tuple[ScriptedCoordinator, str]) -> ScriptedCoordinator:
    return scripted_coordinator[0]


@pytest.fixture
def client(scripted_coordinator: tuple[ScriptedCoordinator, str]) -> Iterator[Client]:
    config = ClientConfig(address=scripted_coordinator[1], timeout_s=5.0, retry=FAST_RETRY)
    with Client.from_config(config) as client:
        yield client


def unavailable_once(answer: Any) -> Any:
    """A handler that fails its first call with UNAVAILABLE, then answers ``answer``."""
    failed = threading.Event()

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        if not failed.is_set():
            failed.set()
            abort(
                context,
                rich_status(grpc.StatusCode.UNAVAILABLE, "busy", reason="STORE_UNAVAILABLE"),
            )
        return answer(request)

    return handler


def echo_submit(request: task_service_pb2.SubmitTaskRequest) -> task_service_pb2.SubmitTaskResponse:
    spec = request.task
    task = task_message(
        "t1",
        type=spec.type,
        queue=spec.queue or "default",
        payload=spec.payload,
        idempotency_key=spec.idempotency_key,
    )
    return task_service_pb2.SubmitTaskResponse(task=task, created=True)


# --- submitting ----------------------------------------------------------------------------


def test_submit_retries_with_the_same_generated_key(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    scripted.handlers["SubmitTask"] = unavailable_once(echo_submit)
    task = client.submit("echo", {"x": 1}, queue="q1", max_attempts=2, retry_backoff_s=0.5)
    calls = scripted.calls("SubmitTask")
    assert len(calls) == 2
    keys = {call.task.idempotency_key for call in calls}
    assert len(keys) == 1 and len(keys.pop()) == 32  # one uuid4 hex for both attempts
    spec = calls[0].task
    assert (spec.type, spec.queue, spec.max_attempts) == ("echo", "q1", 2)
    assert spec.payload == task_pb2.Payload(data=b'{"x":1}', content_type="application/json")
    assert spec.retry_backoff.ToNanoseconds() == 500_000_000
    assert task.payload_value() == {"x": 1}
    assert task.idempotency_key == spec.idempotency_key


def test_submit_keeps_a_given_key(scripted: ScriptedCoordinator, client: Client) -> None:
    scripted.handlers["SubmitTask"] = lambda request, _: echo_submit(request)
    client.submit("echo", idempotency_key="order-1")
    assert scripted.calls("SubmitTask")[0].task.idempotency_key == "order-1"


def test_field_violations_travel_over_the_wire(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    scripted.handlers["SubmitTask"] = lambda _, context: abort(
        context,
        rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid task",
            reason="INVALID_FIELD",
            violations=(("task.queue", "must match [A-Za-z0-9_.-]+"),),
        ),
    )
    with pytest.raises(InvalidArgument) as info:
        client.submit("echo", queue="bad queue")
    assert info.value.reason == "INVALID_FIELD"
    assert info.value.field_violations == [("task.queue", "must match [A-Za-z0-9_.-]+")]
    assert len(scripted.calls("SubmitTask")) == 1  # not retried


def batch_answer(request: task_service_pb2.SubmitTasksRequest) -> Any:
    return task_service_pb2.SubmitTasksResponse(
        results=[
            task_service_pb2.SubmitTaskResponse(
                task=task_message(spec.idempotency_key, type=spec.type), created=True
            )
            for spec in request.tasks
        ]
    )


def test_submit_many_splits_into_batches(
    scripted_coordinator: tuple[ScriptedCoordinator, str],
) -> None:
    scripted, address = scripted_coordinator
    scripted.handlers["SubmitTasks"] = lambda request, _: batch_answer(request)
    config = ClientConfig(address=address, retry=FAST_RETRY, submit_batch_size=2)
    specs = [TaskSpec(type=f"t{i}", payload=i) for i in range(5)]
    with Client.from_config(config) as client:
        results = client.submit_many(specs)
    assert [len(call.tasks) for call in scripted.calls("SubmitTasks")] == [2, 2, 1]
    assert [r.task.type for r in results] == [f"t{i}" for i in range(5)]
    assert len({r.task.id for r in results}) == 5  # every spec got its own key


def test_submit_many_splits_by_size(scripted_coordinator: tuple[ScriptedCoordinator, str]) -> None:
    scripted, address = scripted_coordinator
    scripted.handlers["SubmitTasks"] = lambda request, _: batch_answer(request)
    config = ClientConfig(address=address, retry=FAST_RETRY, submit_batch_bytes=1_000)
    specs = [TaskSpec(type="blob", payload=b"x" * 400) for _ in range(5)]
    with Client.from_config(config) as client:
        assert len(client.submit_many(specs)) == 5
    assert [len(call.tasks) for call in scripted.calls("SubmitTasks")] == [2, 2, 1]


def test_submit_many_reports_a_partial_failure(
    scripted_coordinator: tuple[ScriptedCoordinator, str],
) -> None:
    scripted, address = scripted_coordinator

    def second_batch_fails(request: Any, context: grpc.ServicerContext) -> Any:
        if len(scripted.calls("SubmitTasks")) > 1:
            abort(context, rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"))
        return batch_answer(request)

    scripted.handlers["SubmitTasks"] = second_batch_fails
    config = ClientConfig(address=address, retry=FAST_RETRY, submit_batch_size=2)
    with Client.from_config(config) as client, pytest.raises(SubmitManyError) as info:
        client.submit_many([TaskSpec(type="echo") for _ in range(5)])
    error = info.value
    assert len(error.results) == 2
    assert error.offset == 2
    assert len(error.pending) == 3
    sent = [spec.idempotency_key for spec in scripted.calls("SubmitTasks")[1].tasks]
    assert [spec.idempotency_key for spec in error.pending][:2] == sent


def test_submit_many_of_nothing_sends_nothing(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    assert client.submit_many([]) == []
    assert scripted.calls("SubmitTasks") == []


# --- reads ---------------------------------------------------------------------------------


def test_get_retries_unavailable_and_maps_not_found(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    scripted.handlers["GetTask"] = unavailable_once(
        lambda request: task_service_pb2.GetTaskResponse(task=task_message(request.task_id))
    )
    assert client.get("abc").id == "abc"
    scripted.handlers["GetTask"] = lambda _, context: abort(
        context, rich_status(grpc.StatusCode.NOT_FOUND, "no task abc", reason="TASK_NOT_FOUND")
    )
    with pytest.raises(TaskNotFound, match="no task abc"):
        client.get("abc")


def test_unreachable_reads_give_up_as_unavailable() -> None:
    started = time.monotonic()
    with (
        Client("127.0.0.1:1", timeout_s=2.0, retry=FAST_RETRY) as client,
        pytest.raises(Unavailable),
    ):
        client.get("t1")
    assert time.monotonic() - started < 5


def test_iter_tasks_follows_page_tokens(scripted: ScriptedCoordinator, client: Client) -> None:
    pages = {"": (["a", "b"], "p2"), "p2": (["c", "d"], "p3"), "p3": (["e"], "")}

    def list_tasks(request: task_service_pb2.ListTasksRequest, _: Any) -> Any:
        ids, token = pages[request.page_token]
        return task_service_pb2.ListTasksResponse(
            tasks=[task_message(i) for i in ids], next_page_token=token
        )

    scripted.handlers["ListTasks"] = list_tasks
    assert [t.id for t in client.iter_tasks(queue="q", state="queued", page_size=2)] == list(
        "abcde"
    )
    request = scripted.calls("ListTasks")[0]
    assert (request.queue, request.state, request.page_size) == ("q", 1, 2)
    assert [t.id for t in client.list_tasks(limit=3)] == ["a", "b", "c"]
    assert scripted.calls("ListTasks")[-1].page_size == 3


def test_cancel_nodes_drain_queues_and_health(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    scripted.handlers["CancelTask"] = lambda request, _: task_service_pb2.CancelTaskResponse(
        task=task_message(request.task_id, task_pb2.TASK_STATE_CANCELLED)
    )
    node = admin_service_pb2.Node(
        node_id="n1", session_id="s1", state=admin_service_pb2.NODE_STATE_ACTIVE, slots=2
    )
    scripted.handlers["ListNodes"] = lambda request, _: admin_service_pb2.ListNodesResponse(
        nodes=[node] if not request.include_gone else [node, node]
    )
    scripted.handlers["DrainNode"] = lambda request, context: abort(
        context, rich_status(grpc.StatusCode.NOT_FOUND, "no node", reason="NODE_NOT_FOUND")
    )
    scripted.handlers["ListQueues"] = lambda request, _: admin_service_pb2.ListQueuesResponse(
        queues=[admin_service_pb2.QueueStats(name="default", queued=7)]
    )
    assert client.cancel("t9").state is TaskState.CANCELLED
    assert [n.state for n in client.nodes()] == [NodeState.ACTIVE]
    assert len(client.nodes(include_gone=True)) == 2
    with pytest.raises(NodeNotFound):
        client.drain("ghost")
    assert client.queues()[0].queued == 7
    assert client.health() == "SERVING"


# --- waiting -------------------------------------------------------------------------------


def states(*states: task_pb2.TaskState) -> list[task_service_pb2.WatchTaskResponse]:
    return [task_service_pb2.WatchTaskResponse(task=task_message("t1", s)) for s in states]


QUEUED, RUNNING, SUCCEEDED = (
    task_pb2.TASK_STATE_QUEUED,
    task_pb2.TASK_STATE_RUNNING,
    task_pb2.TASK_STATE_SUCCEEDED,
)


def test_wait_returns_the_terminal_task(scripted: ScriptedCoordinator, client: Client) -> None:
    scripted.handlers["WatchTask"] = lambda request, _: iter(states(QUEUED, RUNNING, SUCCEEDED))
    assert [t.state for t in client.watch("t1")] == ["queued", "running", "succeeded"]
    assert client.wait("t1", timeout_s=5).state is TaskState.SUCCEEDED


def test_watch_reconnects_after_unavailable(scripted: ScriptedCoordinator, client: Client) -> None:
    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if len(scripted.calls("WatchTask")) == 1:
            yield from states(QUEUED, RUNNING)
            abort(context, rich_status(grpc.StatusCode.UNAVAILABLE, "restarting"))
        elif len(scripted.calls("WatchTask")) == 2:
            abort(context, rich_status(grpc.StatusCode.UNAVAILABLE, "still restarting"))
        else:
            yield from states(RUNNING, SUCCEEDED)  # a new stream starts with the current state

    scripted.handlers["WatchTask"] = watch
    seen = [t.state for t in client.watch("t1")]
    assert seen == ["queued", "running", "succeeded"]  # the repeated "running" is skipped
    assert len(scripted.calls("WatchTask")) == 3


def test_watch_reconnects_for_longer_than_the_attempt_budget(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if len(scripted.calls("WatchTask")) <= 2 * FAST_RETRY.attempts:
            abort(context, rich_status(grpc.StatusCode.UNAVAILABLE, "restarting"))
        yield from states(SUCCEEDED)

    scripted.handlers["WatchTask"] = watch
    assert client.wait("t1", timeout_s=10).state is TaskState.SUCCEEDED


def test_wait_times_out_with_the_last_state(scripted: ScriptedCoordinator, client: Client) -> None:
    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from states(RUNNING)
        block_until_cancelled(context)

    scripted.handlers["WatchTask"] = watch
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.wait("t1", timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 3
    assert info.value.last is not None and info.value.last.state is TaskState.RUNNING


def test_long_watches_are_renewed(scripted_coordinator: tuple[ScriptedCoordinator, str]) -> None:
    scripted, address = scripted_coordinator

    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if len(scripted.calls("WatchTask")) == 1:
            yield from states(RUNNING)
            block_until_cancelled(context)  # until the client's 0.2 s slice ends
        else:
            yield from states(SUCCEEDED)

    scripted.handlers["WatchTask"] = watch
    config = ClientConfig(address=address, retry=FAST_RETRY, watch_renew_s=0.2)
    with Client.from_config(config) as client:
        assert client.wait("t1").state is TaskState.SUCCEEDED
    assert len(scripted.calls("WatchTask")) == 2


def test_wait_on_a_missing_task_raises(scripted: ScriptedCoordinator, client: Client) -> None:
    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        abort(context, rich_status(grpc.StatusCode.NOT_FOUND, "no task", reason="TASK_NOT_FOUND"))
        yield from ()

    scripted.handlers["WatchTask"] = watch
    with pytest.raises(TaskNotFound):
        client.wait("nope", timeout_s=5)


def test_close_is_idempotent(scripted_coordinator: tuple[ScriptedCoordinator, str]) -> None:
    client = Client(scripted_coordinator[1])
    client.close()
    client.close()


def test_stopping_a_watch_early_ends_the_call(
    scripted: ScriptedCoordinator, client: Client
) -> None:
    ended = threading.Event()

    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.add_callback(ended.set)
        yield from states(RUNNING)
        block_until_cancelled(context)

    scripted.handlers["WatchTask"] = watch
    changes = client.watch("t1")
    assert next(changes).state is TaskState.RUNNING
    changes.close()
    assert ended.wait(timeout=5)
