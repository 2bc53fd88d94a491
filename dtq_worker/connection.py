"""The node's one session stream to the coordinator (``WorkerService.Connect``).

:class:`Connection` opens the stream, registers, and then runs three tasks on
the node's asyncio loop, each with one job:

- the *reader* hands every coordinator message to the node and notes heartbeat acks;
- the *writer* is the only one that writes: heartbeats, then every pending update
  in as few TaskUpdates frames as fit (it never waits to batch: what piled up
  while the previous write was in flight goes in the next frame), and at the
  end Leave;
- the *heart* asks for a heartbeat every interval and declares the stream dead
  when one goes unanswered for the heartbeat timeout (one-way black holes).

When the stream ends, the connection reconnects: after a break it resumes the
session (``resume_session_id`` and the held leases) with exponential backoff
and jitter (tenacity), pausing at most a quarter of the session's heartbeat
timeout so that several attempts fall within the coordinator's grace; after
SESSION_EXPIRED the leases are gone, the node drops them and registers a new
session. INVALID_ARGUMENT (a registration the coordinator refuses) is fatal.
:meth:`Connection.close` writes everything pending, then Leave (which ends the
session at once; any other stream end leaves it resumable until the heartbeat
timeout), then half-closes, and waits for the coordinator to end the stream
with OK.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import structlog
import tenacity

from dtq.v1 import worker_service_pb2
from dtq_worker import convert
from dtq_worker.config import WorkerConfig
from dtq_worker.errors import SessionExpired, StreamBroken, StreamError
from dtq_worker.heartbeat import HeartbeatTracker
from dtq_worker.models import (
    HeartbeatAcked,
    HeartbeatInfo,
    Inbound,
    Registered,
    Registration,
    Update,
)
from dtq_worker.rpc import NodeChannel, stream_error

log = structlog.get_logger(__name__)

Call = grpc.aio.StreamStreamCall[
    worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse
]

DEFAULT_HEARTBEAT_INTERVAL_S = 2.0
"""Used if NodeRegistered carries no interval."""
RESUME_ATTEMPTS = 4
"""While a session is resumable, reconnect pauses stay within its timeout / this."""
STABLE_STREAM_S = 2.0
"""A stream that breaks sooner than this after registering is a quick break; the
node pauses before reconnecting after each one in a row (the coordinator
registers it, then ends the stream again at once: say, every resent result fails
to commit while its database is down), instead of reconnecting in a tight loop."""
FAILED_WRITE_GRACE_S = 1.0
"""After a failed write, how long the reader gets to learn how the stream ended."""


class SessionHandler(Protocol):
    """What the connection needs from the node. Called on the loop thread."""

    def registration(self, resume_session_id: str) -> Registration:
        """The RegisterNode to send; leases only when resuming."""

    def registered(self, registered: Registered) -> None:
        """A session is open (new or resumed); pending updates may be resent."""

    def received(self, message: Inbound) -> None:
        """A message from the coordinator."""

    def heartbeat_info(self, round_trip_s: float | None) -> HeartbeatInfo:
        """What the next heartbeat reports; ``round_trip_s`` is the last one's send to ack."""

    def take_updates(self) -> list[Update]:
        """Every update waiting to be written."""

    def session_lost(self) -> None:
        """The session expired: every lease is gone."""


def reconnect_backoff(max_s: float) -> tenacity.wait.wait_base:
    """Pause before reconnect attempt n+1: half fixed, half random ("equal jitter").

    The fixed half doubles from 50 ms and the random half is uniform in
    [0, fixed half], so pauses grow exponentially, never drop to zero, spread
    nodes apart after a coordinator restart, and stay within ``max_s``.
    """
    half = max_s / 2
    fixed = tenacity.wait_exponential(multiplier=0.05, max=half)
    jitter = tenacity.wait_random_exponential(multiplier=0.05, max=half)
    return fixed + jitter


def flap_pause(breaks: int, max_s: float) -> float:
    """The pause before reconnecting after ``breaks`` quick breaks in a row (see
    STABLE_STREAM_S): the shape of :func:`reconnect_backoff`, within ``max_s``."""
    half: float = min(max_s / 2, 0.05 * 2.0 ** (breaks - 1))
    return half + random.uniform(0, half)


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    log.warning(
        "coordinator.unreachable",
        error=str(error),
        attempt=retry_state.attempt_number,
        retry_in_s=round(retry_state.upcoming_sleep, 3),
    )


@dataclass(eq=False)
class _Stream:
    """The state of one registered stream."""

    call: Call
    tracker: HeartbeatTracker
    interval_s: float
    heartbeat_due: int | None = None
    """Sequence of a heartbeat the writer has yet to send."""
    registered_at: float = field(default_factory=time.monotonic)


