"""Pipelined submits for asyncio: :class:`AsyncSubmitter`, made by ``AsyncClient.submitter()``.

::

    async with AsyncClient("127.0.0.1:50051") as client, client.submitter() as submitter:
        acks = await asyncio.gather(*(submitter.submit("email.send", {"to": to}) for to in to_list))

``await client.submit(...)`` costs a round trip and a coordinator call per
task. :meth:`AsyncSubmitter.submit` puts its task on one SubmitTaskStream that
every coroutine using the submitter shares, and returns the task's
:class:`~dtq_client.SubmitAck` once it is committed. Concurrent callers
(``asyncio.gather``, a TaskGroup, request handlers sharing one submitter) thus
keep up to ``window`` submits in flight, and the coordinator commits whatever
piled up while its previous commit ran.

It is :class:`~dtq_client.Submitter` on the event loop. What is sent and how
answers are read are the same (:mod:`dtq_client.submit_stream`): generated
idempotency keys, frames of up to ``config.submit_batch_size`` submits and about
``config.submit_batch_bytes``, a refused submit failing alone with the error
``AsyncClient.submit`` would raise. Who does what:

- the caller's coroutine encodes the spec (a payload that cannot be encoded
  raises there), waits for room in the window (first come, first served),
  queues the submit and awaits its answer;
- one task, the submitter's own, owns the call: it opens it with an async
  generator that grpc.aio drains from the queue into frames, reads the answers,
  resolves the callers' futures, and watches that the stream keeps answering.

A broken stream is reopened as the blocking submitter's is: backoff from
``config.retry``, the budget (``retry.total_s``) starting afresh once a stream
has answered something, and every unanswered submit resent under its
idempotency key, so a submit that was in fact committed is answered with the
stored task (``created`` False), never a second one. A stream that answers
nothing for ``config.timeout_s`` while submits wait counts as broken
(DEADLINE_EXCEEDED). When the budget runs out or the status is not retryable,
every unanswered submit raises that error, and so does every later one.

**Cancelling a caller.** A caller cancelled while it waits for room in the
window leaves nothing behind. Once its submit is queued, cancelling the caller
only stops it waiting: the submit is still sent (and resent), and committed or
refused as if the caller still waited; it keeps its place in the window until
its answer arrives, since the window bounds what the coordinator has left to
answer, and that answer is dropped. A caller that must know whether the task was
stored gives it an ``idempotency_key`` and submits it again with that key: the
answer is the stored task (``created`` False) or, if it never got there, a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Self, Unpack

import grpc

from dtq.v1 import task_service_pb2, task_service_pb2_grpc
from dtq_client import retry, submit_stream
from dtq_client.config import ClientConfig
from dtq_client.errors import RpcError, Unavailable, translate_rpc_errors
from dtq_client.models import SubmitAck, TaskSpec
from dtq_client.submit_options import Keys, SubmitOptions, spec_of
from dtq_client.submit_stream import END, Stream, Unanswered

log = logging.getLogger(__name__)


class _Room:
    """The window: room for so many unanswered submits, handed out first come, first served.

    Not an ``asyncio.Semaphore``: waiters must wake with an error when the
    submitter fails or closes, which a semaphore cannot do. As with one, room
    granted to a waiter that is cancelled before it runs on passes to the next
    waiter; kept, it would be lost for good.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[bool]] = deque()
        """Each resolves True when granted room, False when the window shuts."""
        self._shut: BaseException | None = None

    async def take(self) -> None:
        """Take room for one submit, waiting for it; raise the error the window shut with."""
        if self._shut is None and self._free and not self._waiters:
            self._free -= 1
            return
        if self._shut is None:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                if await waiter and self._shut is not None:
                    self.give()  # granted, then shut before this caller ran on
            except asyncio.CancelledError:
                if not waiter.cancelled() and waiter.result():
                    self.give()  # granted just as the caller was cancelled: pass it on
                with contextlib.suppress(ValueError):  # still queued: leave the queue
                    self._waiters.remove(waiter)
                raise
        if self._shut is not None:
            raise self._shut

    def give(self, count: int = 1) -> None:
        """Return room for ``count`` submits (answered ones), waking as many waiters."""
        self._free += count
        while self._free and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # else its caller was cancelled while waiting
                self._free -= 1
                waiter.set_result(True)

    def shut(self, error: BaseException) -> None:
        """Make every waiting and later :meth:`take` raise ``error``."""
        self._shut = error
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)


