"""Waiting for tasks with :class:`~dtq_client.AsyncClient`: watch streams, read with asyncio.

:class:`WatchCalls` holds the client's ``watch`` and ``wait``, which follow
:class:`~dtq_client.Client`'s: a stream slice of ``watch_renew_s`` at most, reopened
on UNAVAILABLE. :func:`follow` reads one WatchTask or SubmitAndWatchTask call:
the stream's tasks as models, ending after a terminal one; a stream that ends
before that is :class:`~dtq_client.Unavailable`, so the caller reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import grpc

from dtq.v1 import task_service_pb2
from dtq_client import convert, retry, task_requests
from dtq_client.calls import AsyncCalls
from dtq_client.errors import (
    DeadlineExceeded,
    ProtocolError,
    Unavailable,
    WaitTimeout,
    translate_rpc_errors,
)
from dtq_client.models import Task


class TaskStreamCall(Protocol):
    """A ``grpc.aio`` WatchTask or SubmitAndWatchTask call: messages that carry a task."""

    def __aiter__(
        self,
    ) -> AsyncIterator[
        task_service_pb2.WatchTaskResponse | task_service_pb2.SubmitAndWatchTaskResponse
    ]: ...

    def cancel(self) -> bool: ...


class WatchCalls(AsyncCalls):
    """The waiting calls of :class:`~dtq_client.AsyncClient`, which sets up their state."""

    async def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Wait until the task is terminal and return it, whatever its outcome.

        Raises :class:`WaitTimeout` if ``timeout_s`` passes first (None waits
        for ever). A failed or cancelled task is returned, not raised.
        """
        async with contextlib.aclosing(self.watch(task_id, timeout_s=timeout_s)) as changes:
            async for task in changes:
                if task.is_terminal:
                    return task
        raise ProtocolError(f"the watch of task {task_id} ended before a terminal state")

    async def watch(
        self, task_id: str, timeout_s: float | None = None
    ) -> AsyncGenerator[Task, None]:
        """Yield the task's current state, then each change, ending after a terminal state.

        A stream that breaks with UNAVAILABLE is reopened, with backoff while
        the coordinator stays unreachable, for up to ``config.retry.total_s``
        (then :class:`Unavailable` is raised); the reopened stream's first state
        is skipped if nothing changed meanwhile. Raises :class:`WaitTimeout` if
        ``timeout_s`` passes before the task is terminal. A consumer that stops
        early ends the call when the generator is closed:
        ``async with contextlib.aclosing(client.watch(...))`` does that at once.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: Task | None = None
        while True:
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise WaitTimeout(task_id, timeout_s, last)
            try:
                task, rest = await self._open_watch(task_id, deadline)
            except DeadlineExceeded as exc:
                timeout = WaitTimeout(task_id, timeout_s, last)
                task_requests.raise_if_expired(exc, deadline, timeout)
                continue
            async with contextlib.aclosing(rest):
                try:
                    while True:
                        if task != last:
                            last = task
                            yield task
                        if task.is_terminal:
                            return
                        task = await anext(rest)
                except Unavailable:
                    # The stream had worked, so reopen it with a fresh retry budget, after a
                    # short pause so that a coordinator ending streams early is not hammered.
                    await asyncio.sleep(self.config.retry.initial_backoff_s)
                except DeadlineExceeded as exc:
                    timeout = WaitTimeout(task_id, timeout_s, last)
                    task_requests.raise_if_expired(exc, deadline, timeout)

    async def _open_watch(
        self, task_id: str, deadline: float | None
    ) -> tuple[Task, AsyncGenerator[Task, None]]:
        """Open a WatchTask stream and read its first state, retrying UNAVAILABLE."""
        request = task_service_pb2.WatchTaskRequest(task_id=task_id)

        async def attempt() -> tuple[Task, AsyncGenerator[Task, None]]:
            slice_s = self.config.watch_renew_s
            if deadline is not None:
                slice_s = max(0.0, min(slice_s, deadline - time.monotonic()))
            call = self._tasks.WatchTask(request, timeout=slice_s, metadata=self._metadata)
            return await opened(call)

        # Bounded by time (retry.total_s), not attempts: a long wait rides out a restart.
        retrying = retry.async_retrying(
            self.config.retry, retry.READ_CODES, deadline=deadline, count_attempts=False
        )
        started: tuple[Task, AsyncGenerator[Task, None]] = await retrying(attempt)
        return started


async def opened(call: TaskStreamCall) -> tuple[Task, AsyncGenerator[Task, None]]:
    """Follow ``call`` and read its first task: the answer, or the error, of opening it.

    The generator returned goes on with the tasks after the first; close it
    (``contextlib.aclosing``) to end the call when the caller stops early.
    """
    stream = follow(call)
    # An error leaves the generator finished, its call cancelled: nothing to close.
    return await anext(stream), stream


async def follow(call: TaskStreamCall) -> AsyncGenerator[Task, None]:
    """The tasks ``call`` streams, ending after a terminal one; Unavailable if the call
    ends before that."""
    try:
        with translate_rpc_errors():
            async for response in call:
                task = convert.task_from_proto(response.task)
                if task.is_terminal:
                    await _finish(call)
                    yield task
                    return
                yield task
    finally:
        call.cancel()  # ends the call when the consumer stops early; a no-op otherwise
    raise Unavailable(grpc.StatusCode.UNAVAILABLE, "watch stream ended early")


async def _finish(call: TaskStreamCall) -> None:
    """Read a watch call to its end after the terminal state, which the coordinator follows
    at once with its status: cancelling instead races that status, and grpc then logs an
    error on the coordinator for a stream that ended normally."""
    with contextlib.suppress(grpc.RpcError):
        # The call's one message iterator, which the caller's loop is paused in.
        async for _ in call:
            pass
