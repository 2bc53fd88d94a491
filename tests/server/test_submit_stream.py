"""TaskService.SubmitTaskStream against a real in-process coordinator, through a raw stub."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_server.models import TaskFilter
from dtq_server.store import tasks_sql
from tests.harness import InProcessCoordinator, wait_until

Frame = task_service_pb2.SubmitTaskStreamRequest
Result = task_service_pb2.StreamedSubmitResult


def spec(
    key: str = "", type_: str = "echo", queue_: str = "stream", **fields: object
) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        type=type_,
        queue=queue_,
        payload=task_pb2.Payload(data=b'{"x":1}'),
        idempotency_key=key,
        **fields,  # type: ignore[arg-type]
    )


def frame(*submits: tuple[int, task_pb2.TaskSpec | None]) -> Frame:
    return Frame(
        submits=[task_service_pb2.StreamedSubmit(ref=ref, task=task) for ref, task in submits]
    )


def stream(tasks: TaskServiceStub, frames: list[Frame]) -> list[Result]:
    """Send every frame, half-close, and return every answer (the stream must end OK)."""
    responses = tasks.SubmitTaskStream(iter(frames), timeout=30)
    return [result for response in responses for result in response.results]


def error_details(status: status_pb2.Status) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest field paths) of a per-submit error."""
    reason, fields = "", []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
            assert info.domain == "dtq.dev"
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def test_pipelined_frames_are_all_answered_in_order_and_stored(tasks: TaskServiceStub) -> None:
    frames = [frame(*((f * 20 + i, spec()) for i in range(20))) for f in range(15)]
    results = stream(tasks, frames)
    assert [r.ref for r in results] == list(range(300))
    assert all(r.WhichOneof("outcome") == "submitted" for r in results)
    assert all(r.submitted.created for r in results)
    assert {r.submitted.state for r in results} == {task_pb2.TASK_STATE_QUEUED}
    assert len({r.submitted.task_id for r in results}) == 300
    for r in results:  # answered means committed: every one is there to read
        got = tasks.GetTask(
            task_service_pb2.GetTaskRequest(task_id=r.submitted.task_id), timeout=10
        )
        assert got.task.queue == "stream"


def test_a_bad_submit_fails_alone_with_its_field_path(tasks: TaskServiceStub) -> None:
    results = stream(
        tasks,
        [frame((1, spec()), (2, spec(type_="no spaces allowed")), (3, None), (4, spec()))],
    )
    assert [r.ref for r in results] == [1, 2, 3, 4]
    good = [results[0], results[3]]
    assert all(r.WhichOneof("outcome") == "submitted" and r.submitted.created for r in good)
    bad, missing = results[1].error, results[2].error
    assert bad.code == code_pb2.INVALID_ARGUMENT
    assert error_details(bad) == ("INVALID_FIELD", ["task.type"])
    assert "task.type" in bad.message
    assert missing.code == code_pb2.INVALID_ARGUMENT
    assert error_details(missing) == ("INVALID_FIELD", ["task"])


def test_what_only_the_store_sees_fails_alone_too(tasks: TaskServiceStub) -> None:
    [first] = stream(tasks, [frame((1, spec("clash")))])
    unknown_dependency = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"
    results = stream(
        tasks,
        [
            frame(
                (10, spec()),
                (11, spec("clash", priority=5)),  # the key names another spec
                (12, spec(depends_on=[unknown_dependency])),
                (13, spec("clash")),  # the same spec again: the stored task
                (14, spec()),
            )
        ],
    )
    assert [r.ref for r in results] == [10, 11, 12, 13, 14]
    clash, missing = results[1].error, results[2].error
    assert clash.code == code_pb2.ALREADY_EXISTS
    assert error_details(clash)[0] == "IDEMPOTENCY_KEY_REUSED"
    assert missing.code == code_pb2.INVALID_ARGUMENT
    assert error_details(missing) == ("INVALID_FIELD", ["task.depends_on[0]"])
    again = results[3].submitted
    assert (again.task_id, again.created) == (first.submitted.task_id, False)
    assert results[0].submitted.created and results[4].submitted.created


def test_a_resent_submit_is_answered_with_the_stored_task(tasks: TaskServiceStub) -> None:
    # A client whose stream broke resends what was not answered, on a new stream.
    [first] = stream(tasks, [frame((7, spec("resend-me")))])
    [second] = stream(tasks, [frame((7, spec("resend-me")))])
    assert first.submitted.created and not second.submitted.created
    assert second.submitted.task_id == first.submitted.task_id
    # The same key twice in one pile: the first creates, the second finds it.
    results = stream(tasks, [frame((1, spec("twice")), (2, spec("twice")))])
    assert [r.submitted.created for r in results] == [True, False]
    assert results[0].submitted.task_id == results[1].submitted.task_id


