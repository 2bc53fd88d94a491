"""Crash and pause points for fault-injection tests.

``DTQ_FAILPOINT=submit.after_commit_before_reply`` (comma-separated names)
makes the coordinator ``os._exit(137)`` - as abrupt as ``kill -9`` - the first
time it reaches that point. ``NAME:sleep=SECONDS`` pauses there instead, once,
the way a slow disk or a descheduled process would (RELIABILITY C5: a handler
slower than its client's deadline); only the submit points can pause. Without
the variable every ``hit`` is a single set lookup on an empty set. The names:

- ``submit.before_commit`` / ``submit.after_commit_before_reply``
- ``lease.after_commit_before_send``
- ``result.before_commit`` / ``result.after_commit_before_reply``
"""

from __future__ import annotations

import asyncio
import os
import sys

NAMES = frozenset(
    {
        "submit.before_commit",
        "submit.after_commit_before_reply",
        "lease.after_commit_before_send",
        "result.before_commit",
        "result.after_commit_before_reply",
    }
)
PAUSABLE = frozenset({"submit.before_commit", "submit.after_commit_before_reply"})
"""The points whose code awaits :meth:`Failpoints.pause` (a pause anywhere else would
silently do nothing, so it is refused)."""


class Failpoints:
    """The crash and pause points enabled for this process."""

    def __init__(
        self, enabled: frozenset[str] = frozenset(), pauses: dict[str, float] | None = None
    ) -> None:
        pauses = dict(pauses or {})
        unknown = (enabled | pauses.keys()) - NAMES
        if unknown:
            raise ValueError(f"unknown failpoints: {', '.join(sorted(unknown))}")
        if pauses.keys() - PAUSABLE:
            raise ValueError(f"only {', '.join(sorted(PAUSABLE))} can pause")
        self._enabled = enabled
        self._pauses = pauses

    @classmethod
    def parse(cls, spec: str) -> Failpoints:
        """From the ``DTQ_FAILPOINT`` syntax: comma-separated ``NAME`` or ``NAME:sleep=S``."""
        crashes: set[str] = set()
        pauses: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition(":")
            if not action:
                crashes.add(name)
                continue
            key, _, seconds = action.partition("=")
            try:
                pause_s = float(seconds) if key == "sleep" else -1.0
            except ValueError:
                pause_s = -1.0
            if not 0 <= pause_s < float("inf"):
                raise ValueError(f"failpoint {item!r}: the action must be sleep=SECONDS")
            pauses[name] = pause_s
        return cls(frozenset(crashes), pauses)

    def hit(self, name: str) -> None:
        """Crash here if ``name`` is enabled."""
        if name in self._enabled:
            _say(f"failpoint {name} reached, exiting 137")
            os._exit(137)

    async def pause(self, name: str) -> None:
        """Sleep here, the first time only, if ``name`` pauses; a cancellation ends it early."""
        seconds = self._pauses.pop(name, None)
        if seconds is None:
            return
        _say(f"failpoint {name} pausing {seconds:g} s")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            _say(f"failpoint {name} pause cancelled")
            raise
        _say(f"failpoint {name} pause over")


def _say(line: str) -> None:
    """One line on stderr at once (tests read the log while the coordinator runs)."""
    sys.stderr.write(f"dtq-server: {line}\n")
    sys.stderr.flush()