class _Stream(Stream[asyncio.Queue[object]]):
    """One SubmitTaskStream call, its frames drawn from an ``asyncio.Queue``."""

    def __init__(
        self, timeout_s: float, resend: Iterable[task_service_pb2.StreamedSubmit] = ()
    ) -> None:
        super().__init__(asyncio.Queue(), timeout_s, resend)


class AsyncSubmitter:
    """Submits tasks over one stream, many in flight, for asyncio; see the module docstring.

    Made by :meth:`dtq_client.AsyncClient.submitter`, on the event loop that uses
    it. Use it with ``async with``, or await :meth:`close`, which waits for every
    answer; close it before its client.
    """

    def __init__(
        self,
        stub: task_service_pb2_grpc.TaskServiceStub,
        config: ClientConfig,
        metadata: tuple[tuple[str, str], ...] | None,
        window: int,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._stub = stub
        self._config = config
        self._metadata = metadata
        self._loop = asyncio.get_running_loop()
        self._room = _Room(window)
        self._pending: Unanswered[asyncio.Future[SubmitAck]] = Unanswered()
        self._new_key = Keys()
        self._new_stream = functools.partial(_Stream, config.timeout_s)
        self._stream = self._new_stream()
        self._closing = False
        self._failure: BaseException | None = None
        self._owner = asyncio.create_task(self._run(), name="dtq-submitter")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        type: str,
        payload: object = None,
        **options: Unpack[SubmitOptions],
    ) -> SubmitAck:
        """Submit one task (arguments as :meth:`dtq_client.Client.submit`); its answer.

        Waits while ``window`` submits are unanswered, then until this one is
        answered: a :class:`SubmitAck` once the task is committed, or the error
        :meth:`AsyncClient.submit <dtq_client.AsyncClient.submit>` would raise
        (:class:`InvalidArgument`, :class:`AlreadyExists`, ...). Cancelling the
        caller once the submit is queued does not withdraw it (see the module
        docstring).
        """
        spec = spec_of(type, payload, options, self._new_key)
        return await self.submit_spec(spec)

    async def submit_spec(self, spec: TaskSpec) -> SubmitAck:
        """Submit one :class:`TaskSpec`; like :meth:`submit`."""
        message = submit_stream.encode(spec, self._new_key, self._config.propagate_trace)
        await self._room.take()
        # From here to the await, nothing yields: the submit is queued whole or not at all.
        future: asyncio.Future[SubmitAck] = self._loop.create_future()
        self._pending.add(message, future)
        self._stream.clock.waiting()
        self._stream.outgoing.put_nowait(message)
        return await future

    @property
    def unanswered(self) -> int:
        """Submits queued or sent and not answered yet (their callers waiting or not)."""
        return len(self._pending)

    async def close(self) -> None:
        """Wait until every submit is answered, then end the stream.

        Safe to call twice. Callers still waiting for room in the window, and
        later submits, raise RuntimeError. If the caller of ``close`` is
        cancelled, the stream is cancelled too, and every unanswered submit
        raises an :class:`RpcError` with status CANCELLED (it may or may not be
        stored).
        """
        if not self._closing:
            self._closing = True
            if self._failure is None:
                self._room.shut(RuntimeError("the submitter is closed"))
            self._end_if_answered()
        try:
            await asyncio.wait([self._owner])
        except asyncio.CancelledError:
            self._owner.cancel()
            raise

    def _end_if_answered(self) -> None:
        """Once closing and every submit is answered, end the stream's frames (a half-close)."""
        if self._closing and not self._pending:
            self._stream.outgoing.put_nowait(END)

    # --- the submitter's task ---------------------------------------------------------------

    async def _run(self) -> None:
        """Serve streams until closed; if they cannot be served, fail every unanswered submit."""
        try:
            while await self._serve():
                pass
        except RpcError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(RpcError(grpc.StatusCode.CANCELLED, "the submitter was stopped"))
            raise
        except Exception as exc:  # a bug: still resolve every future rather than hang them
            log.exception("the submitter's stream failed")
            self._fail(exc)

    async def _serve(self) -> bool:
        """Run streams, retrying them, until closed (False) or one broke after answering
        something (True: the caller reconnects with a fresh retry budget)."""
        attempts = retry.async_retrying(
            self._config.retry, retry.SUBMIT_CODES, count_attempts=False
        )
        reconnect: bool = await attempts(self._one_stream)
        return reconnect

    async def _one_stream(self) -> bool:
        """One call, from open to end; see :meth:`_serve` for what it returns."""
        stream = self._take_stream()
        if stream is None:
            return False
        call = self._stub.SubmitTaskStream(self._frames(stream), metadata=self._metadata)
        watchdog = asyncio.create_task(self._watch(stream, call), name="dtq-submitter-watch")
        try:
            with translate_rpc_errors():
                async for response in call:
                    self._answer(stream, response.results)
        except RpcError as exc:
            submit_stream.check_break(_unmasked(exc), stream)
            return True
        except asyncio.CancelledError:
            if _being_cancelled():
                raise
            raise _cancelled_call_error(stream) from None
        finally:
            watchdog.cancel()
            stream.outgoing.put_nowait(END)  # ends the frames if grpc still waits for one
            call.cancel()
        if not self._closing or self._pending:
            raise submit_stream.early_end_error()
        return False

    def _take_stream(self) -> _Stream | None:
        """The stream to open: the first one, or a new one resending what is unanswered."""
        if self._closing and not self._pending:
            return None
        self._stream = submit_stream.next_stream(self._stream, self._pending, self._new_stream)
        return self._stream

    async def _frames(
        self, stream: _Stream
    ) -> AsyncIterator[task_service_pb2.SubmitTaskStreamRequest]:
        """One call's requests: whatever is queued, coalesced into bounded frames."""
        carry: object = None
        while carry is not END:
            if carry is None:
                carry = await stream.outgoing.get()
            frame, carry = submit_stream.take_frame(carry, stream, self._config)
            if frame is not None:
                yield frame

    async def _watch(self, stream: _Stream, call: grpc.aio.Call) -> None:
        """Cancel ``call`` once it has answered nothing for ``config.timeout_s`` while
        submits wait. On the read side, so that a coordinator that stopped reading
        (the writes wait for flow control) is caught as well."""
        while True:
            left_s = stream.clock.left_s()
            if left_s is not None and left_s <= 0:
                stream.clock.stalled = True
                call.cancel()
                return
            await asyncio.sleep(stream.clock.timeout_s if left_s is None else left_s)

    def _answer(
        self, stream: _Stream, results: Iterable[task_service_pb2.StreamedSubmitResult]
    ) -> None:
        """Resolve the answered submits' futures and give their room back."""
        answered = self._pending.answer(results)
        stream.answered = True
        stream.clock.answered(bool(self._pending))
        self._room.give(len(answered))
        for future, result in answered:
            submit_stream.settle(future, result)
        self._end_if_answered()

    def _fail(self, error: BaseException) -> None:
        """Fail every unanswered submit, and every later one, with ``error``."""
        self._failure = error
        self._room.shut(error)
        for future in self._pending.clear():
            submit_stream.fail(future, error)


