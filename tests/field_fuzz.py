"""Requests built field by field from the descriptors: mostly valid, with edge values mixed in.

B2 sends random bytes and bit-level edits of one valid message; those rarely
decode to a message whose *values* are odd (a Timestamp past year 9999, NaN in
a double, a NUL in a name, 2**64-1 in a count) while the rest is valid enough
to reach the code behind the first check. :class:`MessageGen` fills any
message of the contract that way: each field is set with a fixed chance
(high for the ones a request needs), to a realistic value most of the time and
to an edge value of its type otherwise; repeated fields, maps, oneofs,
Timestamps and Durations included. Seeded, so a failure replays. :func:`call`
sends one call's requests as bytes and returns the status it ended with;
:func:`fuzz_rpcs` makes many such calls of many RPCs and tallies them.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor
from google.protobuf.message import Message

from tests.rpcs import Rpc

FD = descriptor.FieldDescriptor

EDGE_STRINGS = (
    "", "x", " ", "\t", "\n", "*", "%s", "../..", "a b", "a:b", "a.b", "é", "\ud7ff",
    "a\x00b", "\x00", "default\x00", "a" * 300, "x" * 5000, "9" * 40, "-1", "nan", "inf",
    "1e309", "true", "null", "{}", "[]", "America", "0 0 31 2 *", "0 9 1 1 * 0 2027",
    "@hourly", "QUEUED",
)  # fmt: skip
EDGE_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**63 - 1, -(2**63))
EDGE_UINTS = (0, 1, 2**31, 2**32 - 1, 2**53, 2**63, 2**64 - 1)
EDGE_DOUBLES = (0.0, -0.0, -1.0, 1e-300, 5e-324, 1e300, math.nan, math.inf, -math.inf)
EDGE_BYTES = (b"", b"\x00", b"\xff\xfe", b"[" * 2000, b"null", b"x" * 70_000)
EDGE_SECONDS = (
    -1, 2**40, -(2**40), 253_402_300_799, 253_402_300_800, -62_135_596_801,
    315_576_000_000, 2**63 - 1, -(2**63),
)  # fmt: skip
EDGE_NANOS = (-1, 999_999_999, 1_000_000_000, -(10**9), 2**31 - 1)

REALISTIC: dict[str, Sequence[str]] = {
    "type": ("echo", "ok"),
    "queue": ("default", "fz"),
    "queues": ("default", "fz"),
    "task_types": ("echo", "ok"),
    "name": ("nightly", "hourly"),
    "cron": ("* * * * *", "*/5 * * * *", "0 9 * * 1-5"),
    "time_zone": ("UTC", "Europe/Paris"),
    "content_type": ("application/json",),
    "node_id": ("fz0", "fz1"),
    "key": ("k1", "k2"),
    "rate_key": ("", "k1"),
    "page_token": ("",),
}
"""Plausible values by field name (any message): what a real client would send."""
ALWAYS = frozenset(
    {"type", "queue", "payload", "task", "tasks", "submits", "name", "schedule", "cron",
     "time_zone", "data", "content_type", "node_id", "lease", "task_id", "attempt",
     "per_second", "burst", "key"}
)  # fmt: skip
"""Fields set almost always: without them nearly every request stops at the first check."""
TIME_TYPES = ("google.protobuf.Timestamp", "google.protobuf.Duration")
STREAM_DEADLINE_S = 1.5
"""The longest a server stream (a watch) is waited on for its first answer."""
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE)
"""What no request may end with: the coordinator failed, not the request (the store is
healthy throughout, so UNAVAILABLE means a request made it fail: a NUL on PostgreSQL did)."""


def ended_badly(code: grpc.StatusCode | None, details: str) -> bool:
    """A call or stream that ended in one of :data:`BAD_CODES`, or with a traceback."""
    return code in BAD_CODES or "Traceback" in details


class MessageGen:
    """Fills messages from their descriptors (see the module docstring)."""

    def __init__(
        self, rng: random.Random, ids: Sequence[str], edge: float = 0.08, present: float = 0.55
    ) -> None:
        self.rng = rng
        self.ids = list(ids)
        """Ids of stored tasks, so lookups, cancels and dependencies find real ones."""
        self.edge = edge
        self.present = present

    def build(self, message_type: type[Message]) -> Message:
        """A new ``message_type`` filled in."""
        message = message_type()
        self.fill(message)
        return message

    def requests(self, rpc: Rpc) -> list[Message]:
        """What one call of ``rpc`` sends: a request, or 1-3 on a request stream; each
        either built with edge values mixed in or a :meth:`mutant`, half and half."""
        count = self.rng.choice((1, 2, 3)) if rpc.client_streaming else 1
        build = self.build if self.rng.random() < 0.5 else self.mutant
        return [build(rpc.request) for _ in range(count)]

    def mutant(self, message_type: type[Message]) -> Message:
        """A realistic ``message_type`` with exactly one field (anywhere in it) set to an
        edge value: valid enough elsewhere for that value to get as deep as it can."""
        edge, self.edge = self.edge, 0.0
        try:
            message = self.build(message_type)
        finally:
            self.edge = edge
        spots = list(_spots(message, 0))
        if not spots:  # a request with no fields
            return message
        owner, fd = self.rng.choice(spots)
        if fd is None:
            self._time(owner, owner.DESCRIPTOR.full_name.endswith("Timestamp"), edge=True)
        elif fd.message_type is None or _entry(fd)[1].message_type is None:
            self._put(owner, fd, edge=True)
        return message

    def fill(self, message: Message, depth: int = 0) -> None:
        """Set some of ``message``'s fields (in place), recursing up to a few levels."""
        desc = message.DESCRIPTOR
        if desc.full_name in TIME_TYPES:
            self._time(message, timestamp=desc.full_name.endswith("Timestamp"))
            return
        oneofs: set[str] = set()
        for fd in desc.fields:
            wanted = 0.97 if fd.name in ALWAYS else self.present
            if self.rng.random() > wanted:
                continue
            if fd.containing_oneof is not None:
                if fd.containing_oneof.name in oneofs:
                    continue
                oneofs.add(fd.containing_oneof.name)
            self._set(message, fd, depth)

    def _set(self, message: Message, fd: Any, depth: int) -> None:
        rng = self.rng
        field: Any = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd, value_fd = _entry(fd)
            for _ in range(rng.choice((1, 1, 2, 3, 40))):
                if value_fd.message_type is None:
                    self._put(message, fd)
                elif depth < 3:
                    self.fill(field[self.scalar(key_fd)], depth + 1)
            return
        if fd.is_repeated:
            for _ in range(rng.choice((0, 1, 1, 2, 3, 30))):
                if fd.message_type is None:
                    self._put(message, fd)
                elif depth < 3:
                    self.fill(field.add(), depth + 1)
            return
        if fd.message_type is not None:
            if depth < 4:
                self.fill(field, depth + 1)
                field.SetInParent()
            return
        self._put(message, fd)

    def _put(self, owner: Any, fd: Any, edge: bool | None = None) -> None:
        """One value into ``owner``'s scalar field ``fd``: set, appended if it repeats, or
        a new entry of a map of scalars (``edge`` as for :meth:`scalar`)."""
        with contextlib.suppress(ValueError):  # a lone surrogate: protobuf refuses it
            if fd.message_type is not None:  # a map
                key_fd, value_fd = _entry(fd)
                key = self.scalar(key_fd, edge)
                getattr(owner, fd.name)[key] = self.scalar(value_fd, edge)
            elif fd.is_repeated:
                getattr(owner, fd.name).append(self.scalar(fd, edge))
            else:
                setattr(owner, fd.name, self.scalar(fd, edge))

    def scalar(self, fd: Any, edge: bool | None = None) -> Any:
        """A value for a scalar field: realistic, or (``edge`` of the time) an edge value."""
        rng = self.rng
        if edge is None:
            edge = rng.random() < self.edge
        kind = fd.type
        if kind == FD.TYPE_STRING:
            if edge:
                return rng.choice(EDGE_STRINGS)
            if fd.name in REALISTIC:
                return rng.choice(REALISTIC[fd.name])
            if fd.name == "idempotency_key":
                return rng.choice((uuid.uuid4().hex, "same-key"))
            if (fd.name.endswith("id") or fd.name == "depends_on") and self.ids:
                return rng.choice(self.ids)
            return rng.choice(("x", "m", "bye"))
        if kind == FD.TYPE_BYTES:
            return rng.choice(EDGE_BYTES) if edge else rng.choice((b'{"i": 1}', b"1", b"[]"))
        if kind == FD.TYPE_BOOL:
            return rng.random() < 0.5
        if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return rng.choice(EDGE_DOUBLES) if edge else rng.choice((0.5, 1.0, 10.0, 100.0))
        if kind == FD.TYPE_ENUM:
            numbers = [v.number for v in fd.enum_type.values]
            return rng.choice((99, -1, 2**31 - 1)) if edge else rng.choice(numbers)
        if edge:
            return rng.choice(_edge_ints(kind))
        return rng.choice((1, 2, 3, 10, 100))

    def _time(self, message: Any, timestamp: bool, edge: bool | None = None) -> None:
        rng = self.rng
        if edge or (edge is None and rng.random() < self.edge):
            message.seconds = rng.choice(EDGE_SECONDS)
            message.nanos = rng.choice(EDGE_NANOS)
        elif timestamp:
            message.seconds = int(time.time()) + rng.choice((-100, 0, 2, 60))
        else:
            message.seconds = rng.choice((1, 2, 60))
            message.nanos = rng.choice((0, 500_000_000))


