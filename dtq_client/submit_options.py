"""The keyword arguments of a one-task submit, and the :class:`TaskSpec` they make.

``Client.submit``, ``AsyncClient.submit`` and both submitters' ``submit`` take the same
keywords (a :class:`TaskSpec`'s fields, in the forms a caller has at hand: any
iterable of ids, a policy's name, no headers as None). They are declared once
here, as :class:`SubmitOptions` (``**options: Unpack[SubmitOptions]``, PEP 692:
type checkers and editors still see every keyword and its type), and turned into
a spec once, by :func:`spec_of`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TypedDict

from dtq_client.models import DependencyFailure, TaskSpec


class SubmitOptions(TypedDict, total=False):
    """What a one-task submit takes besides the type and payload; see :class:`TaskSpec`."""

    queue: str | None
    max_attempts: int | None
    idempotency_key: str | None
    content_type: str | None
    retry_backoff_s: float | None
    priority: int
    run_at: datetime | None
    delay_s: float | None
    execution_timeout_s: float | None
    schedule_to_start_timeout_s: float | None
    result_ttl_s: float | None
    rate_key: str | None
    depends_on: Iterable[str]
    on_dependency_failure: DependencyFailure | str | None
    headers: Mapping[str, str] | None


_KNOWN = SubmitOptions.__optional_keys__


class Keys:
    """Idempotency keys for specs without one, so that a retried submit never creates a
    second task: a random prefix and a counter, in order.

    As unique as a UUID per key (the prefix is one), at a tenth of the cost of
    ``uuid4()`` per submit; ``next()`` on a count is atomic, so threads share it.
    In order because the coordinator keeps every key in a unique index: keys that
    follow each other land on the same few pages of it, where random ones touch
    pages all over it and each commit writes every page it touched (a batch
    submit keyed with ``uuid4()`` cost the coordinator 50-67 µs a task once it
    kept 300,000 tasks, against a flat 26 with these).
    """

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._count):012x}"


def spec_of(
    type: str, payload: object, options: SubmitOptions, new_key: Callable[[], str]
) -> TaskSpec:
    """The spec of ``submit(type, payload, **options)``; ``new_key()`` when it has no key.

    TypeError for a keyword submit does not take, as a misspelt keyword
    argument of a plain signature would raise: a typo must not be dropped silently.
    """
    if not options:  # the common call, submit(type, payload): nothing to convert
        return TaskSpec(type, payload, idempotency_key=new_key())
    if not _KNOWN.issuperset(options):
        unknown = sorted(set(options) - _KNOWN)
        raise TypeError(f"submit() got unexpected keyword arguments: {', '.join(unknown)}")
    depends_on = options.get("depends_on", ())
    if isinstance(depends_on, str):
        raise TypeError("depends_on must be a collection of task ids, not one string")
    policy = options.get("on_dependency_failure")
    return TaskSpec(
        type=type,
        payload=payload,
        content_type=options.get("content_type"),
        queue=options.get("queue"),
        max_attempts=options.get("max_attempts"),
        idempotency_key=options.get("idempotency_key") or new_key(),
        retry_backoff_s=options.get("retry_backoff_s"),
        priority=options.get("priority", 0),
        run_at=options.get("run_at"),
        delay_s=options.get("delay_s"),
        execution_timeout_s=options.get("execution_timeout_s"),
        schedule_to_start_timeout_s=options.get("schedule_to_start_timeout_s"),
        result_ttl_s=options.get("result_ttl_s"),
        rate_key=options.get("rate_key"),
        depends_on=tuple(depends_on),
        on_dependency_failure=None if policy is None else DependencyFailure(policy),
        headers=options.get("headers") or {},
    )
