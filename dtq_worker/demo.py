"""Demo handlers for ``make run`` and the README: ``dtq-worker dtq_worker.demo``."""

from __future__ import annotations

from typing import Any

from dtq_worker.context import TaskContext
from dtq_worker.errors import TaskCancelled
from dtq_worker.registry import Registry

registry = Registry()


@registry.task("echo")
def echo(payload: Any, ctx: TaskContext) -> Any:
    """Return the payload unchanged."""
    return payload


@registry.task("sleep")
def sleep(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sleep ``payload["seconds"]``, waking at once if the task is cancelled."""
    seconds = float(payload["seconds"])
    if ctx.cancel_event.wait(seconds):
        raise TaskCancelled(f"cancelled while sleeping {seconds} s")
    return {"slept": seconds}


@registry.task("fail")
def fail(payload: dict[str, Any] | None, ctx: TaskContext) -> None:
    """Always fail (retryably) with ``payload["message"]``."""
    raise ValueError((payload or {}).get("message", "demo failure"))


@registry.task("add")
def add(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Return ``payload["a"] + payload["b"]``."""
    return payload["a"] + payload["b"]