def _entry(map_fd: Any) -> tuple[Any, Any]:
    """The key and value fields of a map field's entries."""
    fields = map_fd.message_type.fields_by_name
    return fields["key"], fields["value"]


def _spots(message: Any, depth: int) -> Iterator[tuple[Any, Any]]:
    """Where an edge value can go in ``message``: (message, scalar, repeated scalar or map
    field) pairs, in it and in the sub-messages set in it; (Timestamp or Duration, None)
    for each of those, set or not."""
    if message.DESCRIPTOR.full_name in TIME_TYPES:
        yield message, None
        return
    for fd in message.DESCRIPTOR.fields:
        sub = fd.message_type
        if sub is None or sub.GetOptions().map_entry:
            yield message, fd
        elif fd.is_repeated:
            if depth < 4:
                for item in getattr(message, fd.name):
                    yield from _spots(item, depth + 1)
        elif sub.full_name in TIME_TYPES or (depth < 4 and message.HasField(fd.name)):
            yield from _spots(getattr(message, fd.name), depth + 1)


def _edge_ints(kind: int) -> Sequence[int]:
    """The edge integers a field of ``kind`` can hold."""
    if kind in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return [v for v in EDGE_INTS if -(2**31) <= v < 2**31]
    if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return [v for v in EDGE_UINTS if v < 2**32]
    if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return EDGE_UINTS
    return EDGE_INTS


