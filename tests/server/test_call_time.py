"""The coordinator's cap on how long a unary call runs (--max-call-time, RELIABILITY R10)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_client import Client
from dtq_server.failpoints import Failpoints
from tests.harness import InProcessCoordinator, start_server

CAP_S = 0.5
SPEC = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"{}"))


def stuck_coordinator(make: Callable[..., InProcessCoordinator]) -> InProcessCoordinator:
    """A coordinator whose next submit hangs before its commit (as on a stuck disk)."""
    stuck = Failpoints(pauses={"submit.before_commit": 60.0})
    return make(max_call_s=CAP_S, failpoints=stuck)


def reason(exc: grpc.RpcError) -> str:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def submit(tasks: TaskServiceStub, timeout: float | None) -> task_service_pb2.SubmitTaskResponse:
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=SPEC), timeout=timeout)


def count(tasks: TaskServiceStub) -> int:
    return len(tasks.ListTasks(task_service_pb2.ListTasksRequest(), timeout=10).tasks)


@pytest.mark.parametrize("client_deadline", [None, 30.0], ids=["no-deadline", "longer-deadline"])
def test_a_call_past_the_cap_ends_deadline_exceeded_and_the_server_goes_on(
    make_coordinator: Callable[..., InProcessCoordinator], client_deadline: float | None
) -> None:
    coordinator = stuck_coordinator(make_coordinator)
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as capped:
            # Without the cap this would wait out the failpoint's 60 s (and then succeed).
            submit(tasks, client_deadline)
        assert capped.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert reason(capped.value) == "MAX_CALL_TIME"
        assert "at most 0.5 s" in (capped.value.details() or "")
        assert time.monotonic() - started < 10
        assert count(tasks) == 0, "cut off before its commit: nothing stored"
        assert submit(tasks, 10).created  # the failpoint pauses once; the server serves on


def test_a_client_deadline_under_the_cap_is_the_client_s(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = stuck_coordinator(make_coordinator)
    with grpc.insecure_channel(coordinator.address) as channel:
        with pytest.raises(grpc.RpcError) as expired:
            submit(TaskServiceStub(channel), 0.2)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert reason(expired.value) == ""  # grpc's own, not the coordinator's cap


def test_streams_are_not_capped(make_coordinator: Callable[..., InProcessCoordinator]) -> None:
    coordinator = make_coordinator(max_call_s=CAP_S)
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        task_id = submit(tasks, 10).task.id  # no node: it stays queued
        watch = tasks.WatchTask(
            task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=4 * CAP_S
        )
        first = next(watch)
        assert first.task.state == task_pb2.TASK_STATE_QUEUED
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)  # nothing more comes: the call lives until the client's deadline
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert reason(ended.value) == ""


def test_the_client_resends_a_capped_submit_and_it_is_stored_once(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = stuck_coordinator(make_coordinator)
    with Client(coordinator.address, timeout_s=30.0) as client:
        started = time.monotonic()
        task = client.submit("echo", {})  # the first attempt is capped, the resend stored
        assert time.monotonic() - started < 10, "resent after the cap, not the 30 s deadline"
        assert [t.id for t in client.list_tasks()] == [task.id]


@pytest.mark.parametrize(("flag", "capped"), [("0.5", True), ("0", False)], ids=["cap", "no-cap"])
def test_the_flag_sets_the_cap_and_0_removes_it(tmp_path: Path, flag: str, capped: bool) -> None:
    server = start_server(
        tmp_path, "--max-call-time", flag, env={"DTQ_FAILPOINT": "submit.before_commit:sleep=3"}
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            tasks = TaskServiceStub(channel)
            if capped:
                with pytest.raises(grpc.RpcError) as cut:
                    submit(tasks, None)
                assert reason(cut.value) == "MAX_CALL_TIME"
            else:  # waits out the failpoint's pause, then is stored
                assert submit(tasks, 30).created
    finally:
        server.stop()
