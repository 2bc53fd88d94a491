"""The one place that opens gRPC channels to the coordinator.

Clients and worker nodes both open channels here (:func:`create_channel`, or
:func:`create_aio_channel` for asyncio code), so keepalive and message-size
limits are decided once. The keepalive interval is deliberately
twice the server's minimum ping interval (5 s): a client that pings more often
than the server permits gets its connection closed with ``too_many_pings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import grpc.experimental

from dtq import __version__
from dtq_client.config import ClientConfig

MAX_SEND_BYTES = 4 * 1024 * 1024
"""Largest message a channel sends; submit batches stay well under it."""

MAX_RECEIVE_BYTES = 8 * 1024 * 1024
"""Largest message a channel receives, so that a full page of tasks fits."""

DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # gRPC 1.85 waits for a ping's ack for ping_timeout (default 60 s), not for
    # keepalive_timeout: without this a call through a black hole hung for 60 s.
    ("grpc.http2.ping_timeout_ms", 5_000),
    # Idle channels (a client blocked in wait()) must notice a dead peer too.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
)
"""Channel arguments every DTQ channel starts from."""


SYNC_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Watches (wait, submit_and_wait) are read on the caller's thread. Without this,
    # grpc starts a "channel spin" thread for every streaming call on an otherwise
    # idle channel and hands each message over from it: a thread start and two
    # thread hops per wait (~0.3 ms of CPU). The client reads each call from the
    # thread that made it, which is all this mode asks. A grpc that drops the
    # (experimental) option just ignores the argument.
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
)
"""Channel arguments for blocking (non-asyncio) channels only."""


def channel_args(
    options: Sequence[tuple[str, Any]] = (), user_agent: str | None = None
) -> list[tuple[str, Any]]:
    """:data:`DEFAULT_OPTIONS` overridden by ``options``, plus the user agent."""
    merged = dict(DEFAULT_OPTIONS)
    merged.update(options)
    merged["grpc.primary_user_agent"] = user_agent or f"dtq-python/{__version__}"
    return list(merged.items())


def create_channel(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    user_agent: str | None = None,
) -> grpc.Channel:
    """Open a channel to ``address`` (``host:port``) with DTQ's channel options.

    ``options`` override or extend :data:`DEFAULT_OPTIONS` and :data:`SYNC_OPTIONS`
    (streaming calls read on the calling thread); ``credentials``
    makes it a TLS channel; ``user_agent`` defaults to ``dtq-python/<version>``.
    """
    args = channel_args([*SYNC_OPTIONS, *options], user_agent)
    if credentials is None:
        return grpc.insecure_channel(address, options=args)
    return grpc.secure_channel(address, credentials, options=args)


def create_aio_channel(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    user_agent: str | None = None,
) -> grpc.aio.Channel:
    """:func:`create_channel` for asyncio code (``grpc.aio``), with the same options."""
    args = channel_args(options, user_agent)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=args)
    return grpc.aio.secure_channel(address, credentials, options=args)


def open_channel(config: ClientConfig) -> grpc.Channel:
    """The blocking channel ``config`` describes: its address, over TLS if it says so,
    sending its token with every call if it has one."""
    if config.tls is None:
        channel = create_channel(config.address)
    else:
        channel = create_channel(
            config.address,
            credentials=config.tls.credentials(),
            options=config.tls.channel_options(),
        )
    if config.token is None:
        return channel
    return grpc.intercept_channel(channel, BearerToken(config.token))


def open_aio_channel(config: ClientConfig) -> grpc.aio.Channel:
    """The ``grpc.aio`` channel ``config`` describes; its token goes with each call
    (:func:`bearer_metadata`), as grpc.aio channels take no such interceptor here."""
    if config.tls is None:
        return create_aio_channel(config.address)
    return create_aio_channel(
        config.address,
        credentials=config.tls.credentials(),
        options=config.tls.channel_options(),
    )


def bearer_header(token: str) -> tuple[str, str]:
    """The ``authorization: Bearer <token>`` metadata entry a coordinator checks."""
    return ("authorization", f"Bearer {token}")


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


if TYPE_CHECKING:  # the stubs make these generic; at run time they are plain classes
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor
    _StreamUnary = grpc.StreamUnaryClientInterceptor
    _StreamStream = grpc.StreamStreamClientInterceptor


class BearerToken(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Adds ``authorization: Bearer <token>`` to every call.

    Metadata rather than gRPC's call credentials: those are sent only over TLS,
    and a coordinator on loopback checks tokens too.
    """

    def __init__(self, token: str) -> None:
        self._header = bearer_header(token)

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
