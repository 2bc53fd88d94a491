"""Retrying calls that failed with a retryable status, built on tenacity.

Which codes are retryable depends on the call: every call retries
UNAVAILABLE (the request most likely never reached the coordinator, and reads,
cancels and drains are idempotent anyway); submits also retry
DEADLINE_EXCEEDED, which is only safe because every submitted task carries an
idempotency key. :func:`retrying` serves the blocking client and
:func:`async_retrying` the asyncio one, with the same policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import TypeVar

import grpc
import tenacity

from dtq_client.config import RetryPolicy
from dtq_client.errors import RpcError

# The client is a library: it logs through the stdlib, which the application
# (or dtq.logs.configure in the CLI) routes; structlog's unconfigured default
# would print to stdout, where the CLI writes its data.
log = logging.getLogger(__name__)

READ_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
"""Retried for every call."""

SUBMIT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Retried for submits, which always carry an idempotency key."""


class _StopBeforeDeadline(tenacity.stop.stop_base):
    """Stop when the next pause would end after ``deadline`` (a ``time.monotonic()`` value)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self.deadline


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    log.debug(
        "retrying after %s (attempt %d, pause %.2f s)",
        error,
        retry_state.attempt_number,
        retry_state.upcoming_sleep,
    )


_Retrying = TypeVar("_Retrying", tenacity.Retrying, tenacity.AsyncRetrying)


def retrying(
    policy: RetryPolicy,
    codes: Collection[grpc.StatusCode],
    *,
    deadline: float | None = None,
    count_attempts: bool = True,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` that retries :class:`RpcError` s with one of ``codes``.

    It stops after ``policy.attempts`` attempts (unless ``count_attempts`` is
    false), before ``policy.total_s`` would pass, and before ``deadline``
    (monotonic) would pass; the last error is then re-raised unchanged.
    """
    return _build(tenacity.Retrying, policy, codes, deadline, count_attempts)


def async_retrying(
    policy: RetryPolicy,
    codes: Collection[grpc.StatusCode],
    *,
    deadline: float | None = None,
    count_attempts: bool = True,
) -> tenacity.AsyncRetrying:
    """:func:`retrying` for coroutines (``await async_retrying(...)(attempt)``).

    The same policy; its pauses are ``asyncio.sleep``, so the event loop runs on.
    """
    return _build(tenacity.AsyncRetrying, policy, codes, deadline, count_attempts)


def _build(
    kind: type[_Retrying],
    policy: RetryPolicy,
    codes: Collection[grpc.StatusCode],
    deadline: float | None,
    count_attempts: bool,
) -> _Retrying:
    """The one definition of the policy, for the blocking and the asyncio client alike."""
    stop: tenacity.stop.stop_base = tenacity.stop_before_delay(policy.total_s)
    if count_attempts:
        stop = stop | tenacity.stop_after_attempt(policy.attempts)
    if deadline is not None:
        stop = stop | _StopBeforeDeadline(deadline)
    return kind(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, RpcError) and e.code in codes),
        wait=tenacity.wait_exponential_jitter(
            multiplier=policy.initial_backoff_s,
            max=policy.max_backoff_s,
            jitter=policy.initial_backoff_s,
        ),
        stop=stop,
        before_sleep=_log_retry,
        reraise=True,
    )
