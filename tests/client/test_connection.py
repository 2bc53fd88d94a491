from __future__ import annotations

import asyncio

import grpc

from dtq_client.connection import (
    MAX_RECEIVE_BYTES,
    MAX_SEND_BYTES,
    channel_args,
    create_aio_channel,
    create_channel,
)


def test_channel_args_carry_keepalive_and_size_limits() -> None:
    args = dict(channel_args())
    assert args["grpc.keepalive_time_ms"] == 10_000  # twice the server's 5 s ping minimum
    assert args["grpc.keepalive_timeout_ms"] == 5_000
    assert args["grpc.keepalive_permit_without_calls"] == 1
    assert args["grpc.http2.max_pings_without_data"] == 0
    assert args["grpc.max_send_message_length"] == MAX_SEND_BYTES == 4 * 1024 * 1024
    assert args["grpc.max_receive_message_length"] == MAX_RECEIVE_BYTES == 8 * 1024 * 1024
    assert str(args["grpc.primary_user_agent"]).startswith("dtq-python/")


def test_options_override_defaults() -> None:
    args = dict(channel_args([("grpc.keepalive_time_ms", 20_000)], user_agent="dtq-worker/1"))
    assert args["grpc.keepalive_time_ms"] == 20_000
    assert args["grpc.primary_user_agent"] == "dtq-worker/1"


def test_channels_open_and_close() -> None:
    channel = create_channel("127.0.0.1:1")
    assert isinstance(channel, grpc.Channel)
    channel.close()

    async def aio() -> None:
        aio_channel = create_aio_channel("127.0.0.1:1")
        await aio_channel.close(None)

    asyncio.run(aio())