def test_answers_flow_while_the_client_keeps_sending(tasks: TaskServiceStub) -> None:
    # One submit at a time, each answered before the next is sent: no batching needed.
    outgoing: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()

    def frames() -> Iterator[Frame]:
        while (item := outgoing.get()) is not None:
            yield item

    responses = tasks.SubmitTaskStream(frames(), timeout=30)
    for ref in range(20):
        outgoing.put(frame((ref, spec())))
        [answer] = next(responses).results
        assert answer.ref == ref and answer.submitted.created
    outgoing.put(None)
    assert list(responses) == []  # half-closed with nothing unanswered: the stream ends OK


def test_an_empty_stream_ends_ok(tasks: TaskServiceStub) -> None:
    assert stream(tasks, []) == []
    assert stream(tasks, [Frame()]) == []


def raw_bidi(channel: grpc.Channel) -> Callable[..., Iterator[bytes]]:
    return channel.stream_stream("/dtq.v1.TaskService/SubmitTaskStream", None, None)  # type: ignore[return-value]


def test_a_malformed_frame_ends_the_stream_after_the_answers(channel: grpc.Channel) -> None:
    good = frame((1, spec())).SerializeToString()
    call = raw_bidi(channel)(iter([good, b"\x0a\xff\xff"]), timeout=30)
    answers: list[Result] = []
    with pytest.raises(grpc.RpcError) as info:
        for data in call:
            answers += task_service_pb2.SubmitTaskStreamResponse.FromString(data).results
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [a.ref for a in answers] == [1]


def test_an_oversized_frame_ends_the_stream(tasks: TaskServiceStub) -> None:
    too_many = Frame(submits=[task_service_pb2.StreamedSubmit(ref=i) for i in range(10_001)])
    with pytest.raises(grpc.RpcError) as info:
        stream(tasks, [frame((1, spec())), too_many])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10,000 per frame" in (info.value.details() or "")


def test_shutdown_ends_an_open_stream_unavailable(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    outgoing: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()

    def frames() -> Iterator[Frame]:
        while (item := outgoing.get()) is not None:
            yield item

    responses = tasks.SubmitTaskStream(frames(), timeout=30)
    outgoing.put(frame((1, spec())))
    assert next(responses).results[0].submitted.created
    coordinator.run(coordinator.server.coordinator.begin_shutdown)
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    outgoing.put(None)


def reading_a_stream() -> bool:
    """Whether a submit stream's reader is still reading (on the loop thread)."""
    return any(t.get_name() == "dtq-submit-stream-reader" for t in asyncio.all_tasks())


@pytest.mark.parametrize("bad_ref", [None, 5_000], ids=["all-good", "first-pile-taken-apart"])
def test_piles_committing_at_once_are_stored_in_submit_order(
    coordinator: InProcessCoordinator,
    tasks: TaskServiceStub,
    monkeypatch: pytest.MonkeyPatch,
    bad_ref: int | None,
) -> None:
    # More than a pile's worth waiting makes two piles commit at once: 10,000 then 300.
    # Both are validated on worker threads and the small one is done first; it must
    # still be stored after the big one, or its tasks would jump the queue. The same
    # when the big pile holds a bad submit and is taken apart (validated one by one).
    writes_held, writes_open = threading.Event(), threading.Event()

    def held_insert(*args: Any) -> Any:
        writes_held.set()
        writes_open.wait(30)
        return real_insert(*args)

    real_insert = tasks_sql.insert
    monkeypatch.setattr(tasks_sql, "insert", held_insert)
    refs = iter(range(10_301))
    frames = [
        frame(*((ref, spec(queue_="in-order")) for ref in islice(refs, size)))
        for size in (1, 10_000, 300)
    ]
    if bad_ref is not None:
        frames[1].submits[bad_ref - 1].task.type = "no spaces allowed"
    responses = tasks.SubmitTaskStream(iter(frames), timeout=60)
    # The first submit is taken alone and its insert held; the rest pile up behind it
    # until the reader has read the half-close.
    assert writes_held.wait(30)
    wait_until(lambda: not coordinator.run(reading_a_stream), 30, what="every frame read")
    writes_open.set()
    answered = [result for response in responses for result in response.results]
    assert [r.ref for r in answered] == list(range(10_301))
    refused = [r.ref for r in answered if r.WhichOneof("outcome") == "error"]
    assert refused == ([] if bad_ref is None else [bad_ref])
    store = coordinator.server.coordinator.store
    in_seq_order = coordinator.call(store.find_ids(TaskFilter(queue="in-order"), 20_000))
    assert in_seq_order == [r.submitted.task_id for r in answered if r.ref != bad_ref]
