"""A registry's lifespan: what its handlers share, set up once per process that runs them.

Handlers often need something costly to make and safe to share: a database
pool, an HTTP session, a loaded model. A module-level global made at import
time cannot be closed at shutdown, and under ``--isolation process`` it would
be made in the node process, which runs no handler. So a registry may have one
lifespan, a generator function (or any callable returning a context manager)::

    @registry.lifespan
    def resources() -> Iterator[Resources]:
        pool = create_pool()
        try:
            yield Resources(db=pool)  # handlers see this as ctx.resources
        finally:
            pool.close()

It runs where the handlers run: in the node process before the node connects
(thread isolation), or in each handler process before its first task (process
isolation). Its teardown runs when that process is done with its handlers.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from dtq_worker.errors import LifespanFailed

log = structlog.get_logger(__name__)

LifespanFactory = Callable[[], Any]
"""A generator function that yields once, or a callable returning a context manager."""

MAX_TRACEBACK_CHARS = 4000
"""How much of a failed setup's traceback a handler process sends its node."""


def check_factory(factory: object) -> LifespanFactory:
    """Return ``factory`` if it can be a lifespan; raise ``TypeError`` otherwise."""
    if inspect.isasyncgenfunction(factory) or inspect.iscoroutinefunction(factory):
        # Async resources belong to one event loop, and every worker thread runs its own.
        raise TypeError(
            "a lifespan must be a plain (not async) generator function: async handlers run "
            "on one event loop per worker thread, so an async resource could not be shared; "
            "make async clients inside the handler, or per thread"
        )
    if not callable(factory):
        raise TypeError(f"a lifespan must be callable, not {type(factory).__name__}")
    return factory


class Lifespan:
    """One process's use of a lifespan: :meth:`start` once, then :meth:`stop` once."""

    def __init__(self, factory: LifespanFactory) -> None:
        self._factory = factory
        self._manager: contextlib.AbstractContextManager[Any] | None = None

    def start(self) -> Any:
        """Run the setup and return what it yields; :class:`LifespanFailed` if it raises."""
        try:
            manager = _manager(self._factory)
            resources = manager.__enter__()
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK_CHARS:]
            raise LifespanFailed(
                f"the registry's lifespan failed to set up: {type(exc).__name__}: {exc}", text
            ) from exc
        self._manager = manager
        return resources

    def stop(self) -> bool:
        """Run the teardown (once, if the setup ran); False if it raised (logged)."""
        manager, self._manager = self._manager, None
        if manager is None:
            return True
        try:
            manager.__exit__(None, None, None)
        except Exception:
            log.exception("lifespan.teardown_failed")
            return False
        return True


def _manager(factory: LifespanFactory) -> contextlib.AbstractContextManager[Any]:
    if inspect.isgeneratorfunction(factory):
        return contextlib.contextmanager(factory)()
    manager = factory()
    if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
        raise TypeError(
            f"the lifespan returned a {type(manager).__name__}, not a context manager "
            "(write it as a generator function that yields once)"
        )
    return manager  # type: ignore[no-any-return]
