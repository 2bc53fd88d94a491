"""Checks on everything a client or node sends, before anything is stored or allocated.

Each check names the field path in its violation so that callers in any
language can point at the bad field (``google.rpc.BadRequest``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping

import uuid_utils

from dtq.frozen import frozen
from dtq_server.config import ServerConfig
from dtq_server.errors import InvalidArgument, shown
from dtq_server.models import DependencyFailure, Headers, Lease, NewTask, Registration

TYPE_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
QUEUE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
NODE_ID_RE = re.compile(r"[A-Za-z0-9_.:@\-]{1,200}")
MAX_KEY_CHARS = 200
MAX_CONTENT_TYPE_CHARS = 128
MAX_BATCH = 10_000
MAX_ATTEMPTS_CAP = 100
MIN_BACKOFF_S = 0.001
MAX_BACKOFF_S = 86_400.0
MAX_TYPES_PER_NODE = 1_000
MAX_PAIRS_PER_NODE = 100_000
"""Most (queue, type) pairs a node serves (its types times its queues). The coordinator
keeps each pair in memory and in the store: a registration of 1,000 types on 1,000
queues took ~160 MiB and held every submit ~4 s while its pairs were stored, and the
largest a message can carry would have taken the coordinator past its memory."""
MAX_SLOTS = 10_000
MAX_LISTED_LEASES = 3 * MAX_SLOTS
"""Most leases a heartbeat or a resuming registration lists: a node holds at most its
slots and its prefetch (each at most MAX_SLOTS), and outcomes waiting for their acks.
Each listed lease costs the coordinator ~2.6 µs and comes back in the ack if it is not
the node's: 80,000 made-up leases took 209 ms of its CPU per heartbeat."""
MAX_PRIORITY = 1000
MAX_DEPENDENCIES = 100
MAX_HEADERS = 32
HEADER_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_HEADER_VALUE_CHARS = 2048
DAY_S = 86_400.0
MAX_SCHEDULE_AHEAD_S = 365 * DAY_S
DEFAULT_QUEUE = "default"
JSON = "application/json"
_DEPENDENCY_FAILURES = frozenset({0, *DependencyFailure})


@frozen
class SpecInput:
    """A TaskSpec as received, before validation (0 and "" mean unset)."""

    type: str
    queue: str
    payload: bytes
    content_type: str
    max_attempts: int
    idempotency_key: str
    retry_backoff_s: float | None
    priority: int = 0
    run_at: float | None = None
    delay_s: float | None = None
    execution_timeout_s: float | None = None
    schedule_to_start_s: float | None = None
    result_ttl_s: float | None = None
    rate_key: str = ""
    depends_on: tuple[str, ...] = ()
    on_dependency_failure: int = 0
    submitted_by: str | None = None
    """The name of the token that submitted it (None without tokens)."""
    headers: Headers = ()
    """Sorted by key (see :data:`~dtq_server.models.Headers`)."""


