"""The registry of task handlers a node runs, and loading it from ``MODULE[:ATTR]``.

There is no hidden global registry: user code creates one and the node is
given it explicitly::

    registry = Registry()

    @registry.task("email.send")
    def send(payload: dict, ctx: TaskContext) -> dict: ...
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from dtq_worker.context import TaskContext
from dtq_worker.errors import (
    ConfigError,
    DuplicateTaskType,
    HandlerNotFound,
    InvalidTaskType,
    RegistryLoadError,
)
from dtq_worker.lifespan import LifespanFactory, check_factory

Handler = Callable[[Any, TaskContext], Any]
"""A task handler: ``(payload, ctx) -> result``, or an ``async def`` one (see
:mod:`dtq_worker.coroutines`)."""
Middleware = Callable[[Callable[[Any, TaskContext], Any], Any, TaskContext], Any]
"""``(call_next, payload, ctx) -> result``: runs around every handler (see
:meth:`Registry.middleware`)."""

H = TypeVar("H", bound=Handler)
L = TypeVar("L", bound=LifespanFactory)
M = TypeVar("M", bound=Middleware)

_TASK_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
DEFAULT_ATTR = "registry"
"""The attribute ``MODULE`` alone refers to."""


def validate_task_type(name: str) -> str:
    """Return ``name`` if the coordinator accepts it as a task type, else raise."""
    if not isinstance(name, str) or not _TASK_TYPE.fullmatch(name):
        raise InvalidTaskType(f"task type {name!r} is not 1-200 characters of [A-Za-z0-9_.:-]")
    return name


class Registry:
    """Task handlers by task type, the middleware around them, and the lifespan of what
    they share."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.lifespan_factory: LifespanFactory | None = None
        """Set by :meth:`lifespan`."""
        self.middleware_chain: tuple[Middleware, ...] = ()
        """Added by :meth:`middleware`, outermost first."""

    def middleware(self, function: M) -> M:
        """Decorator: run ``function(call_next, payload, ctx)`` around every handler.

        ``call_next(payload, ctx)`` runs the rest of the chain and the handler
        (an ``async def`` one to its end) and returns its result or raises its
        exception, so a middleware can time, log, report or translate them, or
        return without calling it. It runs on the worker thread, in the process
        that runs the handler. The first one added is the outermost.
        """
        if inspect.iscoroutinefunction(function):
            raise TypeError(
                "a middleware must be a plain function: it runs on the worker thread, and "
                "call_next runs an async handler to its end"
            )
        if not callable(function):
            raise TypeError(f"a middleware must be callable, not {type(function).__name__}")
        self.middleware_chain = (*self.middleware_chain, function)
        return function

    def around(
        self, innermost: Callable[[Any, TaskContext], Any]
    ) -> Callable[[Any, TaskContext], Any]:
        """``innermost`` (the call of a handler) inside every middleware."""
        call = innermost
        for function in reversed(self.middleware_chain):
            call = functools.partial(function, call)
        return call

    def lifespan(self, factory: L) -> L:
        """Decorator: ``factory`` sets up what the handlers share and tears it down.

        A generator function that yields once (or a callable returning a context
        manager); handlers see what it yields as ``ctx.resources``. It runs once
        in each process that runs handlers: see :mod:`dtq_worker.lifespan`.
        """
        check_factory(factory)
        if self.lifespan_factory is not None:
            raise ConfigError(
                f"the registry already has a lifespan ({_describe(self.lifespan_factory)}); "
                "set up everything the handlers share in that one"
            )
        self.lifespan_factory = factory
        return factory

    def task(self, name: str) -> Callable[[H], H]:
        """Decorator: register the function as the handler of task type ``name``."""
        validate_task_type(name)

        def register(handler: H) -> H:
            self.register(name, handler)
            return handler

        return register

    def register(self, name: str, handler: Handler) -> None:
        """Register ``handler`` for task type ``name``; a name can be registered once."""
        validate_task_type(name)
        if not callable(handler):
            raise TypeError(f"handler for {name!r} is not callable")
        existing = self._handlers.get(name)
        if existing is not None:
            raise DuplicateTaskType(
                f"task type {name!r} is already registered to {_describe(existing)}"
            )
        self._handlers[name] = handler

    def lookup(self, name: str) -> Handler:
        """The handler of task type ``name``; :class:`HandlerNotFound` if none."""
        try:
            return self._handlers[name]
        except KeyError:
            raise HandlerNotFound(name) from None

    @property
    def task_types(self) -> tuple[str, ...]:
        """Every registered task type, sorted."""
        return tuple(sorted(self._handlers))

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"Registry({', '.join(self.task_types)})"


def _describe(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", "?")
    name = getattr(handler, "__qualname__", repr(handler))
    return f"{module}.{name}"


def load_registry(target: str) -> Registry:
    """Import ``MODULE[:ATTR]`` (``ATTR`` defaults to ``registry``) and return that Registry.

    Raises :class:`RegistryLoadError` if the module cannot be imported, has no
    such attribute, the attribute is not a :class:`Registry`, or it is empty.
    """
    module_name, _, attr = target.partition(":")
    attr = attr or DEFAULT_ATTR
    if not module_name:
        raise RegistryLoadError(f"{target!r} names no module; expected MODULE[:ATTR]")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise RegistryLoadError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        registry = getattr(module, attr)
    except AttributeError:
        raise RegistryLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(registry, Registry):
        raise RegistryLoadError(
            f"{module_name}:{attr} is a {type(registry).__name__}, not a dtq_worker.Registry"
        )
    if not registry:
        raise RegistryLoadError(f"{module_name}:{attr} has no tasks registered")
    return registry
