"""Lease history from the coordinator's event log: which leases a fault cut, and how fast
their tasks were leased again.

A lease is ``(task_id, attempt)``. It opens with ``lease.granted`` and closes
with ``lease.ended`` (a result, failure or release was applied) or
``lease.lost`` / ``lease.returned`` (its session ended). A fault at time ``t``
*interrupts* every lease that was open at ``t`` on a node the fault cut off (all
nodes for a coordinator crash): each such lease may cost at most one duplicate
execution, so their number bounds the duplicates (RELIABILITY.md L2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.chaos.cluster import Fault

Key = tuple[str, int]


@dataclass(frozen=True)
class Span:
    """One lease's life on the coordinator's monotonic clock."""

    task_id: str
    attempt: int
    node_id: str
    granted: float
    ended: float = math.inf
    state: str = ""
    """The task state the end of the lease led to (SUCCEEDED, QUEUED, ...)."""


def spans(events: Iterable[dict[str, Any]]) -> dict[Key, Span]:
    """Every lease seen in ``events`` (lease.* events from :mod:`tests.chaos.evidence`)."""
    opened: dict[Key, Span] = {}
    for event in events:
        key = (str(event.get("task_id")), int(event.get("attempt", 0)))
        kind = event.get("event")
        if kind == "lease.granted":
            opened[key] = Span(key[0], key[1], event["node_id"], float(event["mono"]))
        elif kind in ("lease.ended", "lease.lost", "lease.returned") and key in opened:
            span = opened[key]
            if span.ended == math.inf:
                opened[key] = Span(
                    span.task_id,
                    span.attempt,
                    span.node_id,
                    span.granted,
                    float(event["mono"]),
                    event.get("state", ""),
                )
    return opened


def interrupted(history: dict[Key, Span], fault: Fault) -> list[Span]:
    """Leases open when ``fault`` struck, on the nodes it cut off."""
    return [
        s
        for s in history.values()
        if s.granted <= fault.at < s.ended and (fault.nodes is None or s.node_id in fault.nodes)
    ]


def redelivery_s(history: dict[Key, Span], fault: Fault, cut: Iterable[Span]) -> float | None:
    """Worst time from ``fault`` to the grant of the next attempt of a cut lease's task.

    Leases that survived the fault (the node resumed them and reported) are not
    redelivered and do not count; a cut lease whose task was never leased again
    and did not finish counts as infinitely late. None if nothing was redelivered.
    """
    worst: float | None = None
    for span in cut:
        nxt = history.get((span.task_id, span.attempt + 1))
        if nxt is None:
            if span.state in ("SUCCEEDED", "FAILED", "CANCELLED") or span.ended == math.inf:
                continue  # survived the fault, or still running at the end (checked by I1)
            return math.inf
        delay = nxt.granted - fault.at
        worst = delay if worst is None else max(worst, delay)
    return worst


def duplicate_bound(history: dict[Key, Span], faults: Iterable[Fault]) -> int:
    """Sum over faults of the leases each interrupted (RELIABILITY.md L2's bound)."""
    total = 0
    for fault in faults:
        cut = len(interrupted(history, fault))
        # A coordinator killed between a lease's commit and its log line took the line
        # with it: the snapshot of the store knows better.
        total += max(cut, fault.in_flight)
    return total
