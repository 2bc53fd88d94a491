"""--strict-task-types: submits of a (queue, type) no node has declared are refused.

Real in-process coordinators (SQLite files), RawNode registrations, the Python
client; one raw stub to read the status details any language would see.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_client import Client, TaskSpec, TaskState, UnknownTaskType
from tests.harness import InProcessCoordinator, RawNode, server_config, wait_until

MakeCoordinator = Callable[..., InProcessCoordinator]


def declared(coordinator: InProcessCoordinator, queue: str, type_: str) -> bool:
    return coordinator.run(lambda: (queue, type_) in coordinator.server.coordinator.task_types)


def declare(coordinator: InProcessCoordinator, *types: str, queues: tuple[str, ...] = ()) -> None:
    """A node registers serving ``types`` (on ``queues``, "default" if none), then leaves."""
    node = RawNode(coordinator.address, task_types=types, queues=queues)
    node.close()


def test_a_type_no_node_declared_is_refused_and_a_declared_one_accepted(
    make_coordinator: MakeCoordinator,
) -> None:
    coordinator = make_coordinator(strict_task_types=True)
    with Client(coordinator.address) as client:
        with pytest.raises(UnknownTaskType) as refused:
            client.submit("echo", 1)
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "UNKNOWN_TASK_TYPE"
        assert "task.type: no worker has declared type 'echo' on queue 'default'" in str(
            refused.value
        )
        declare(coordinator, "echo")
        assert client.submit("echo", 1).state is TaskState.QUEUED
        with pytest.raises(UnknownTaskType):  # the pair counts: no node serves that queue
            client.submit("echo", 1, queue="elsewhere")


def test_the_status_names_each_spec_in_a_precondition_failure(
    make_coordinator: MakeCoordinator,
) -> None:
    coordinator = make_coordinator(strict_task_types=True)
    declare(coordinator, "echo")
    wait_until(lambda: declared(coordinator, "default", "echo"), 10)
    specs = [task_pb2.TaskSpec(type=t) for t in ("echo", "nope", "echo", "typo")]
    with (
        grpc.insecure_channel(coordinator.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        TaskServiceStub(channel).SubmitTasks(
            task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10
        )
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None and refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    failure = error_details_pb2.PreconditionFailure()
    assert any(detail.Unpack(failure) for detail in status.details)
    assert [(v.type, v.subject) for v in failure.violations] == [
        ("UNKNOWN_TASK_TYPE", "tasks[1].type"),
        ("UNKNOWN_TASK_TYPE", "tasks[3].type"),
    ]
    with Client(coordinator.address) as client:  # a batch is all or nothing
        assert client.list_tasks() == []


def test_declared_types_outlive_their_nodes_and_a_restart(tmp_path: Path) -> None:
    config = server_config(tmp_path / "data", strict_task_types=True)
    first = InProcessCoordinator(config).start()
    try:
        declare(first, "echo", "add", queues=("default", "slow"))
        store = first.server.coordinator.store
        wait_until(lambda: ("slow", "add") in first.call(store.load_task_types()), 10)
    finally:
        first.stop()
    again = InProcessCoordinator(config).start()
    try:
        with Client(again.address) as client:  # no node connected at all
            assert client.submit("add", [1, 2], queue="slow").state is TaskState.QUEUED
            with pytest.raises(UnknownTaskType):
                client.submit("never.declared", 1)
    finally:
        again.stop()


def test_a_stream_refuses_the_unknown_submit_alone(make_coordinator: MakeCoordinator) -> None:
    coordinator = make_coordinator(strict_task_types=True)
    declare(coordinator, "echo")
    with Client(coordinator.address) as client:
        with client.submitter() as submitter:
            futures = [submitter.submit(t, i) for i, t in enumerate(("echo", "nope", "echo"))]
        assert futures[0].result().created and futures[2].result().created
        with pytest.raises(UnknownTaskType) as refused:
            futures[1].result()
        assert "task.type" in str(refused.value)


def test_a_schedule_of_an_unknown_type_is_refused(make_coordinator: MakeCoordinator) -> None:
    coordinator = make_coordinator(strict_task_types=True)
    with Client(coordinator.address) as client:
        with pytest.raises(UnknownTaskType) as refused:
            client.create_schedule("nightly", TaskSpec("report"), interval_s=60)
        assert "schedule.task.type" in str(refused.value)
        declare(coordinator, "report")
        assert client.create_schedule("nightly", TaskSpec("report"), interval_s=60).name


def test_by_default_an_unknown_type_is_queued_to_wait(coordinator: InProcessCoordinator) -> None:
    with Client(coordinator.address) as client:
        assert client.submit("nobody.runs.this", 1).state is TaskState.QUEUED
