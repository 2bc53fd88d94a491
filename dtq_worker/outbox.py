"""Terminal updates the coordinator has not acknowledged yet.

An outcome (succeeded, failed, released) stays here from the moment it is
produced until its ``TaskUpdateAck`` arrives, and is sent again on every new
stream; the coordinator applies a result for a lease at most once, so resending
is always safe.
"""

from __future__ import annotations

from dtq_worker.models import Lease, Update


class Outbox:
    """Unacknowledged terminal updates by lease, in the order they were produced."""

    def __init__(self) -> None:
        self._entries: dict[Lease, Update] = {}

    def add(self, update: Update) -> None:
        """Keep a terminal update until it is acknowledged."""
        if not update.terminal:
            raise ValueError("only terminal updates are acknowledged")
        self._entries[update.lease] = update

    def ack(self, lease: Lease) -> Update | None:
        """The coordinator answered (accepted or not): forget the update and return it."""
        return self._entries.pop(lease, None)

    def discard(self, lease: Lease) -> None:
        """Forget the update of a lease that is no longer ours."""
        self._entries.pop(lease, None)

    def entries(self) -> list[Update]:
        """Every unacknowledged update, oldest first: what a new stream resends."""
        return list(self._entries.values())

    def clear(self) -> None:
        """Forget everything (the session, and with it every lease, is gone)."""
        self._entries.clear()

    def __contains__(self, lease: object) -> bool:
        return lease in self._entries

    def __len__(self) -> int:
        return len(self._entries)
