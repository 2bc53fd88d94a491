"""Pipelined submits: many tasks in flight on one SubmitTaskStream, each acknowledged once stored.

::

    with Client("127.0.0.1:50051") as client, client.submitter() as submitter:
        futures = [submitter.submit("email.send", {"to": to}) for to in recipients]
    ids = [future.result().task_id for future in futures]  # all resolved once closed

``Client.submit`` waits a full round trip per task. :meth:`Submitter.submit`
returns a :class:`~concurrent.futures.Future` at once and keeps up to
``window`` submits unanswered, so the coordinator commits whatever piled up
while its previous commit ran: one fsync for many tasks, and still every
future resolves only after its task is on disk.

Three threads share the work, each with one job. The caller's thread encodes
the spec (a payload that cannot be encoded raises there) and queues it;
grpc's request thread drains the queue into frames (:meth:`Submitter._frames`:
whatever is queued goes into one frame, up to ``config.submit_batch_size``
submits and about ``config.submit_batch_bytes``); the ``dtq-submitter``
thread owns the call, reads the answers and resolves the futures.

When the stream breaks with a retryable status the ``dtq-submitter`` thread
reopens it (backoff from ``config.retry``; the budget, ``retry.total_s``,
starts afresh once a stream has answered something) and resends every
unanswered submit. That is safe because every spec carries an idempotency
key, generated here when it has none: a resent submit that was in fact
committed is answered with the stored task (``created`` False), never a
second one. A stream that answers nothing for ``config.timeout_s`` while
submits wait is treated as broken the same way (DEADLINE_EXCEEDED). When the
budget runs out, or the status is not retryable, every unanswered future
fails with that error and so does every later :meth:`Submitter.submit`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Protocol, Self, Unpack

import grpc

from dtq.v1 import task_service_pb2, task_service_pb2_grpc
from dtq_client import convert, retry, tracing
from dtq_client.config import ClientConfig
from dtq_client.errors import (
    DeadlineExceeded,
    ProtocolError,
    RpcError,
    Unavailable,
    from_status,
    translate_rpc_errors,
)
from dtq_client.models import SubmitAck, TaskSpec
from dtq_client.submit_options import SubmitOptions, spec_of

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 2_000
"""Unanswered submits a submitter allows by default: deep enough that the coordinator
commits in piles of hundreds, small next to its own limit of 20,000 per stream."""
_POLL_S = 0.5
"""How often an idle request thread looks whether the stream stopped answering."""
_FRAMING_BYTES = 12
"""Bytes a submit adds to a frame beyond its spec (tags, lengths, ref)."""
_END = object()
"""Queued to end a call's request iterator (a half-close)."""


class _Call(Protocol):
    """What the submitter needs of a running call (grpc's stubs leave ``cancel`` untyped)."""

    def cancel(self) -> bool: ...


@dataclass(slots=True)
class _Pending:
    """A submit sent (or queued) and not answered yet."""

    message: task_service_pb2.StreamedSubmit
    future: Future[SubmitAck]


class _Stream:
    """One SubmitTaskStream call: what its request iterator sends, and whether it still answers."""

    def __init__(self, resend: Iterable[task_service_pb2.StreamedSubmit] = ()) -> None:
        self.outgoing: queue.SimpleQueue[object] = queue.SimpleQueue()
        for message in resend:
            self.outgoing.put(message)
        self.call: _Call | None = None
        self.opened = False
        self.waiting_since: float | None = None
        """Monotonic time since which a submit waits with no answer (None: none waits)."""
        self.stalled = False

    def stall_if_silent(self, timeout_s: float) -> bool:
        """Cancel the call if it has answered nothing for ``timeout_s`` while submits wait."""
        since, call = self.waiting_since, self.call
        if since is None or call is None or time.monotonic() - since < timeout_s:
            return False
        self.stalled = True
        call.cancel()
        return True