class Violations:
    """Collects every bad field of a request so one error names them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, why: str) -> None:
        self.items.append((field, why))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


@functools.lru_cache(maxsize=4096)
def _matches(pattern: re.Pattern[str], value: str) -> bool:
    # Types and queues repeat across thousands of submits: remember the verdicts.
    return pattern.fullmatch(value) is not None


def check_name(v: Violations, field: str, value: str, pattern: re.Pattern[str], what: str) -> None:
    """Record a violation unless ``value`` fully matches ``pattern``."""
    if not _matches(pattern, value):
        v.add(field, f"{what} {shown(value, 40)} must be {pattern.pattern}")


def validate_spec(
    spec: SpecInput, field: str, config: ServerConfig, v: Violations, now: float | None = None
) -> NewTask | None:
    """Validate one spec, recording violations under ``field``; None if it is bad."""
    before = len(v.items)
    now = time.time() if now is None else now
    # Field paths are only formatted for a violation: this runs once per submitted task.
    if not _matches(TYPE_RE, spec.type):
        check_name(v, f"{field}.type", spec.type, TYPE_RE, "type")
    queue = spec.queue or DEFAULT_QUEUE
    if not _matches(QUEUE_RE, queue):
        check_name(v, f"{field}.queue", queue, QUEUE_RE, "queue")
    if len(spec.payload) > config.max_payload_bytes:
        v.add(
            f"{field}.payload.data",
            f"payload is {len(spec.payload)} bytes; the limit is {config.max_payload_bytes}",
        )
    content_type = spec.content_type or JSON
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or not content_type.isprintable():
        v.add(f"{field}.payload.content_type", "must be printable, at most 128 characters")
    max_attempts = spec.max_attempts or config.default_max_attempts
    if not 1 <= max_attempts <= MAX_ATTEMPTS_CAP:
        v.add(f"{field}.max_attempts", f"must be 1-{MAX_ATTEMPTS_CAP}, got {max_attempts}")
    if len(spec.idempotency_key) > MAX_KEY_CHARS:
        v.add(f"{field}.idempotency_key", f"at most {MAX_KEY_CHARS} characters")
    elif "\x00" in spec.idempotency_key:  # PostgreSQL's text cannot hold it
        v.add(f"{field}.idempotency_key", "must not contain NUL characters")
    backoff = spec.retry_backoff_s
    if backoff is not None and not MIN_BACKOFF_S <= backoff <= MAX_BACKOFF_S:
        v.add(f"{field}.retry_backoff", "must be between 1 ms and 1 day")
    if len(spec.rate_key) > MAX_KEY_CHARS or not spec.rate_key.isprintable():
        v.add(f"{field}.rate_key", f"must be printable, at most {MAX_KEY_CHARS} characters")
    depends_on = _check_dependencies(spec, field, v)
    if spec.headers:
        _check_headers(spec.headers, f"{field}.headers", v)
    if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
        v.add(f"{field}.priority", f"must be {-MAX_PRIORITY} to {MAX_PRIORITY}")
    run_at = _check_schedule(spec, field, now, v)
    for name, value, low, high in (
        ("execution_timeout", spec.execution_timeout_s, 0.001, 7 * DAY_S),
        ("schedule_to_start_timeout", spec.schedule_to_start_s, 0.001, 365 * DAY_S),
        ("result_ttl", spec.result_ttl_s, 1.0, 3650 * DAY_S),
    ):
        if value is not None and not low <= value <= high:
            v.add(f"{field}.{name}", f"must be between {low:g} s and {high / DAY_S:g} days")
    if len(v.items) > before:
        return None
    digest = hashlib.blake2b(digest_size=16)
    parts = (
        spec.type,
        queue,
        content_type,
        str(max_attempts),
        repr(backoff),
        str(spec.priority),
        repr(spec.execution_timeout_s),
        repr(spec.schedule_to_start_s),
        repr(spec.result_ttl_s),
        spec.rate_key,
        ",".join(depends_on),
        str(spec.on_dependency_failure),
        "",  # every part ends with a NUL, as stored digests were made
    )
    digest.update("\0".join(parts).encode())
    digest.update(spec.payload)
    if spec.submitted_by is not None:
        # Another identity's identical spec under the same key is a clash, not a retry:
        # it would answer with a task that identity may not see.
        digest.update(b"\0submitted_by\0" + spec.submitted_by.encode())
    return NewTask(
        # Time-ordered (UUIDv7): each new id lands at the end of the tasks.id index
        # instead of at a random page. With random ids (uuid4) an insert cost grew
        # from 17 to 50 us per row as the table grew to 80,000 rows; with these it
        # stays at 15 (see the commit adding it).
        id=str(uuid_utils.uuid7()),
        type=spec.type,
        queue=queue,
        payload=spec.payload,
        content_type=content_type,
        max_attempts=max_attempts,
        idempotency_key=spec.idempotency_key or None,
        retry_backoff_s=backoff,
        spec_hash=digest.digest(),
        priority=spec.priority,
        run_at=run_at,
        execution_timeout_s=spec.execution_timeout_s,
        schedule_to_start_s=spec.schedule_to_start_s,
        result_ttl_s=spec.result_ttl_s,
        rate_key=spec.rate_key,
        depends_on=depends_on,
        on_dependency_failure=DependencyFailure(spec.on_dependency_failure or 1),
        submitted_by=spec.submitted_by,
        headers=spec.headers,
    )


def header_filter(headers: Mapping[str, str]) -> Headers:
    """A ListTasks ``headers`` filter, sorted, checked as a spec's headers are."""
    pairs = tuple(sorted(headers.items()))
    v = Violations()
    _check_headers(pairs, "headers", v)
    v.raise_if_any()
    return pairs


