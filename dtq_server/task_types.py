"""Declared task types, and strict mode (``--strict-task-types``).

Every (queue, type) pair a node declares when it registers is remembered, in
memory and in the store, and kept: a type declared once stays known across
coordinator restarts and while its nodes are away (the types of a worker
that runs only at night are not unknown by day). By default a task whose
pair no node has declared is queued anyway and waits for one (or fails
``SCHEDULE_TO_START_TIMEOUT`` if it sets that timeout). In strict mode such a
submit, or a schedule with such a template, is refused with
FAILED_PRECONDITION (reason ``UNKNOWN_TASK_TYPE``) naming each spec: a typo
in a type name fails at once instead of queuing work nobody will run
(RELIABILITY.md B4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog

from dtq_server.board import Key
from dtq_server.errors import StoreUnavailable, UnknownTaskType
from dtq_server.store.base import Store

log = structlog.get_logger(__name__)
LOGGED_KEYS = 20
"""Declared pairs a log line names."""


class Typed(Protocol):
    """A spec, as far as its (queue, type) goes."""

    @property
    def queue(self) -> str: ...

    @property
    def type(self) -> str: ...


class DeclaredTypes:
    """The (queue, type) pairs nodes have declared; the strict-mode check."""

    def __init__(self, store: Store, strict: bool) -> None:
        self._store = store
        self.strict = strict
        self._known: set[Key] = set()
        self._saving: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Read what nodes declared before this coordinator started."""
        self._known |= await self._store.load_task_types()

    def declare(self, keys: Iterable[Key]) -> None:
        """A node registered serving ``keys``: known at once, stored in the background."""
        new = set(keys) - self._known
        if not new:
            return
        self._known |= new
        saving = asyncio.get_running_loop().create_task(self._save(new))
        self._saving.add(saving)
        saving.add_done_callback(self._saving.discard)

    async def flush(self) -> None:
        """Wait for the declarations being stored (shutdown, before the store closes)."""
        await asyncio.gather(*self._saving, return_exceptions=True)

    async def _save(self, keys: set[Key]) -> None:
        try:
            await self._store.declare_task_types(sorted(keys))
        except StoreUnavailable as exc:
            # Memory knows them; after a restart their nodes declare them again.
            log.warning("task_types.not_stored", count=len(keys), error=str(exc))
        else:
            named = sorted(f"{q}/{t}" for q, t in keys)
            # A node may declare up to 100,000 pairs: name a few, count them all.
            log.info("task_types.declared", count=len(named), keys=named[:LOGGED_KEYS])

    def check(self, specs: Sequence[Typed], field: Callable[[int], str]) -> None:
        """In strict mode, raise UnknownTaskType naming each spec whose pair is not
        declared (``field(i)``: the field path of spec ``i``, as validation names it)."""
        if not self.strict:
            return
        known = self._known
        unknown = [
            (f"{field(i)}.type", spec.queue, spec.type)
            for i, spec in enumerate(specs)
            if (spec.queue, spec.type) not in known
        ]
        if unknown:
            raise UnknownTaskType(unknown)

    def __contains__(self, key: Key) -> bool:
        return key in self._known
