"""Crash points for fault-injection tests.

``DTQ_FAILPOINT=submit.after_commit_before_reply`` (comma-separated names)
makes the coordinator ``os._exit(137)`` - as abrupt as ``kill -9`` - the first
time it reaches that point. Without the variable every ``hit`` is a single set
lookup on an empty set. The names:

- ``submit.before_commit`` / ``submit.after_commit_before_reply``
- ``lease.after_commit_before_send``
- ``result.before_commit`` / ``result.after_commit_before_reply``
"""

from __future__ import annotations

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


class Failpoints:
    """The crash points enabled for this process."""

    def __init__(self, enabled: frozenset[str] = frozenset()) -> None:
        unknown = enabled - NAMES
        if unknown:
            raise ValueError(f"unknown failpoints: {', '.join(sorted(unknown))}")
        self._enabled = enabled

    @classmethod
    def parse(cls, spec: str) -> Failpoints:
        """From the ``DTQ_FAILPOINT`` syntax: comma-separated names."""
        return cls(frozenset(name.strip() for name in spec.split(",") if name.strip()))

    def hit(self, name: str) -> None:
        """Crash here if ``name`` is enabled."""
        if name in self._enabled:
            sys.stderr.write(f"dtq-server: failpoint {name} reached, exiting 137\n")
            sys.stderr.flush()
            os._exit(137)