def _check_headers(headers: Headers, field: str, v: Violations) -> None:
    """Violations of ``headers`` (the field path ``field``, e.g. ``task.headers``)."""
    if len(headers) > MAX_HEADERS:
        v.add(field, f"at most {MAX_HEADERS} headers, got {len(headers)}")
        return
    for key, value in headers:
        path = f"{field}[{json.dumps(key)}]"
        if not _matches(HEADER_KEY_RE, key):
            check_name(v, path, key, HEADER_KEY_RE, "header key")
        elif len(value) > MAX_HEADER_VALUE_CHARS or not value.isprintable():
            v.add(path, f"value must be printable, at most {MAX_HEADER_VALUE_CHARS} characters")


def _check_dependencies(spec: SpecInput, field: str, v: Violations) -> tuple[str, ...]:
    """Normalised, de-duplicated dependency ids (violations recorded)."""
    if spec.on_dependency_failure not in _DEPENDENCY_FAILURES:
        v.add(f"{field}.on_dependency_failure", "unknown value")
    if not spec.depends_on:
        return ()
    if len(spec.depends_on) > MAX_DEPENDENCIES:
        v.add(f"{field}.depends_on", f"at most {MAX_DEPENDENCIES} dependencies")
        return ()
    ids: list[str] = []
    for i, task_id in enumerate(spec.depends_on):
        try:
            normalised = validate_task_id(task_id, f"{field}.depends_on[{i}]")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
            continue
        if normalised not in ids:
            ids.append(normalised)
    return tuple(ids)


def _check_schedule(spec: SpecInput, field: str, now: float, v: Violations) -> float | None:
    """The wall time a scheduled task becomes due (None: at once)."""
    if spec.run_at is not None and spec.delay_s is not None:
        v.add(f"{field}.run_at", "set run_at or delay, not both")
        return None
    if spec.delay_s is not None:
        if not 0 <= spec.delay_s <= MAX_SCHEDULE_AHEAD_S:
            v.add(f"{field}.delay", "must be between 0 and 365 days")
            return None
        return now + spec.delay_s if spec.delay_s > 0 else None
    if spec.run_at is not None:
        if math.isnan(spec.run_at):  # what conversion makes of a Timestamp out of its rules
            v.add(
                f"{field}.run_at",
                "must be a valid Timestamp: seconds from 0001-01-01 to 9999-12-31 (UTC), "
                "nanos 0 to 999,999,999",
            )
            return None
        if spec.run_at > now + MAX_SCHEDULE_AHEAD_S:
            v.add(f"{field}.run_at", "must be at most a year ahead")
            return None
        return spec.run_at if spec.run_at > now else None
    return None


def spec_field(index: int, batch: bool) -> str:
    """The field path of a submission's spec ``index``: ``tasks[i]`` in a batch, else ``task``."""
    return f"tasks[{index}]" if batch else "task"


