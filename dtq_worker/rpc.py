"""The gRPC edge of the node: the one channel factory, and the one place where a
``grpc.aio.AioRpcError`` becomes a :class:`~dtq_worker.errors.StreamError`.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
import structlog
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dtq import __version__
from dtq.tls import ClientTls, Stamp, TlsConfigError, stamp
from dtq.v1 import worker_service_pb2_grpc
from dtq_worker.config import WorkerConfig
from dtq_worker.errors import RegistrationRejected, SessionExpired, StreamBroken, StreamError

log = structlog.get_logger(__name__)

ERROR_DOMAIN = "dtq.dev"
"""The ``google.rpc.ErrorInfo.domain`` of the coordinator's errors."""

MAX_SEND_BYTES = 4 * 1024 * 1024
MAX_RECEIVE_BYTES = 8 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Ping every 10 s: twice the server's minimum interval (5 s), so the server
    # never closes the connection with too_many_pings.
    ("grpc.keepalive_time_ms", 10_000),
    # The node's liveness check is its heartbeat (dtq_worker.heartbeat): any message
    # from the coordinator counts, so a slow link that keeps delivering is alive. gRPC
    # core counts only the ping's ack, which on such a link waits behind the
    # assignments (grpc/grpc#22963): at 5 s it broke a live stream in chaos N5. The
    # keepalive is only a backstop here, so it waits twice the default heartbeat
    # timeout (10 s). gRPC waits ping_timeout (default 60 s), not
    # keepalive_timeout, for the ack, so both are set.
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.ping_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.primary_user_agent", f"dtq-worker/{__version__}"),
)
"""Channel arguments of the node's channel."""


INITIAL_RECONNECT_BACKOFF_MS = 100
"""gRPC's own first pause after a failed connection attempt (its default is 1 s)."""
MAX_RECONNECT_BACKOFF_MS = 1_000
"""gRPC's own longest pause between connection attempts (its default is 120 s)."""


def reconnect_options(reconnect_backoff_max_s: float) -> list[tuple[str, int]]:
    """Channel arguments keeping gRPC's own pause between connection attempts short.

    A channel whose connection attempt failed fails calls at once until its
    backoff (by default 1 s growing to 120 s) ends. Left alone, a node's
    reconnect attempts after a coordinator restart fail against that timer,
    and the node comes back seconds (after a long outage, minutes) later than
    its own backoff says, after the restarted coordinator expired its session.
    Kept at 0.1-1 s (within ``reconnect_backoff_max_s``), each of the node's
    attempts (:func:`dtq_worker.connection.reconnect_backoff`) is a real one:
    a node trying its coordinator once a second costs nothing.
    """
    max_ms = max(1, round(reconnect_backoff_max_s * 1000))
    return [
        ("grpc.initial_reconnect_backoff_ms", min(INITIAL_RECONNECT_BACKOFF_MS, max_ms)),
        ("grpc.max_reconnect_backoff_ms", min(MAX_RECONNECT_BACKOFF_MS, max_ms)),
    ]


def create_channel(
    target: str, reconnect_backoff_max_s: float, tls: ClientTls | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to the coordinator at ``target`` (``host:port``), TLS if asked."""
    options = [*CHANNEL_OPTIONS, *reconnect_options(reconnect_backoff_max_s)]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    options += tls.channel_options()
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)


class NodeChannel:
    """The node's channel to its coordinator, made again when its certificate files change.

    A long-lived node outlives its certificate when certificates are short-lived
    (cert-manager, SPIFFE). The files are looked at (``stat``) before every
    connection attempt, so a node whose stream broke reconnects with the renewed
    ones instead of failing every handshake with the expired one until
    restarted; the open stream keeps its connection. A set that does not load
    (half renewed) is logged and the current channel kept.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: worker_service_pb2_grpc.WorkerServiceStub | None = None
        self._files: Stamp = None
        """The certificate files as the channel read them."""

    async def stub(self) -> worker_service_pb2_grpc.WorkerServiceStub:
        """The stub to connect with (on a new channel if the files changed)."""
        config = self._config
        tls = config.tls
        now = None if tls is None else stamp(tls.files())
        if self._stub is not None and now == self._files:
            return self._stub
        try:
            channel = create_channel(config.coordinator, config.reconnect_backoff_max_s, tls)
        except TlsConfigError as exc:
            if self._stub is None:
                raise
            log.warning("tls.reload_failed", error=str(exc))
            self._files = now  # tried: again when the files change again
            return self._stub
        if self._channel is not None:
            log.info("tls.reloaded", files=[str(f) for f in tls.files()] if tls else [])
            await self._channel.close(None)
        self._channel, self._files = channel, now
        self._stub = worker_service_pb2_grpc.WorkerServiceStub(channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)


_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        # A token the coordinator does not take, or one for another role or node:
        # retrying cannot help, so the node stops (exit 1) and says why.
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def stream_error(exc: grpc.aio.AioRpcError) -> StreamError:
    """How the stream ended, from its status and ``google.rpc`` details (when present)."""
    code = exc.code()
    message = exc.details() or ""
    reason, violations = _details(exc)
    kwargs: dict[str, Any] = {"code": code, "reason": reason, "field_violations": violations}
    # Connect fails FAILED_PRECONDITION only for SESSION_EXPIRED, so the code alone
    # decides when the details are missing.
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return SessionExpired(message, **kwargs)
    if code in _REFUSED:
        return RegistrationRejected(message, **kwargs)
    return StreamBroken(message, **kwargs)


def _details(exc: grpc.aio.AioRpcError) -> tuple[str | None, list[tuple[str, str]]]:
    """The ErrorInfo reason and BadRequest violations of ``exc``; empty when absent."""
    try:
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except (ValueError, DecodeError):
        return None, []  # details contradicting the status are ignored: the code suffices
    if status is None:
        return None, []
    reason: str | None = None
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason = info.reason or None
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
    return reason, violations