class Connection:
    """Keeps one registered session stream open until closed; see the module docstring."""

    def __init__(self, config: WorkerConfig, handler: SessionHandler) -> None:
        self._config = config
        self._handler = handler
        self._wake = asyncio.Event()
        """Writer: something to write (an update, a heartbeat, or the close)."""
        self._closing = asyncio.Event()
        """Stop signal: write what is pending, leave, half-close, do not reconnect."""
        self._leave_reason = ""
        self._session_id = ""
        self._session_timeout_s = 0.0
        """The heartbeat timeout of the session held: how long the coordinator waits
        for this node to resume it after the stream breaks."""
        self._stream: _Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel = NodeChannel(config)
        self._metadata = (
            None if config.token is None else (("authorization", f"Bearer {config.token}"),)
        )
        """What the stream carries besides its messages: the token, if any."""

    @property
    def connected(self) -> bool:
        """True while a registered stream is up."""
        return self._stream is not None

    def wake(self) -> None:
        """Updates are pending: have the writer send them (loop thread only)."""
        self._wake.set()

    def heartbeat_soon(self) -> None:
        """Send a heartbeat now instead of at the next interval (loop thread only): it
        carries news, such as a prefetch ``--prefetch auto`` has just resized."""
        stream = self._stream
        if stream is not None and stream.heartbeat_due is None:
            stream.heartbeat_due = stream.tracker.sent(asyncio.get_running_loop().time())
            self._wake.set()

    def start(self) -> asyncio.Task[None]:
        """Run the connection in a task; it ends on close, or raises a fatal StreamError."""
        self._task = asyncio.create_task(self.run(), name="dtq-connection")
        return self._task

    async def close(self, reason: str, timeout_s: float) -> None:
        """Write what is pending, leave the session, wait (bounded) for the stream to end."""
        self._leave_reason = reason
        self._closing.set()
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        if not self.connected:
            # Between streams there is no session to leave: stop reconnecting. The
            # coordinator requeues what is still held when the session times out.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            log.warning("stream.close_timeout", timeout_s=timeout_s)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except StreamError as exc:
            log.warning("stream.close_failed", error=str(exc))

    async def run(self) -> None:
        """Register, serve, and reconnect until :meth:`close`."""
        quick_breaks = 0
        try:
            while not self._closing.is_set():
                try:
                    stream = await self._connect()
                except SessionExpired as exc:
                    self._expired(exc)
                    continue
                try:
                    await self._serve(stream)
                    return  # closed cleanly
                except SessionExpired as exc:
                    self._expired(exc)
                except StreamBroken as exc:
                    log.warning("stream.broken", session_id=self._session_id, error=str(exc))
                    lived_s = time.monotonic() - stream.registered_at
                    quick_breaks = quick_breaks + 1 if lived_s < STABLE_STREAM_S else 0
                finally:
                    self._stream = None
                    stream.call.cancel()
                if quick_breaks:
                    await self._pause(flap_pause(quick_breaks, self._pause_cap_s()))
        finally:
            await self._channel.close()

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless :meth:`close` comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    def _expired(self, exc: SessionExpired) -> None:
        log.warning("session.expired", session_id=self._session_id, error=str(exc))
        self._session_id = ""
        self._handler.session_lost()

    # --- registering ----------------------------------------------------------------------

    async def _connect(self) -> _Stream:
        """Open and register a stream, retrying breaks with backoff (not expiry or rejection)."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(StreamBroken),
            wait=reconnect_backoff(self._pause_cap_s()),
            before_sleep=_log_retry,
            reraise=True,
        )
        stream: _Stream = await retrying(self._register)
        return stream

    def _pause_cap_s(self) -> float:
        """The longest pause between reconnect attempts.

        While the node holds a session, several attempts must land inside the
        coordinator's grace for it (the heartbeat timeout, counted again from a
        coordinator restart): otherwise a coordinator that is back in a second
        still sees the node too late, and every task it held runs again.
        """
        cap = self._config.reconnect_backoff_max_s
        if self._session_id and self._session_timeout_s > 0:
            cap = min(cap, self._session_timeout_s / RESUME_ATTEMPTS)
        return cap

    async def _register(self) -> _Stream:
        stub = await self._channel.stub()
        registration = self._handler.registration(self._session_id)
        call: Call = stub.Connect(metadata=self._metadata)

        async def handshake() -> object:
            await call.write(convert.register_request(registration))
            return await call.read()

        try:
            # The stream itself has no deadline (it lives for hours); its first
            # exchange does, so a coordinator that never answers is retried.
            response = await asyncio.wait_for(handshake(), self._config.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise stream_error(exc) from exc
        except asyncio.InvalidStateError as exc:  # the call ended before the write
            error = await _final_error(call)
            raise error from exc
        except TimeoutError as exc:
            call.cancel()
            raise StreamBroken(
                f"no answer to RegisterNode within {self._config.rpc_timeout_s} s"
            ) from exc
        message = (
            convert.inbound(response)
            if isinstance(response, worker_service_pb2.ConnectResponse)
            else None
        )
        if not isinstance(message, Registered):
            call.cancel()
            raise StreamBroken(f"expected NodeRegistered, got {type(message).__name__}")
        resumed_from = self._session_id
        self._session_id = message.session_id
        interval = message.heartbeat_interval_s or DEFAULT_HEARTBEAT_INTERVAL_S
        timeout = message.heartbeat_timeout_s
        if timeout <= interval:
            timeout = 5 * interval
        self._session_timeout_s = timeout
        loop_time = asyncio.get_running_loop().time()
        stream = _Stream(call, HeartbeatTracker(timeout, started_at=loop_time), interval)
        log.info(
            "node.registered",
            node_id=registration.node_id,
            session_id=message.session_id,
            resumed=message.resumed,
            resumed_from=resumed_from or None,
            stale=len(message.stale_leases),
        )
        self._stream = stream
        self._handler.registered(message)
        self._wake.set()
        return stream

    # --- serving --------------------------------------------------------------------------

    async def _serve(self, stream: _Stream) -> None:
        """Run reader, writer and heart until the stream ends; return only on a clean close."""
        reader = asyncio.create_task(self._read_loop(stream), name="dtq-stream-reader")
        writer = asyncio.create_task(self._write_loop(stream), name="dtq-stream-writer")
        heart = asyncio.create_task(self._heart_loop(stream), name="dtq-heart")
        tasks = (reader, writer, heart)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not reader.done():
                # Left (close) or a write failed: either way the reader learns
                # how the stream ends, which decides between resume and a new session.
                bound = (
                    self._config.rpc_timeout_s
                    if writer.exception() is None
                    else FAILED_WRITE_GRACE_S
                )
                await asyncio.wait(
                    (reader, heart), timeout=bound, return_when=asyncio.FIRST_COMPLETED
                )
            if reader.done():
                reader.result()  # raises how the stream ended, unless it was a clean close
                return
            if heart.done():
                heart.result()  # raises: no heartbeat ack in time
            failure = writer.exception() if writer.done() else None
            if failure is not None:
                raise StreamBroken(f"write failed: {failure!r}") from failure
            raise StreamBroken("the coordinator did not end the stream after the close")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_loop(self, stream: _Stream) -> None:
        while True:
            try:
                response = await stream.call.read()
            except grpc.aio.AioRpcError as exc:
                raise stream_error(exc) from exc
            if not isinstance(response, worker_service_pb2.ConnectResponse):  # EOF: status OK
                if self._closing.is_set():
                    return
                raise StreamBroken("the coordinator ended the stream")
            message = convert.inbound(response)
            now = asyncio.get_running_loop().time()
            if isinstance(message, HeartbeatAcked):
                stream.tracker.acked(message.sequence, now)
            else:
                stream.tracker.heard(now)
            if isinstance(message, Registered):
                log.warning("stream.unexpected_registered", session_id=message.session_id)
            elif message is not None:
                self._handler.received(message)

    async def _write_loop(self, stream: _Stream) -> None:
        call = stream.call
        while True:
            await self._wake.wait()
            self._wake.clear()
            if stream.heartbeat_due is not None:
                sequence, stream.heartbeat_due = stream.heartbeat_due, None
                info = self._handler.heartbeat_info(stream.tracker.round_trip_s)
                await call.write(convert.heartbeat_request(sequence, info, time.time()))
            for frame in convert.update_frames(self._handler.take_updates()):
                await call.write(frame)
            if self._closing.is_set() and not self._wake.is_set():
                await call.write(convert.leave_request(self._leave_reason))
                await call.done_writing()
                return

    async def _heart_loop(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        tracker = stream.tracker
        next_beat = loop.time() + stream.interval_s
        while True:
            now = loop.time()
            if tracker.overdue(now):
                raise StreamBroken(f"no heartbeat ack within {tracker.timeout_s} s")
            if now >= next_beat:
                # Counted as sent now, not when written: a writer stuck behind flow
                # control must not stop the ack deadline from running.
                stream.heartbeat_due = tracker.sent(now)
                self._wake.set()
                next_beat = now + stream.interval_s
            wake_at = min(next_beat, tracker.overdue_at() or math.inf)
            await asyncio.sleep(max(0.0, wake_at - loop.time()))


async def _final_error(call: Call) -> StreamError:
    """How a call that already ended ended (reading a finished call raises its status)."""
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return stream_error(exc)
    return StreamBroken("the coordinator ended the stream")