def validate_specs(specs: list[SpecInput], config: ServerConfig, batch: bool) -> list[NewTask]:
    """Validate a submission (one spec, or a batch); raise InvalidArgument naming all bad fields."""
    v = Violations()
    if batch and not 1 <= len(specs) <= MAX_BATCH:
        v.add("tasks", f"must hold 1-{MAX_BATCH} tasks, got {len(specs)}")
        v.raise_if_any()
    tasks: list[NewTask] = []
    keys: dict[str, int] = {}
    for i, spec in enumerate(specs):
        field = spec_field(i, batch)
        task = validate_spec(spec, field, config, v)
        if task is None:
            continue
        key = task.idempotency_key
        if key is not None and key in keys:
            v.add(f"{field}.idempotency_key", f"repeats tasks[{keys[key]}] in the same batch")
        elif key is not None:
            keys[key] = i
        tasks.append(task)
    v.raise_if_any()
    return tasks


def validate_task_id(task_id: str, field: str = "task_id") -> str:
    """A task id must look like a UUID, so lookups never scan on garbage."""
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise InvalidArgument([(field, f"{shown(task_id, 40)} is not a task id")]) from None


def validate_registration(reg: Registration) -> Registration:
    """Check a node's RegisterNode; fill the default queue."""
    v = Violations()
    check_name(v, "register.node_id", reg.node_id, NODE_ID_RE, "node id")
    if not 1 <= reg.slots <= MAX_SLOTS:
        v.add("register.slots", f"must be 1-{MAX_SLOTS}, got {reg.slots}")
    if not 0 <= reg.prefetch <= MAX_SLOTS:
        v.add("register.prefetch", f"must be 0-{MAX_SLOTS}, got {reg.prefetch}")
    if not 1 <= len(reg.task_types) <= MAX_TYPES_PER_NODE:
        v.add("register.task_types", f"must name 1-{MAX_TYPES_PER_NODE} task types")
    for name in sorted(reg.task_types):
        check_name(v, "register.task_types", name, TYPE_RE, "type")
    # Queues alone are not bounded: a node may serve a queue per tenant, thousands of them.
    if len(reg.task_types) * len(reg.queues) > MAX_PAIRS_PER_NODE:
        v.add(
            "register.queues",
            f"{len(reg.task_types)} types on {len(reg.queues)} queues make "
            f"{len(reg.task_types) * len(reg.queues):,} (queue, type) pairs; "
            f"a node serves at most {MAX_PAIRS_PER_NODE:,}",
        )
    for name in sorted(reg.queues):
        check_name(v, "register.queues", name, QUEUE_RE, "queue")
    if len(reg.leases) > MAX_LISTED_LEASES:
        v.add("register.leases", f"at most {MAX_LISTED_LEASES:,}, got {len(reg.leases):,}")
    if len(reg.hostname) > 255 or len(reg.version) > 100:
        v.add("register.hostname", "hostname at most 255 and version at most 100 characters")
    v.raise_if_any()
    queues = reg.queues or frozenset({DEFAULT_QUEUE})
    return Registration(
        node_id=reg.node_id,
        hostname=reg.hostname,
        pid=reg.pid,
        version=reg.version,
        task_types=reg.task_types,
        queues=queues,
        slots=reg.slots,
        resume_session_id=reg.resume_session_id,
        leases=reg.leases,
        prefetch=reg.prefetch,
    )


def check_listed_leases(count: int) -> None:
    """A heartbeat lists at most as many leases as a node can hold (InvalidArgument)."""
    if count > MAX_LISTED_LEASES:
        raise InvalidArgument(
            [("heartbeat.leases", f"at most {MAX_LISTED_LEASES:,}, got {count:,}")]
        )


def validate_prefetch(prefetch: int) -> int:
    """A prefetch a node reports in a heartbeat (the range RegisterNode allows)."""
    if not 0 <= prefetch <= MAX_SLOTS:
        raise InvalidArgument([("heartbeat.prefetch", f"must be 0-{MAX_SLOTS}, got {prefetch}")])
    return prefetch


def lease_is_wellformed(lease: Lease) -> bool:
    """A lease from a node: a plausible id and a positive attempt."""
    return 0 < len(lease.task_id) <= 64 and lease.attempt > 0
