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


def time_to_proto(value: datetime | None, name: str = "time") -> timestamp_pb2.Timestamp | None:
    """A Timestamp of ``value`` (a naive one is local time); None stays unset.

    ValueError naming ``name`` for a time that is not in years 1-9999 once in UTC
    (``datetime(1, 1, 1, tzinfo=...)`` east of UTC), instead of an OverflowError.
    """
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    try:
        # FromDatetime would read a naive value as UTC; astimezone reads it as local time.
        stamp.FromDatetime(value.astimezone(UTC))
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"{name} {value.isoformat()} is out of range in UTC: {exc}") from None
    return stamp


MAX_DURATION_S = 315_576_000_000
"""A ``google.protobuf.Duration`` spans at most this many seconds (10,000 years) either way."""


def duration_to_proto(seconds: float, name: str = "duration") -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` of ``seconds``, to the nanosecond.

    ValueError naming ``name`` for a number no Duration holds (NaN, infinite, or past
    10,000 years), instead of the OverflowError rounding it raised.
    """
    if not -MAX_DURATION_S <= seconds <= MAX_DURATION_S:  # NaN is within no range
        raise ValueError(f"{name} must be a finite number of seconds, got {seconds!r}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def optional_duration(
    seconds: float | None, name: str = "duration"
) -> duration_pb2.Duration | None:
    """:func:`duration_to_proto`, with None staying unset."""
    return None if seconds is None else duration_to_proto(seconds, name)


def duration_from_proto(message: Message, name: str) -> float | None:
    """The Duration field ``name`` in seconds; None when unset."""
    if not message.HasField(name):
        return None
    duration: duration_pb2.Duration = getattr(message, name)
    return duration.ToNanoseconds() / 1e9