def call(channel: grpc.Channel, rpc: Rpc, messages: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """Send ``messages`` (one unless the RPC streams requests); the status it ended with."""
    try:
        if not rpc.client_streaming and not rpc.server_streaming:
            channel.unary_unary(rpc.path, None, None)(messages[0], timeout=10)
        elif not rpc.client_streaming:
            # The first answer shows the call was taken (a watch's current state, a
            # submit's acknowledgement); the rest would follow a task no node runs.
            answers: Any = channel.unary_stream(rpc.path, None, None)(
                messages[0], timeout=STREAM_DEADLINE_S
            )
            next(answers, None)
            answers.cancel()
        else:
            stream = channel.stream_stream(rpc.path, None, None)(iter(messages), timeout=10)
            for _ in stream:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@dataclass
class FuzzTally:
    """What :func:`fuzz_rpcs` saw: statuses by name, and the calls that ended badly."""

    statuses: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def fuzz_rpcs(
    channel: grpc.Channel, gen: MessageGen, rpcs: Sequence[Rpc], calls: int, senders: int = 8
) -> FuzzTally:
    """``calls`` calls of each of ``rpcs`` (requests from ``gen``), ``senders`` at a time;
    a problem is a call ending in one of :data:`BAD_CODES` or with a traceback."""
    tally = FuzzTally()
    lock = threading.Lock()
    with ThreadPoolExecutor(senders) as pool:
        for rpc in rpcs:
            batches = [gen.requests(rpc) for _ in range(calls)]

            def send(requests: list[Message], rpc: Rpc = rpc) -> None:
                code, details = call(channel, rpc, [r.SerializeToString() for r in requests])
                with lock:
                    tally.statuses[code.name] += 1
                    if ended_badly(code, details):
                        tally.problems.append(f"{rpc.path}: {code.name} {details} for {requests}")

            list(pool.map(send, batches))
    return tally
