"""Handlers the end-to-end tests run in real ``dtq-worker`` processes.

``witness`` appends one line per execution (task id, attempt, node id, pid,
monotonic time) to the file named by ``DTQ_TEST_WITNESS``: opened O_APPEND,
one ``write()`` per line, then fsync, so lines from concurrent nodes never mix
and survive a SIGKILL of the node right after.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from dtq_worker import Registry, RetryAfter, TaskContext

registry = Registry()


def _witness(ctx: TaskContext, event: str = "run") -> None:
    path = os.environ.get("DTQ_TEST_WITNESS")
    if not path:
        return
    line = json.dumps(
        {
            "task_id": ctx.task_id,
            "attempt": ctx.attempt,
            "node_id": os.environ.get("DTQ_NODE_ID", ""),
            "pid": os.getpid(),
            "ts": time.monotonic(),
            "wall": time.time(),
            "event": event,
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@registry.task("echo")
def echo(payload: Any, ctx: TaskContext) -> Any:
    """Returns its payload."""
    return payload


@registry.task("witness")
def witness(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Records the execution, optionally sleeps ``payload["sleep"]`` s, returns the node id."""
    _witness(ctx)
    seconds = float((payload or {}).get("sleep", 0))
    if seconds:
        ctx.cancel_event.wait(seconds)
    return {"node_id": os.environ.get("DTQ_NODE_ID", ""), "attempt": ctx.attempt}


@registry.task("span")
def span(payload: Any, ctx: TaskContext) -> None:
    """Records its start and end (to measure how many run at once) around a short sleep."""
    _witness(ctx, "start")
    ctx.cancel_event.wait(float((payload or {}).get("sleep", 0.2)))
    _witness(ctx, "end")


@registry.task("fail")
def fail(payload: Any, ctx: TaskContext) -> None:
    """Always raises (a handler failure, retried by the coordinator)."""
    _witness(ctx)
    raise ValueError(f"attempt {ctx.attempt} failed on purpose")


@registry.task("kill_thread")
def kill_thread(payload: Any, ctx: TaskContext) -> None:
    """Kills the worker thread running it: SystemExit is not a task failure but a crash."""
    _witness(ctx)
    raise SystemExit("worker thread crash on purpose")


@registry.task("stubborn")
def stubborn(payload: Any, ctx: TaskContext) -> None:
    """Sleeps ``payload["sleep"]`` s and ignores cancellation (the worst-behaved handler)."""
    time.sleep(float((payload or {}).get("sleep", 30)))


@registry.task("deadline")
def deadline(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Returns how long it had left when it started (the context's deadline)."""
    left = ctx.seconds_left()
    return {"left": left}


@registry.task("headers")
def headers(payload: Any, ctx: TaskContext) -> dict[str, str]:
    """Returns the task's headers (a copy: ``ctx.headers`` is a read-only mapping).

    Fails (retryably) the attempts before ``payload["succeed_on"]``, if given.
    """
    if ctx.attempt < int((payload or {}).get("succeed_on", 1)):
        raise ValueError(f"attempt {ctx.attempt} failed on purpose, headers {dict(ctx.headers)}")
    return dict(ctx.headers)


@registry.task("async_sleep")
async def async_sleep(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """An ``async def`` handler: sleeps ``payload["sleep"]`` s on its thread's event loop
    (a cancel or a timeout interrupts it), then returns its attempt and the loop's id."""
    await asyncio.sleep(float((payload or {}).get("sleep", 0)))
    return {"attempt": ctx.attempt, "loop": id(asyncio.get_running_loop())}


@registry.task("retry_after")
def retry_after(payload: dict[str, Any], ctx: TaskContext) -> int:
    """Asks for its next attempt in ``payload["after"]`` s until attempt ``succeed_on`` (2)."""
    _witness(ctx)
    if ctx.attempt < int(payload.get("succeed_on", 2)):
        raise RetryAfter(float(payload["after"]), "upstream asked us to wait")
    return ctx.attempt
