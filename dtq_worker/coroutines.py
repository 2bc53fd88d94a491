"""Async handlers: an ``async def`` handler runs on its worker thread's own event loop.

A handler that returns a coroutine (``async def``) is run to completion on the
worker thread that called it, so async handlers are supervised, timed,
counted and isolated exactly as plain ones: a node with ``--threads 8`` runs
at most eight tasks at once, async or not.

Each worker thread gets one event loop (an :class:`asyncio.Runner`) the first
time it meets a coroutine and keeps it for its life, so a handler may keep
loop-bound clients (an HTTP session, a database pool) between the tasks of
its thread; no two threads share a loop, so a handler that blocks its loop
holds up only its own task. Tasks a handler leaves running go on when the
next coroutine on that thread runs, and are cancelled when the thread ends.

Unlike a plain handler, which must look at ``ctx.cancelled`` itself, a
coroutine is interrupted: once the task is cancelled, times out or its lease
is lost, the coroutine gets :class:`asyncio.CancelledError` at its next
``await`` (within :data:`CANCEL_CHECK_S`), and the attempt ends as a
cancelled failure. A coroutine that catches the cancellation and returns
still gets its result reported (the coordinator decides whether it counts).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from dtq_worker.context import TaskContext
from dtq_worker.errors import TaskCancelled

CANCEL_CHECK_S = 0.05
"""How often a running coroutine's thread looks at the task's cancel flag. (The flag is
set from other threads, which cannot safely touch this thread's loop.)"""


class HandlerCancelled(Exception):
    """The handler's coroutine was cancelled by something other than the task's cancel
    (its own code, a library): a retryable failure, not the end of the worker thread."""


_threads = threading.local()


def run(coroutine: Coroutine[Any, Any, Any], context: TaskContext) -> Any:
    """Run a handler's coroutine on this thread's event loop; return or raise what it does."""
    runner: asyncio.Runner | None = getattr(_threads, "runner", None)
    if runner is None:
        runner = _threads.runner = asyncio.Runner()
    return runner.run(_watched(coroutine, context))


def close_thread_loop() -> None:
    """Close this thread's event loop, if it has one (the worker thread is ending)."""
    runner: asyncio.Runner | None = getattr(_threads, "runner", None)
    if runner is not None:
        _threads.runner = None
        runner.close()


async def _watched(coroutine: Coroutine[Any, Any, Any], context: TaskContext) -> Any:
    """The coroutine as a task, cancelled once the task's cancel flag is set."""
    task = asyncio.ensure_future(coroutine)
    cancelling = False
    while not task.done():
        await asyncio.wait((task,), timeout=None if cancelling else CANCEL_CHECK_S)
        if not cancelling and not task.done() and context.cancelled:
            cancelling = True
            task.cancel()  # the coroutine unwinds (its finally blocks run) before we go on
    try:
        return task.result()
    except asyncio.CancelledError:
        if cancelling:
            raise TaskCancelled(f"task {context.task_id} was cancelled") from None
        # Not ours: CancelledError is a BaseException, which would end the worker thread.
        raise HandlerCancelled("the handler's coroutine was cancelled") from None
