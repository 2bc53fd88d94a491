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

What is sent and how answers are read is shared with the asyncio submitter
(:mod:`dtq_client.aio_submitter`), in :mod:`dtq_client.submit_stream`; the two
differ only in how they wait.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Protocol, Self, Unpack

from dtq.v1 import task_service_pb2, task_service_pb2_grpc
from dtq_client import retry, submit_stream
from dtq_client.config import ClientConfig
from dtq_client.errors import RpcError, translate_rpc_errors
from dtq_client.models import SubmitAck, TaskSpec
from dtq_client.submit_options import Keys, SubmitOptions, spec_of
from dtq_client.submit_stream import END, Stream, Unanswered

log = logging.getLogger(__name__)

_POLL_S = 0.5
"""How often an idle request thread looks whether the stream stopped answering."""


class _Call(Protocol):
    """What the submitter needs of a running call (grpc's stubs leave ``cancel`` untyped)."""

    def cancel(self) -> bool: ...


class _Stream(Stream[queue.SimpleQueue[object]]):
    """One SubmitTaskStream call, and the call itself, for its request thread to cancel."""

    def __init__(
        self, timeout_s: float, resend: Iterable[task_service_pb2.StreamedSubmit] = ()
    ) -> None:
        super().__init__(queue.SimpleQueue(), timeout_s, resend)
        self.call: _Call | None = None

    def stall_if_silent(self) -> bool:
        """Cancel the call if it has answered nothing for too long while submits wait."""
        left_s, call = self.clock.left_s(), self.call
        if left_s is None or left_s > 0 or call is None:
            return False
        self.clock.stalled = True
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
        self._pending: Unanswered[Future[SubmitAck]] = Unanswered()
        self._new_key = Keys()
        self._new_stream = functools.partial(_Stream, config.timeout_s)
        self._stream = self._new_stream()
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
        message = submit_stream.encode(spec, self._new_key, self._config.propagate_trace)
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
            self._pending.add(message, future)
            self._stream.clock.waiting()
            self._stream.outgoing.put(message)
        return future

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
            self._stream.outgoing.put(END)
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
        try:
            with translate_rpc_errors():
                for response in call:
                    self._answer(stream, response.results)
        except RpcError as exc:
            submit_stream.check_break(exc, stream)
            return True
        finally:
            stream.outgoing.put(END)  # frees grpc's request thread if it still waits
            call.cancel()
        with self._changed:
            if not self._closing or self._pending:
                raise submit_stream.early_end_error()
        return False

    def _take_stream(self) -> _Stream | None:
        """The stream to open: the first one, or a new one resending what is unanswered."""
        with self._changed:
            if self._closing and not self._pending:
                return None
            self._stream = submit_stream.next_stream(self._stream, self._pending, self._new_stream)
            return self._stream

    def _answer(
        self, stream: _Stream, results: Iterable[task_service_pb2.StreamedSubmitResult]
    ) -> None:
        """Resolve the futures of answered submits (outside the lock: callbacks may run)."""
        with self._changed:
            answered = self._pending.answer(results)
            stream.answered = True
            stream.clock.answered(bool(self._pending))
            self._changed.notify_all()
        for future, result in answered:
            submit_stream.settle(future, result)

    def _fail(self, error: BaseException) -> None:
        """Fail every unanswered submit, and every later one, with ``error``."""
        with self._changed:
            self._failure = error
            failed = self._pending.clear()
            self._changed.notify_all()
        for future in failed:
            submit_stream.fail(future, error)

    # --- grpc's request thread -------------------------------------------------------------

    def _frames(self, stream: _Stream) -> Iterator[task_service_pb2.SubmitTaskStreamRequest]:
        """One call's request iterator: whatever is queued, coalesced into bounded frames."""
        poll_s = min(_POLL_S, self._config.timeout_s / 4)
        carry: object = None
        while True:
            if carry is None:
                try:
                    carry = stream.outgoing.get(timeout=poll_s)
                except queue.Empty:
                    if stream.stall_if_silent():
                        return
                    continue
            frame, carry = submit_stream.take_frame(carry, stream, self._config)
            if frame is not None:
                yield frame
            if carry is END:
                return
