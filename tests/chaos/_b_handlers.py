"""Handlers the handler/bad-input/clock chaos scenarios run in real ``dtq-worker`` processes.

Every handler first appends a witness line (task id, attempt, node id, pid, monotonic
time) to ``DTQ_TEST_WITNESS``: opened O_APPEND, one ``write()``, fsynced, so lines
survive the segfault or SIGKILL that some of these handlers cause. ``pid`` is the
process that ran the handler: the node itself, or its child in process isolation.

The faults are the scenarios' (RELIABILITY.md 2.2): raising, segfaulting, hanging
three ways, killing the worker thread, breaking the node's heartbeat loop, and
returning results that are too large or cannot be encoded.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import time
from typing import Any

from dtq_worker import NonRetryableError, Registry, TaskContext, heartbeat

registry = Registry()

BUSY_LIMIT_S = 60.0
"""A "hung" busy loop still ends after this long, so no test leaves a core spinning."""


def record(ctx: TaskContext, **extra: Any) -> None:
    """Append one fsynced witness line for this execution."""
    path = os.environ.get("DTQ_TEST_WITNESS")
    if not path:
        return
    line = json.dumps(
        {
            "task_id": ctx.task_id,
            "attempt": ctx.attempt,
            "type": ctx.type,
            "node_id": os.environ.get("DTQ_NODE_ID", ""),
            "pid": os.getpid(),
            "ts": time.monotonic(),
            **extra,
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@registry.task("ok")
def ok(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Record, sleep ``payload["sleep"]`` s (interruptibly; only on the first attempt if
    ``payload["first_only"]``, so a redelivered task finishes at once), return who ran it."""
    record(ctx)
    payload = payload or {}
    seconds = float(payload.get("sleep", 0))
    if seconds and not (payload.get("first_only") and ctx.attempt > 1):
        ctx.cancel_event.wait(seconds)
    return {"node_id": os.environ.get("DTQ_NODE_ID", ""), "attempt": ctx.attempt}


@registry.task("raise")
def raise_(payload: Any, ctx: TaskContext) -> None:
    """Always raises ValueError (a retryable handler failure)."""
    record(ctx)
    raise ValueError(f"attempt {ctx.attempt} failed on purpose")


@registry.task("raise_deep")
def raise_deep(payload: Any, ctx: TaskContext) -> None:
    """Raises from 300 frames down, so the traceback must be truncated to 8 KiB."""
    record(ctx)

    def down(n: int) -> None:
        if n == 0:
            raise ValueError("deep failure " + "x" * 10_000)
        down(n - 1)

    down(300)


@registry.task("nonretryable")
def nonretryable(payload: Any, ctx: TaskContext) -> None:
    """Fails in a way retrying cannot fix: dead-lettered after one attempt."""
    record(ctx)
    raise NonRetryableError("retrying cannot help")


@registry.task("segfault")
def segfault(payload: Any, ctx: TaskContext) -> None:
    """Sleeps ``payload["delay"]`` s, then dereferences NULL (SIGSEGV)."""
    record(ctx)
    time.sleep(float((payload or {}).get("delay", 0)))
    ctypes.string_at(0)


@registry.task("hang_sleep")
def hang_sleep(payload: Any, ctx: TaskContext) -> None:
    """Sleeps (practically) forever, ignoring cancellation."""
    record(ctx)
    time.sleep(1e9)


@registry.task("hang_busy")
def hang_busy(payload: Any, ctx: TaskContext) -> None:
    """A pure-Python busy loop that ignores cancellation (bounded by BUSY_LIMIT_S)."""
    record(ctx)
    end = time.monotonic() + BUSY_LIMIT_S
    n = 0
    while time.monotonic() < end:
        n += 1


@registry.task("hang_regex")
def hang_regex(payload: Any, ctx: TaskContext) -> dict[str, float]:
    """Catastrophic backtracking: one ``re`` call that holds the GIL for a long time."""
    record(ctx)
    n = int(payload["n"])
    started = time.monotonic()
    re.match(r"(a+)+$", "a" * n + "b")
    return {"held_s": time.monotonic() - started}


@registry.task("kill_thread")
def kill_thread(payload: Any, ctx: TaskContext) -> str:
    """A bug in the worker loop: SystemExit escapes the runner and kills the thread.

    After ``payload["delay"]`` s; only while ``attempt <= payload["until_attempt"]``
    (always, if absent), so a test can have the task succeed on a later attempt.
    """
    record(ctx)
    payload = payload or {}
    time.sleep(float(payload.get("delay", 0)))
    if ctx.attempt <= int(payload.get("until_attempt", 1_000_000)):
        raise SystemExit("worker thread crash on purpose")
    return "survived"


@registry.task("break_heart")
def break_heart(payload: Any, ctx: TaskContext) -> str:
    """Kills the node's heartbeat loop: its next tick raises (a failpoint, from inside)."""
    record(ctx)

    def overdue(self: heartbeat.HeartbeatTracker, now: float) -> bool:
        raise RuntimeError("heartbeat loop killed on purpose")

    heartbeat.HeartbeatTracker.overdue = overdue  # type: ignore[method-assign]
    return "heart broken"


@registry.task("big_result")
def big_result(payload: Any, ctx: TaskContext) -> str:
    """Returns a string of ``payload["bytes"]`` characters."""
    record(ctx)
    return "x" * int(payload["bytes"])


@registry.task("unencodable")
def unencodable(payload: Any, ctx: TaskContext) -> object:
    """Returns something JSON cannot encode."""
    record(ctx)
    return {"a set": {1, 2, 3}}


@registry.task("skewed")
def skewed(payload: Any, ctx: TaskContext) -> str:
    """Declared at registration; ``forget_skewed`` removes it later (registry skew)."""
    record(ctx)
    return "ran"


@registry.task("forget_skewed")
def forget_skewed(payload: Any, ctx: TaskContext) -> str:
    """Removes the ``skewed`` handler from this node's registry, as a bad deploy would."""
    record(ctx)
    registry._handlers.pop("skewed", None)
    return "forgotten"