class Submitter:
    """Submits tasks over one stream, many in flight; see the module docstring.

    Made by :meth:`dtq_client.Client.submitter`. Thread-safe. Use it as a
    context manager, or call :meth:`close`, which waits for every answer.
    """

    def __init__(
        self, stub: task_service_pb2_grpc.TaskServiceStub, config: ClientConfig, window: int
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._stub = stub
        self._config = config
        self._window = window
        self._changed = threading.Condition()
        """Guards everything below; notified when submits are answered or the submitter fails."""
        self._pending: dict[int, _Pending] = {}
        self._refs = itertools.count(1)
        self._key_prefix = uuid.uuid4().hex
        self._keys = itertools.count()
        self._stream = _Stream()
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dtq-submitter", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- submitting ----------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: object = None,
        **options: Unpack[SubmitOptions],
    ) -> Future[SubmitAck]:
        """Queue one task (arguments as :meth:`dtq_client.Client.submit`); a future of its answer.

        Blocks while ``window`` submits are unanswered. The future's result is
        a :class:`SubmitAck` once the task is committed; a refused submit sets
        the error :meth:`Client.submit <dtq_client.Client.submit>` would raise
        (:class:`InvalidArgument`, :class:`AlreadyExists`, ...).
        """
        spec = spec_of(type, payload, options, self._new_key)
        return self.submit_spec(spec)

    def submit_spec(self, spec: TaskSpec) -> Future[SubmitAck]:
        """Queue one :class:`TaskSpec`; like :meth:`submit`."""
        if not spec.idempotency_key:
            spec = replace(spec, idempotency_key=self._new_key())
        message = task_service_pb2.StreamedSubmit()
        convert.fill_spec(message.task, spec)
        if self._config.propagate_trace:  # here, on the caller's thread, in its context
            tracing.stamp((message.task,))
        future: Future[SubmitAck] = Future()
        future.set_running_or_notify_cancel()  # a queued submit cannot be called back
        with self._changed:
            while self._failure is None and not self._closing:
                if len(self._pending) < self._window:
                    break
                self._changed.wait()
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise RuntimeError("the submitter is closed")
            message.ref = ref = next(self._refs)
            self._pending[ref] = _Pending(message, future)
            stream = self._stream
            if stream.waiting_since is None:
                stream.waiting_since = time.monotonic()
            stream.outgoing.put(message)
        return future

    def _new_key(self) -> str:
        """A fresh idempotency key: this submitter's random prefix and a counter.

        As unique as a UUID per key (the prefix is one), at a tenth of the cost of
        ``uuid4()`` per submit. ``next()`` on a count is atomic, so threads share it.
        """
        return f"{self._key_prefix}-{next(self._keys):x}"

    @property
    def unanswered(self) -> int:
        """Submits queued or sent and not answered yet."""
        with self._changed:
            return len(self._pending)

    def close(self) -> None:
        """Wait until every submit is answered (its future resolved), then end the stream.

        Safe to call twice. Later submits raise RuntimeError.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() from a future's callback would wait for itself")
        with self._changed:
            self._closing = True
            self._changed.notify_all()  # submits blocked on the window give up
            while self._pending and self._failure is None:
                self._changed.wait()
            self._stream.outgoing.put(_END)
        self._thread.join()

    # --- the dtq-submitter thread ----------------------------------------------------------

    def _run(self) -> None:
        """Serve streams until closed; if they cannot be served, fail every unanswered submit."""
        try:
            while self._serve():
                pass
        except RpcError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: still resolve every future rather than hang them
            log.exception("the submitter's stream failed")
            self._fail(exc)

    def _serve(self) -> bool:
        """Run streams, retrying them, until closed (False) or one broke after answering
        something (True: the caller reconnects with a fresh retry budget)."""
        attempts = retry.retrying(self._config.retry, retry.SUBMIT_CODES, count_attempts=False)
        reconnect: bool = attempts(self._one_stream)
        return reconnect

    def _one_stream(self) -> bool:
        """One call, from open to end; see :meth:`_serve` for what it returns."""
        stream = self._take_stream()
        if stream is None:
            return False
        call = self._stub.SubmitTaskStream(self._frames(stream))
        stream.call = call
        answered = False
        try:
            with translate_rpc_errors():
                for response in call:
                    self._answer(stream, response.results)
                    answered = True
        except RpcError as exc:
            if stream.stalled:
                silence = self._config.timeout_s
                raise DeadlineExceeded(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer for {silence:g} s"
                ) from exc
            if answered and exc.code in retry.SUBMIT_CODES:
                log.debug("submit stream broke (%s); resending what is unanswered", exc)
                return True
            raise
        finally:
            stream.outgoing.put(_END)  # frees grpc's request thread if it still waits
            call.cancel()
        with self._changed:
            if not self._closing or self._pending:
                raise Unavailable(
                    grpc.StatusCode.UNAVAILABLE, "the coordinator ended the submit stream early"
                )
        return False

    def _take_stream(self) -> _Stream | None:
        """The stream to open: the first one, or a new one resending what is unanswered."""
        with self._changed:
            if self._closing and not self._pending:
                return None
            if self._stream.opened:
                resend = [pending.message for pending in self._pending.values()]
                self._stream = _Stream(resend)
                if resend:
                    self._stream.waiting_since = time.monotonic()
            self._stream.opened = True
            return self._stream

    def _answer(
        self, stream: _Stream, results: Iterable[task_service_pb2.StreamedSubmitResult]
    ) -> None:
        """Resolve the futures of answered submits (outside the lock: callbacks may run)."""
        answered: list[tuple[Future[SubmitAck], task_service_pb2.StreamedSubmitResult]] = []
        with self._changed:
            for result in results:
                pending = self._pending.pop(result.ref, None)
                if pending is not None:  # else answered already, on an earlier stream
                    answered.append((pending.future, result))
            stream.waiting_since = time.monotonic() if self._pending else None
            self._changed.notify_all()
        for future, result in answered:
            _resolve(future, result)

    def _fail(self, error: BaseException) -> None:
        """Fail every unanswered submit, and every later one, with ``error``."""
        with self._changed:
            self._failure = error
            failed = list(self._pending.values())
            self._pending.clear()
            self._changed.notify_all()
        for pending in failed:
            pending.future.set_exception(error)

    # --- grpc's request thread -------------------------------------------------------------

    def _frames(self, stream: _Stream) -> Iterator[task_service_pb2.SubmitTaskStreamRequest]:
        """One call's request iterator: whatever is queued, coalesced into bounded frames."""
        max_count = self._config.submit_batch_size
        max_bytes = self._config.submit_batch_bytes
        poll_s = min(_POLL_S, self._config.timeout_s / 4)
        carry: object = None
        while True:
            if carry is None:
                try:
                    carry = stream.outgoing.get(timeout=poll_s)
                except queue.Empty:
                    if stream.stall_if_silent(self._config.timeout_s):
                        return
                    continue
            submits: list[task_service_pb2.StreamedSubmit] = []
            size = 0
            while isinstance(carry, task_service_pb2.StreamedSubmit):
                # An oversized submit travels alone, so that the coordinator refuses it.
                item_size = carry.ByteSize() + _FRAMING_BYTES
                if submits and (len(submits) >= max_count or size + item_size > max_bytes):
                    break
                submits.append(carry)
                size += item_size
                try:
                    carry = stream.outgoing.get_nowait()
                except queue.Empty:
                    carry = None
            if submits:
                yield task_service_pb2.SubmitTaskStreamRequest(submits=submits)
            if carry is _END:
                return


def _resolve(future: Future[SubmitAck], result: task_service_pb2.StreamedSubmitResult) -> None:
    """Set a future from its answer."""
    outcome = result.WhichOneof("outcome")
    error: Exception
    if outcome == "submitted":
        try:
            future.set_result(convert.submit_ack_from_proto(result.submitted))
            return
        except ProtocolError as exc:
            error = exc
    elif outcome == "error":
        error = from_status(result.error)
    else:
        error = ProtocolError(f"the answer to submit {result.ref} has no outcome")
    future.set_exception(error)
