"""The UI's one door to the coordinator: :class:`~dtq_client.Client` calls, off the event loop.

The blocking client runs each call in a worker thread (``anyio.to_thread``), so
a slow or unreachable coordinator never stalls the server's event loop: pages
wait, other requests go on. Errors stay :class:`~dtq_client.DtqError` s; the
pages turn them into readable messages with :func:`describe` and :func:`http_status`.

The task list pages by offset: :meth:`Client.iter_tasks
<dtq_client.Client.iter_tasks>` follows the coordinator's page tokens itself
and the public client does not hand them out, so page ``n`` reads the ``n``
pages before it again. ``UiConfig.max_offset`` bounds how deep that goes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from anyio import to_thread

from dtq_client.client import Client
from dtq_client.errors import DtqError, RpcError
from dtq_client.models import Node, QueueStats, Task, TaskState
from dtq_client.ui.settings import UiConfig

T = TypeVar("T")

_SKIP_PAGE_SIZE = 500
"""Tasks per ListTasks call while reading down to a deep offset."""

_MAX_FILTER_CHARS = 200
"""Longest queue or type filter accepted (the coordinator's longest type name)."""

_STATES = frozenset(state.value for state in TaskState)

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def describe(exc: DtqError) -> str:
    """A one-line message for ``exc``: ``PERMISSION_DENIED: ...``, never a traceback."""
    if isinstance(exc, RpcError):
        return exc.summary()
    return str(exc) or type(exc).__name__


def http_status(exc: DtqError) -> int:
    """The HTTP status a page answers with when the coordinator raised ``exc``."""
    if isinstance(exc, RpcError):
        return _HTTP_STATUS.get(exc.code, 502)
    return 502


@dataclass(frozen=True)
class Part(Generic[T]):
    """One section of a page: its data, or why the coordinator did not give it."""

    value: T | None = None
    error: str | None = None


@dataclass(frozen=True)
class Overview:
    """The overview page: health, queues and nodes, each fetched on its own."""

    health: Part[str]
    queues: Part[list[QueueStats]]
    nodes: Part[list[Node]]


class QueryError(ValueError):
    """A task-list filter the UI cannot send (an unknown state, a too long name)."""


@dataclass(frozen=True)
class TaskQuery:
    """The task list's filters and position; "" means no filter."""

    queue: str = ""
    state: str = ""
    type: str = ""
    offset: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, str], max_offset: int) -> TaskQuery:
        """The query in a URL's parameters; :class:`QueryError` for a bad value."""
        state = params.get("state", "").strip().lower()
        if state and state not in _STATES:
            raise QueryError(f"unknown state {state!r}")
        queue, type_ = params.get("queue", "").strip(), params.get("type", "").strip()
        if len(queue) > _MAX_FILTER_CHARS or len(type_) > _MAX_FILTER_CHARS:
            raise QueryError(f"queue and type filters are at most {_MAX_FILTER_CHARS} characters")
        raw_offset = params.get("offset", "0")
        if not raw_offset.isdigit():
            raise QueryError(f"offset must be a whole number, got {raw_offset!r}")
        return cls(queue, state, type_, min(int(raw_offset), max_offset))

    def params(self, **changes: str | int) -> dict[str, str | int]:
        """The URL parameters of this query with ``changes``, leaving out empty ones."""
        values: dict[str, str | int] = {
            "queue": self.queue,
            "state": self.state,
            "type": self.type,
            "offset": self.offset,
            **changes,
        }
        return {key: value for key, value in values.items() if value}


@dataclass(frozen=True)
class TaskListing:
    """One page of the task list, newest first."""

    query: TaskQuery
    tasks: list[Task]
    older_offset: int | None
    """The offset of the next (older) page; None on the last page or at the depth limit."""
    newer_offset: int | None
    """The offset of the previous (newer) page; None on the first page."""


class Gateway:
    """Every coordinator call the UI makes; each runs in a worker thread."""

    def __init__(self, client: Client, config: UiConfig) -> None:
        self._client = client
        self._config = config

    @property
    def address(self) -> str:
        """The coordinator's address, as the client was given it."""
        return self._client.config.address

    async def overview(self) -> Overview:
        """Health, queues and nodes, fetched at once; one failing leaves the others shown."""
        health, queues, nodes = await asyncio.gather(
            _part(self._client.health),
            _part(self._client.queues),
            _part(self._client.nodes),
        )
        return Overview(health=health, queues=queues, nodes=nodes)

    async def tasks(self, query: TaskQuery) -> TaskListing:
        """The page of tasks ``query`` asks for."""
        return await to_thread.run_sync(self._list_tasks, query)

    def _list_tasks(self, query: TaskQuery) -> TaskListing:
        size = self._config.page_size
        wanted = query.offset + size + 1  # one more than shown: is there an older page?
        tasks = self._client.iter_tasks(
            queue=query.queue or None,
            state=query.state or None,
            type=query.type or None,
            page_size=min(wanted, _SKIP_PAGE_SIZE),
        )
        page = list(itertools.islice(tasks, query.offset, wanted))
        older = query.offset + size
        return TaskListing(
            query=query,
            tasks=page[:size],
            older_offset=older if len(page) > size and older <= self._config.max_offset else None,
            newer_offset=max(query.offset - size, 0) if query.offset else None,
        )

    async def task(self, task_id: str) -> Task:
        """One task, every field of it."""
        return await to_thread.run_sync(self._client.get, task_id)

    async def cancel(self, task_id: str) -> str:
        """Cancel a task; what happened, as a message."""
        task = await to_thread.run_sync(self._client.cancel, task_id)
        if task.state is TaskState.CANCELLED:
            return f"task {task.id} cancelled"
        if task.cancel_requested:
            return f"cancel requested: node {task.node_id or '?'} is asked to stop task {task.id}"
        return f"task {task.id} is {task.state}"

    async def retry(self, task_id: str) -> str:
        """Send a failed or cancelled task back to its queue; what happened, as a message."""
        result = await to_thread.run_sync(lambda: self._client.retry([task_id]))
        if result.retried:
            return f"task {task_id} sent back to its queue"
        return f"task {task_id} was not retried: only failed or cancelled tasks can be"

    async def pause(self, queue: str) -> str:
        """Pause a queue (it accepts submits, dispatches nothing)."""
        stats = await to_thread.run_sync(self._client.pause_queue, queue)
        return f"queue {stats.name} paused"

    async def resume(self, queue: str) -> str:
        """Resume a paused queue."""
        stats = await to_thread.run_sync(self._client.resume_queue, queue)
        return f"queue {stats.name} resumed"


async def _part(call: Callable[[], T]) -> Part[T]:
    try:
        return Part(value=await to_thread.run_sync(call))
    except DtqError as exc:
        return Part(error=describe(exc))
