"""The UI's one door to the coordinator: :class:`~dtq_client.Client` calls, off the event loop.

The blocking client runs each call in a worker thread (``anyio.to_thread``), so
a slow or unreachable coordinator never stalls the server's event loop: pages
wait, other requests go on. Errors stay :class:`~dtq_client.DtqError` s; the
pages turn them into readable messages with :func:`describe` and :func:`http_status`.
The actions' methods answer what happened as one line for the page to show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import grpc
from anyio import to_thread

from dtq_client.client import Client
from dtq_client.errors import DtqError, InvalidArgument, RpcError
from dtq_client.models import Group, Node, Page, QueueStats, Schedule, Task, TaskState
from dtq_client.ui.listing import StaleToken, TaskListing, TaskQuery
from dtq_client.ui.settings import UiConfig

T = TypeVar("T")
PAGES_PER_VIEW = 10
"""Empty pages a task view reads past before it shows none (and an "Older" link): a
type or header filter looks at 100,000 tasks per page."""

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
    """The overview page: health and a page each of queues and nodes, fetched on their own."""

    health: Part[str]
    queues: Part[Page[QueueStats]]
    nodes: Part[Page[Node]]
    queues_token: str = ""
    """The token of the queues' page shown ("" for the first)."""
    nodes_token: str = ""
    """The token of the nodes' page shown ("" for the first)."""


class Gateway:
    """Every coordinator call the UI makes; each runs in a worker thread."""

    def __init__(self, client: Client, config: UiConfig) -> None:
        self._client = client
        self._config = config

    @property
    def address(self) -> str:
        """The coordinator's address, as the client was given it."""
        return self._client.config.address

    # --- reading -------------------------------------------------------------------------

    async def overview(self, queues_token: str = "", nodes_token: str = "") -> Overview:
        """Health and the pages of queues and nodes the tokens name, fetched at once; one
        failing leaves the others shown."""
        size = self._config.list_size
        health, queues, nodes = await asyncio.gather(
            _part(self._client.health),
            _part(lambda: self._client.queues_page(queues_token, size)),
            _part(lambda: self._client.nodes_page(nodes_token, size)),
        )
        return Overview(health, queues, nodes, queues_token, nodes_token)

    async def tasks(self, query: TaskQuery) -> TaskListing:
        """The page of tasks ``query`` asks for; :class:`StaleToken` if its token is refused."""
        return await to_thread.run_sync(self._list_tasks, query)

    def _list_tasks(self, query: TaskQuery) -> TaskListing:
        try:
            token = query.page_token
            for _ in range(PAGES_PER_VIEW):
                # A type or header filter pages through windows of the tasks kept, and
                # a window may hold no match: look further before showing none.
                page = self._client.list_tasks_page(
                    queue=query.queue or None,
                    state=query.state or None,
                    type=query.type or None,
                    headers=query.headers,
                    page_size=self._config.page_size,
                    page_token=token,
                )
                token = page.next_page_token
                if page.tasks or not token:
                    break
        except InvalidArgument as exc:
            if any(field == "page_token" for field, _ in exc.field_violations):
                raise StaleToken(
                    "this page's link no longer fits its filters (they changed, or the link "
                    "is from another listing): start again from the newest tasks",
                    replace(query, page_token=""),
                ) from exc
            raise
        return TaskListing(query=query, tasks=page.tasks, older_token=page.next_page_token)

    async def task(self, task_id: str) -> Task:
        """One task, every field of it."""
        return await to_thread.run_sync(self._client.get, task_id)

    async def group(self, group_id: str) -> Group:
        """A group's state, counts and member ids."""
        return await to_thread.run_sync(self._client.get_group, group_id)

    async def schedules(self, page_token: str = "") -> Page[Schedule]:
        """The page of schedules, ordered by name, that ``page_token`` names."""
        size = self._config.list_size
        return await to_thread.run_sync(lambda: self._client.schedules_page(page_token, size))

    # --- acting --------------------------------------------------------------------------

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

    async def cancel_queued(self, queue: str) -> str:
        """Cancel every queued task of a queue; running and waiting ones carry on."""
        counts = await to_thread.run_sync(
            lambda: self._client.cancel_tasks(queue=queue, state=TaskState.QUEUED)
        )
        return f"queue {queue}: {_tasks(counts.cancelled, 'queued')} cancelled"

    async def retry_failed(self, queue: str) -> str:
        """Send the failed tasks of a queue back to it, with fresh attempt budgets."""
        result = await to_thread.run_sync(
            lambda: self._client.retry(queue=queue, state=TaskState.FAILED)
        )
        message = f"queue {queue}: {_tasks(result.retried, 'failed')} sent back to the queue"
        if result.truncated:  # the coordinator retries at most 10,000 per call
            message += "; more remain: retry again"
        return message

    async def drain(self, node_id: str) -> str:
        """Stop dispatching to a node and ask it to finish its tasks and exit."""
        node = await to_thread.run_sync(self._client.drain, node_id)
        return f"node {node.node_id} is draining: it finishes its tasks, then exits"

    async def pause_schedule(self, name: str) -> str:
        """Stop a schedule firing; ticks passing while it is paused are skipped."""
        schedule = await to_thread.run_sync(self._client.pause_schedule, name)
        return f"schedule {schedule.name} paused"

    async def resume_schedule(self, name: str) -> str:
        """Resume a schedule from its next tick after now."""
        schedule = await to_thread.run_sync(self._client.resume_schedule, name)
        return f"schedule {schedule.name} resumed"


def _tasks(count: int, state: str) -> str:
    """``1 queued task``, ``3 failed tasks``."""
    return f"{count} {state} task{'' if count == 1 else 's'}"


async def _part(call: Callable[[], T]) -> Part[T]:
    try:
        return Part(value=await to_thread.run_sync(call))
    except DtqError as exc:
        return Part(error=describe(exc))