_MASKED_DETAILS = "Internal error from Core"
"""What grpc.aio says of a call whose status it overwrote (see :func:`_unmasked`)."""


def _unmasked(error: RpcError) -> RpcError:
    """``error``, unless it is the INTERNAL that grpc.aio reports in place of the real status.

    When the coordinator ends the call while a frame is being written (it
    refuses the call, shuts down, or dies), grpc.aio overwrites the status it
    received with INTERNAL "Internal error from Core" (grpc/grpc#36066, open at
    grpcio 1.85). The real status is lost, so the stream counts as broken
    (UNAVAILABLE): its submits are resent, and a status that refuses the call for
    good (UNAUTHENTICATED, ...) shows on the next attempt unless masked again.
    """
    if error.code is not grpc.StatusCode.INTERNAL or error.message != _MASKED_DETAILS:
        return error
    broken = Unavailable(
        grpc.StatusCode.UNAVAILABLE, "the stream ended as a frame was written; status lost"
    )
    broken.__cause__ = error
    return broken


def _being_cancelled() -> bool:
    """Whether the current task is being cancelled (rather than a call it awaits)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _cancelled_call_error(stream: _Stream) -> RpcError:
    """What a read that raised CancelledError while this task was not cancelled means.

    grpc.aio raises CancelledError from a call cancelled on this side: by the
    watchdog when the stream fell silent, or by the client's channel closing.
    """
    if stream.clock.stalled:
        return submit_stream.silence_error(stream.clock.timeout_s)
    return RpcError(grpc.StatusCode.CANCELLED, "the submit stream was cancelled (channel closed?)")
