"""Timestamps and durations between protobuf and Python, shared by every conversion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_from_proto(message: Message, name: str) -> datetime | None:
    """The aware UTC ``datetime`` of the Timestamp field ``name``; None when unset."""
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    # What ``ToDatetime(tzinfo=UTC)`` computes (nanoseconds truncated to microseconds),
    # without its range check and time zone conversion: a task carries up to eight
    # timestamps and a submit_many answer thousands of tasks.
    # Positional timedelta arguments: keywords cost as much again as the arithmetic.
    return _EPOCH + timedelta(0, stamp.seconds, stamp.nanos // 1000)


def time_to_proto(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp of ``value`` (a naive one is local time); None stays unset."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    # FromDatetime would read a naive value as UTC; astimezone reads it as local time.
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def duration_to_proto(seconds: float) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` of ``seconds``, to the nanosecond."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def optional_duration(seconds: float | None) -> duration_pb2.Duration | None:
    """:func:`duration_to_proto`, with None staying unset."""
    return None if seconds is None else duration_to_proto(seconds)


def duration_from_proto(message: Message, name: str) -> float | None:
    """The Duration field ``name`` in seconds; None when unset."""
    if not message.HasField(name):
        return None
    duration: duration_pb2.Duration = getattr(message, name)
    return duration.ToNanoseconds() / 1e9
