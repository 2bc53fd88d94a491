"""The client side of SubmitTaskStream, shared by both pipelined submitters.

:class:`~dtq_client.Submitter` (threads) and :class:`~dtq_client.AsyncSubmitter`
(asyncio) differ in how they wait: for room in the window, for frames to send,
for answers. What they send and how they read what comes back is the same, and
lives here, free of threads and event loops:

- :func:`encode`: a spec as a keyed, stamped ``StreamedSubmit``;
- :class:`Stream`: one call's queue of submits to send, and whether it answers;
- :func:`take_frame`: whatever is queued, coalesced into one bounded frame;
- :class:`SilenceClock`: how long a stream has left to answer before it counts as broken;
- :class:`Unanswered`: the submits sent and not answered yet, by ``ref``, which
  are resent on a new stream;
- :func:`settle` and :func:`fail`: an answer (or a failure) into a caller's future;
- :func:`check_break`, :func:`silence_error`, :func:`early_end_error`: what a
  broken stream means for the retry budget.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Generic, Protocol, TypeVar

import grpc

from dtq.v1 import task_service_pb2
from dtq_client import convert, retry, tracing
from dtq_client.config import ClientConfig
from dtq_client.errors import DeadlineExceeded, ProtocolError, RpcError, Unavailable, from_status
from dtq_client.models import SubmitAck, TaskSpec

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 2_000
"""Unanswered submits a submitter allows by default: deep enough that the coordinator
commits in piles of hundreds, small next to its own limit of 20,000 per stream."""
FRAMING_BYTES = 12
"""Bytes a submit adds to a frame beyond its spec (tags, lengths, ref)."""
END = object()
"""Queued after the last submit of a stream: its frames end there (a half-close)."""


def encode(
    spec: TaskSpec, new_key: Callable[[], str], stamp: bool
) -> task_service_pb2.StreamedSubmit:
    """``spec`` as a submit without its ``ref``, keyed so that resending it is safe.

    Runs in the caller (a payload that cannot be encoded raises there), and so
    does ``stamp`` (``config.propagate_trace``): the trace context is the caller's.
    """
    if not spec.idempotency_key:
        spec = replace(spec, idempotency_key=new_key())
    message = task_service_pb2.StreamedSubmit()
    convert.fill_spec(message.task, spec)
    if stamp:
        tracing.stamp((message.task,))
    return message


class Settleable(Protocol):
    """What :func:`settle` needs of a future: ``concurrent.futures`` and ``asyncio`` ones fit."""

    def done(self) -> bool: ...

    def set_result(self, result: SubmitAck, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


F = TypeVar("F", bound=Settleable)


class Unanswered(Generic[F]):
    """The submits queued or sent and not answered yet, each with its caller's future.

    Not thread-safe: the blocking submitter holds its lock around every use.
    """

    def __init__(self) -> None:
        self._by_ref: dict[int, tuple[task_service_pb2.StreamedSubmit, F]] = {}
        self._refs = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_ref)

    def add(self, message: task_service_pb2.StreamedSubmit, future: F) -> None:
        """Give ``message`` its ``ref`` (unique among this submitter's) and keep it."""
        message.ref = ref = next(self._refs)
        self._by_ref[ref] = (message, future)

    def messages(self) -> list[task_service_pb2.StreamedSubmit]:
        """Every unanswered submit, in the order they were queued: what a new stream resends."""
        return [message for message, _ in self._by_ref.values()]

    def answer(
        self, results: Iterable[task_service_pb2.StreamedSubmitResult]
    ) -> list[tuple[F, task_service_pb2.StreamedSubmitResult]]:
        """Take the answered submits out; their futures, each with its answer, to settle."""
        answered = []
        for result in results:
            entry = self._by_ref.pop(result.ref, None)
            if entry is not None:  # else answered already, on an earlier stream
                answered.append((entry[1], result))
        return answered

    def clear(self) -> list[F]:
        """Take every submit out; their futures, to fail."""
        futures = [future for _, future in self._by_ref.values()]
        self._by_ref.clear()
        return futures


def settle(future: Settleable, result: task_service_pb2.StreamedSubmitResult) -> None:
    """Resolve ``future`` from its answer: a :class:`SubmitAck`, or the error
    ``Client.submit`` would raise. A future already done (its caller stopped waiting)
    is left alone."""
    outcome = result.WhichOneof("outcome")
    error: Exception
    if outcome == "submitted":
        try:
            ack = convert.submit_ack_from_proto(result.submitted)
        except ProtocolError as exc:
            error = exc
        else:
            if not future.done():
                future.set_result(ack)
            return
    elif outcome == "error":
        error = from_status(result.error)
    else:
        error = ProtocolError(f"the answer to submit {result.ref} has no outcome")
    fail(future, error)


def fail(future: Settleable, error: BaseException) -> None:
    """Fail ``future`` with ``error``, unless it is done already (its caller stopped waiting)."""
    if not future.done():
        future.set_exception(error)


class SilenceClock:
    """A stream's silence while submits wait for it: past ``timeout_s`` it counts as broken.

    The clock starts when a submit waits on a stream that owes nothing, restarts at
    every answer while submits still wait, and stops when none does: an idle
    stream may stay quiet for ever, a busy one must keep answering.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._since: float | None = None
        """Monotonic time since which a submit waits with no answer (None: none waits)."""
        self.stalled = False
        """Set by whoever cancels the call for its silence, so that its end reads as that."""

    def waiting(self) -> None:
        """A submit waits for this stream: start the clock unless it runs."""
        if self._since is None:
            self._since = time.monotonic()

    def answered(self, waiting: bool) -> None:
        """The stream answered: restart the clock if submits still wait, else stop it."""
        self._since = time.monotonic() if waiting else None

    def left_s(self) -> float | None:
        """Seconds before the stream counts as silent (0 or less: it does); None: nothing waits."""
        if self._since is None:
            return None
        return self._since + self.timeout_s - time.monotonic()


class Outgoing(Protocol):
    """A queue of submits to send: a ``queue.SimpleQueue`` or an ``asyncio.Queue``."""

    def put_nowait(self, item: object, /) -> None: ...

    def get_nowait(self) -> object: ...


Q = TypeVar("Q", bound=Outgoing)


class Stream(Generic[Q]):
    """One SubmitTaskStream call: the submits its frames are drawn from, and its answers."""

    def __init__(
        self,
        outgoing: Q,
        timeout_s: float,
        resend: Iterable[task_service_pb2.StreamedSubmit] = (),
    ) -> None:
        self.outgoing = outgoing
        for message in resend:
            outgoing.put_nowait(message)
        self.opened = False
        self.answered = False
        """True once the coordinator has answered something on this call."""
        self.clock = SilenceClock(timeout_s)

    def queued(self) -> object:
        """The next queued item, or None if nothing is queued now."""
        try:
            return self.outgoing.get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            return None


S = TypeVar("S", bound=Stream[Any])


def next_stream(
    stream: S,
    pending: Unanswered[Any],
    new: Callable[[Iterable[task_service_pb2.StreamedSubmit]], S],
) -> S:
    """The stream to open now: ``stream`` if it never was, else ``new(resend)``, a new one
    that first resends every unanswered submit, its silence clock started if any."""
    if stream.opened:
        resend = pending.messages()
        stream = new(resend)
        if resend:
            stream.clock.waiting()
    stream.opened = True
    return stream


def take_frame(
    carry: object, stream: Stream[Any], config: ClientConfig
) -> tuple[task_service_pb2.SubmitTaskStreamRequest | None, object]:
    """One frame from ``carry`` and whatever else ``stream`` has queued right now.

    A frame holds up to ``config.submit_batch_size`` submits and about
    ``config.submit_batch_bytes``. Returns the frame (None if ``carry`` was not
    a submit) and the item that did not fit or ended it: a submit, :data:`END`
    or None (nothing more is queued).
    """
    submits: list[task_service_pb2.StreamedSubmit] = []
    size = 0
    while isinstance(carry, task_service_pb2.StreamedSubmit):
        # An oversized submit travels alone, so that the coordinator refuses it.
        item_size = carry.ByteSize() + FRAMING_BYTES
        if submits and (
            len(submits) >= config.submit_batch_size or size + item_size > config.submit_batch_bytes
        ):
            break
        submits.append(carry)
        size += item_size
        carry = stream.queued()
    frame = task_service_pb2.SubmitTaskStreamRequest(submits=submits) if submits else None
    return frame, carry


def check_break(error: RpcError, stream: Stream[Any]) -> None:
    """Return if a stream that broke with ``error`` is to be reopened at once, with a fresh
    retry budget; else raise what the retry policy is to judge.

    It is reopened at once if it answered something (the coordinator was there)
    and the status is one a submit retries. A stream cancelled for its silence
    raises DEADLINE_EXCEEDED, whatever it answered before.
    """
    if stream.clock.stalled:
        raise silence_error(stream.clock.timeout_s) from error
    if not stream.answered or error.code not in retry.SUBMIT_CODES:
        raise error
    log.debug("submit stream broke (%s); resending what is unanswered", error)


def silence_error(timeout_s: float) -> DeadlineExceeded:
    """What a stream that answered nothing for ``timeout_s`` while submits waited ends with."""
    return DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer for {timeout_s:g} s")


def early_end_error() -> Unavailable:
    """What a stream the coordinator ended while submits waited (or before a half-close)
    counts as: retryable, since every submit can be resent."""
    return Unavailable(grpc.StatusCode.UNAVAILABLE, "the coordinator ended the submit stream early")
