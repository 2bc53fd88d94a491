"""Running one task: every way a handler can end becomes the right outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dtq_worker import NonRetryableError, Registry, RetryAfter, TaskCancelled, TaskContext
from dtq_worker.models import Failed, Payload, Released, Succeeded
from dtq_worker.runner import MAX_ERROR_MESSAGE_BYTES, MAX_TRACEBACK_BYTES, Runner
from tests.worker.fakes import RecordingReporter, make_job

registry = Registry()


@registry.task("echo")
def echo(payload: Any, ctx: TaskContext) -> Any:
    return payload


@registry.task("boom")
def boom(payload: Any, ctx: TaskContext) -> None:
    raise ValueError(payload.get("message", "boom"))


@registry.task("fatal")
def fatal(payload: Any, ctx: TaskContext) -> None:
    raise NonRetryableError("bad input")


@registry.task("later")
def later(payload: Any, ctx: TaskContext) -> None:
    raise RetryAfter(payload["after"], payload.get("message", ""))


@registry.task("cancellable")
def cancellable(payload: Any, ctx: TaskContext) -> None:
    ctx.cancel_event.set()  # as if a client cancelled meanwhile
    ctx.raise_if_cancelled()


@registry.task("ignores_cancel")
def ignores_cancel(payload: Any, ctx: TaskContext) -> None:
    ctx.cancel_event.set()
    raise OSError("interrupted")


@registry.task("unencodable")
def unencodable(payload: Any, ctx: TaskContext) -> Any:
    return {"x": object()}


@registry.task("exit")
def exit_(payload: Any, ctx: TaskContext) -> None:
    raise SystemExit(1)


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def runner(reporter: RecordingReporter) -> Runner:
    return Runner(registry, reporter, max_result_bytes=1024)


def test_success_returns_compact_json_and_reports_start_and_outcome(runner, reporter) -> None:
    job = make_job("echo", b'{"a": [1, 2]}')
    outcome = runner.run(job)
    assert outcome == Succeeded(Payload(b'{"a":[1,2]}', "application/json"))
    assert [kind for kind, _, _ in reporter.events] == ["started", "finished"]
    assert reporter.outcomes() == {job.lease: outcome}


def test_exception_becomes_a_retryable_failure_with_traceback(runner) -> None:
    outcome = runner.run(make_job("boom", b'{"message": "no luck"}'))
    assert isinstance(outcome, Failed)
    assert not outcome.cancelled
    error = outcome.error
    assert (error.type, error.message, error.retryable) == ("ValueError", "no luck", True)
    assert "in boom" in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: no luck")
    assert "dtq_worker/runner.py" not in error.traceback  # starts in the handler


def test_long_message_and_traceback_are_truncated(runner) -> None:
    outcome = runner.run(make_job("boom", json.dumps({"message": "é" * 10_000}).encode()))
    assert isinstance(outcome, Failed)
    assert len(outcome.error.message.encode()) <= MAX_ERROR_MESSAGE_BYTES
    traceback = outcome.error.traceback
    assert len(traceback.encode()) <= MAX_TRACEBACK_BYTES
    assert traceback.startswith("...(truncated)")
    assert traceback.endswith("éé\n")  # the tail (the error itself) is kept


def test_non_retryable_error(runner) -> None:
    outcome = runner.run(make_job("fatal"))
    assert isinstance(outcome, Failed)
    assert outcome.error.type == "NonRetryableError"
    assert not outcome.error.retryable
    assert not outcome.cancelled


def test_task_cancelled_is_a_cancelled_non_retryable_failure(runner) -> None:
    outcome = runner.run(make_job("cancellable"))
    assert isinstance(outcome, Failed)
    assert outcome.cancelled
    assert outcome.error.type == TaskCancelled.__name__
    assert not outcome.error.retryable


def test_any_failure_after_a_cancel_request_counts_as_cancelled(runner) -> None:
    outcome = runner.run(make_job("ignores_cancel"))
    assert isinstance(outcome, Failed)
    assert outcome.cancelled
    assert outcome.error.type == "OSError"


def test_a_task_cancelled_before_it_starts_never_runs(runner, reporter) -> None:
    job = make_job("echo")
    job.context.cancel_event.set()
    outcome = runner.run(job)
    assert isinstance(outcome, Failed)
    assert outcome.cancelled
    assert [kind for kind, _, _ in reporter.events] == ["finished"]


def test_result_too_large_is_a_non_retryable_failure(runner) -> None:
    outcome = runner.run(make_job("echo", json.dumps("x" * 2000).encode()))
    assert isinstance(outcome, Failed)
    assert outcome.error.type == "RESULT_TOO_LARGE"
    assert not outcome.error.retryable


def test_unencodable_result_is_a_non_retryable_failure(runner) -> None:
    outcome = runner.run(make_job("unencodable"))
    assert isinstance(outcome, Failed)
    assert outcome.error.type == "RESULT_ENCODE_ERROR"
    assert not outcome.error.retryable


def test_a_result_that_is_not_standard_json_is_a_non_retryable_failure(runner) -> None:
    """Python's JSON has NaN and Infinity; other languages' do not, so a result holding
    them would be unreadable to a client in JavaScript or Go."""
    outcome = runner.run(make_job("echo", b'{"x": NaN}'))  # read leniently, echoed
    assert isinstance(outcome, Failed)
    assert outcome.error.type == "RESULT_ENCODE_ERROR"
    assert "JSON compliant" in outcome.error.message
    assert not outcome.error.retryable


def test_bytes_payload_and_bytes_result_travel_raw(runner) -> None:
    outcome = runner.run(make_job("echo", b"\x00\xffraw", "application/octet-stream"))
    assert outcome == Succeeded(Payload(b"\x00\xffraw", "application/octet-stream"))


def test_empty_json_payload_decodes_to_none(runner) -> None:
    outcome = runner.run(make_job("echo", b"", ""))
    assert outcome == Succeeded(Payload(b"null", "application/json"))


def test_invalid_json_payload_is_a_non_retryable_failure(runner) -> None:
    outcome = runner.run(make_job("echo", b"{not json"))
    assert isinstance(outcome, Failed)
    assert outcome.error.type == "PAYLOAD_DECODE_ERROR"
    assert not outcome.error.retryable


def test_unknown_type_is_released_without_starting(runner, reporter) -> None:
    outcome = runner.run(make_job("missing"))
    assert outcome == Released("UNKNOWN_TASK_TYPE")
    assert [kind for kind, _, _ in reporter.events] == ["finished"]


def test_base_exceptions_escape_to_kill_the_thread(runner, reporter) -> None:
    with pytest.raises(SystemExit):
        runner.run(make_job("exit"))
    assert [kind for kind, _, _ in reporter.events] == ["started"]


def test_retry_after_is_a_retryable_failure_carrying_its_wait(runner) -> None:
    outcome = runner.run(make_job("later", b'{"after": 30, "message": "rate limited"}'))
    assert isinstance(outcome, Failed)
    assert (outcome.error.type, outcome.error.message) == ("RetryAfter", "rate limited")
    assert outcome.error.retryable and outcome.retry_after_s == 30.0
    plain = runner.run(make_job("later", b'{"after": 2.5}'))
    assert isinstance(plain, Failed) and plain.error.message == "retry in 2.5 s"
    # Other failures leave the wait to the coordinator's backoff.
    boom = runner.run(make_job("boom"))
    assert isinstance(boom, Failed) and boom.retry_after_s is None


def test_retry_after_refuses_a_wait_that_is_no_duration() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite, non-negative"):
            RetryAfter(bad)
