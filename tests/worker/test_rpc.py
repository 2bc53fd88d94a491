"""How a stream's final status becomes a worker error (with or without details)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from dtq_server.config import ServerConfig
from dtq_worker import RegistrationRejected, SessionExpired, StreamBroken
from dtq_worker.rpc import CHANNEL_OPTIONS, reconnect_options, stream_error


def _error(
    code: grpc.StatusCode,
    message: str,
    *details: Message,
    status_code: grpc.StatusCode | None = None,
) -> grpc.aio.AioRpcError:
    """An AioRpcError as a call ends with it; ``status_code`` makes the details disagree."""
    trailers = grpc.aio.Metadata()
    if details:
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(
            code=(status_code or code).value[0], message=message, details=packed
        )
        trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, None)


def test_session_expired_with_details() -> None:
    info = error_details_pb2.ErrorInfo(reason="SESSION_EXPIRED", domain="dtq.dev")
    error = stream_error(_error(grpc.StatusCode.FAILED_PRECONDITION, "expired", info))
    assert isinstance(error, SessionExpired)
    assert error.reason == "SESSION_EXPIRED"


def test_failed_precondition_without_details_is_still_session_expired() -> None:
    error = stream_error(_error(grpc.StatusCode.FAILED_PRECONDITION, "expired"))
    assert isinstance(error, SessionExpired)
    assert error.reason is None


def test_invalid_registration_names_the_fields() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="register.slots", description="0")
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="INVALID_FIELD", domain="dtq.dev")
    error = stream_error(_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", info, bad))
    assert isinstance(error, RegistrationRejected)
    assert error.field_violations == [("register.slots", "0")]
    assert "register.slots" in str(error)


def test_anything_else_is_a_broken_stream() -> None:
    error = stream_error(_error(grpc.StatusCode.UNAVAILABLE, "down"))
    assert isinstance(error, StreamBroken)
    assert error.code == grpc.StatusCode.UNAVAILABLE


def test_details_contradicting_the_status_are_ignored() -> None:
    info = error_details_pb2.ErrorInfo(reason="SESSION_EXPIRED", domain="dtq.dev")
    error = stream_error(
        _error(
            grpc.StatusCode.UNAVAILABLE,
            "down",
            info,
            status_code=grpc.StatusCode.FAILED_PRECONDITION,
        )
    )
    assert isinstance(error, StreamBroken)
    assert error.reason is None


def test_keepalive_never_trips_the_servers_ping_limit() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.keepalive_time_ms"] >= 10_000
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_receive_message_length"] == 8 * 1024 * 1024


def test_the_transport_keepalive_leaves_liveness_to_the_heartbeat() -> None:
    # A ping's ack waits behind the assignments on a slow link; the heartbeat counts
    # any message, so the transport must not give up first (chaos N5).
    options = dict(CHANNEL_OPTIONS)
    default_timeout_ms = ServerConfig().heartbeat_timeout_s * 1000
    assert options["grpc.keepalive_timeout_ms"] >= 2 * default_timeout_ms
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]


def test_grpc_reconnect_pauses_are_short_and_within_the_nodes_backoff() -> None:
    # Left at its defaults, gRPC waits 1 s growing to 120 s between connection attempts
    # (failing calls meanwhile), so a node would miss its session after a restart.
    assert dict(reconnect_options(0.05)) == {
        "grpc.initial_reconnect_backoff_ms": 50,
        "grpc.max_reconnect_backoff_ms": 50,
    }
    assert dict(reconnect_options(5.0)) == {
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
