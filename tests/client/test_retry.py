"""The retry policy, exercised on plain functions (no gRPC)."""

from __future__ import annotations

import time

import grpc
import pytest

from dtq_client.config import ClientConfig, RetryPolicy
from dtq_client.errors import DeadlineExceeded, InvalidArgument, RpcError, Unavailable
from dtq_client.retry import READ_CODES, SUBMIT_CODES, retrying

FAST = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, total_s=5.0)


class Flaky:
    """Fails with ``errors`` in turn, then returns "ok"."""

    def __init__(self, *errors: RpcError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def unavailable() -> Unavailable:
    return Unavailable(grpc.StatusCode.UNAVAILABLE, "down")


def test_unavailable_is_retried_until_success() -> None:
    flaky = Flaky(unavailable(), unavailable())
    assert retrying(FAST, READ_CODES)(flaky) == "ok"
    assert flaky.calls == 3


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    flaky = Flaky(*(unavailable() for _ in range(10)))
    with pytest.raises(Unavailable):
        retrying(FAST, READ_CODES)(flaky)
    assert flaky.calls == FAST.attempts


def test_deadline_exceeded_is_retried_for_submits_only() -> None:
    late = DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "slow")
    assert retrying(FAST, SUBMIT_CODES)(Flaky(late)) == "ok"
    with pytest.raises(DeadlineExceeded):
        retrying(FAST, READ_CODES)(Flaky(late))


def test_other_errors_are_not_retried() -> None:
    flaky = Flaky(InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    with pytest.raises(InvalidArgument):
        retrying(FAST, SUBMIT_CODES)(flaky)
    assert flaky.calls == 1


def test_a_deadline_stops_retrying_before_it_passes() -> None:
    slow = RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.05, total_s=60)
    flaky = Flaky(*(unavailable() for _ in range(100)))
    started = time.monotonic()
    with pytest.raises(Unavailable):
        retrying(slow, READ_CODES, deadline=started + 0.2)(flaky)
    assert time.monotonic() - started < 0.2
    assert 2 <= flaky.calls < 10


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="positive"):
        ClientConfig(timeout_s=0)
