"""Concurrent unary SubmitTask calls, committed in piles, each answered as if alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub

from .test_submit import details

CALLS = 40


def spec(i: int, **fields: object) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        type="echo",
        payload=task_pb2.Payload(data=str(i).encode()),
        **fields,  # type: ignore[arg-type]
    )


def submit_all(
    tasks: TaskServiceStub, specs: list[task_pb2.TaskSpec]
) -> list[task_service_pb2.SubmitTaskResponse | grpc.RpcError]:
    """Every spec in its own SubmitTask call, all at once; the answer or error of each."""

    def one(s: task_pb2.TaskSpec) -> task_service_pb2.SubmitTaskResponse | grpc.RpcError:
        try:
            response: task_service_pb2.SubmitTaskResponse = tasks.SubmitTask(
                task_service_pb2.SubmitTaskRequest(task=s), timeout=30
            )
            return response
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(one, specs))


def test_concurrent_submits_are_each_stored_once(tasks: TaskServiceStub) -> None:
    answers = submit_all(tasks, [spec(i, idempotency_key=f"k{i}") for i in range(CALLS)])
    assert all(isinstance(a, task_service_pb2.SubmitTaskResponse) for a in answers)
    stored = [a.task for a in answers if isinstance(a, task_service_pb2.SubmitTaskResponse)]
    assert all(a.created for a in answers if isinstance(a, task_service_pb2.SubmitTaskResponse))
    assert [t.payload.data for t in stored] == [str(i).encode() for i in range(CALLS)]
    assert len({t.id for t in stored}) == CALLS
    listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=1000), timeout=10)
    assert {t.id for t in listed.tasks} == {t.id for t in stored}


def test_a_bad_submit_among_concurrent_ones_fails_alone(tasks: TaskServiceStub) -> None:
    earlier = tasks.SubmitTask(
        task_service_pb2.SubmitTaskRequest(task=spec(-1, idempotency_key="taken")), timeout=10
    )
    specs = [spec(i) for i in range(CALLS)]
    specs[5] = spec(5, priority=5000)  # out of range
    specs[9] = spec(9, idempotency_key="same")  # these two: one task, one created
    specs[10] = spec(9, idempotency_key="same")
    specs[20] = spec(20, idempotency_key="taken")  # a stored task's key, another spec
    specs[30] = spec(-1, idempotency_key="taken")  # the stored task's key and spec
    answers = submit_all(tasks, specs)

    bad = answers[5]
    assert isinstance(bad, grpc.RpcError)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(bad)[1] == ["task.priority"]  # the path a lone submit gets
    clash = answers[20]
    assert isinstance(clash, grpc.RpcError)
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS
    again = answers[30]
    assert isinstance(again, task_service_pb2.SubmitTaskResponse)
    assert (again.task.id, again.created) == (earlier.task.id, False)
    twins = [answers[9], answers[10]]
    assert all(isinstance(t, task_service_pb2.SubmitTaskResponse) for t in twins)
    responses = [t for t in twins if isinstance(t, task_service_pb2.SubmitTaskResponse)]
    assert len({t.task.id for t in responses}) == 1
    assert sorted(t.created for t in responses) == [False, True]

    good = [i for i in range(CALLS) if i not in (5, 9, 10, 20, 30)]
    for i in good:
        answer = answers[i]
        assert isinstance(answer, task_service_pb2.SubmitTaskResponse), (i, answer)
        assert answer.created and answer.task.payload.data == str(i).encode()
    listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=1000), timeout=10)
    # Every good one, the twins' one task, and the task stored first: nothing else.
    assert len(listed.tasks) == len(good) + 2


@pytest.mark.parametrize("missing", [True, False])
def test_a_submit_without_a_task_fails_alone(tasks: TaskServiceStub, missing: bool) -> None:
    requests = [task_service_pb2.SubmitTaskRequest(task=spec(i)) for i in range(8)]
    if missing:
        requests[3] = task_service_pb2.SubmitTaskRequest()

    def one(r: task_service_pb2.SubmitTaskRequest) -> grpc.StatusCode:
        try:
            tasks.SubmitTask(r, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(len(requests)) as pool:
        codes = list(pool.map(one, requests))
    expected = [grpc.StatusCode.OK] * 8
    if missing:
        expected[3] = grpc.StatusCode.INVALID_ARGUMENT
    assert codes == expected
