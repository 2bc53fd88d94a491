"""The actions (POST): on a task, a queue, a node or a schedule.

Each answers JSON, ``{"message": ...}`` or ``{"error": ...}`` with the HTTP
status of the coordinator's error, which the page shows as a line of text. The
request body is not read: what to act on is in the path. :mod:`~dtq_client.ui.guard`
has already refused requests without the CSRF header. The page asks before the
actions that touch many tasks or stop a node (a ``confirm()`` for forms with
``data-confirm``): a convenience against slips, not a defence, which stays the header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dtq_client.errors import DtqError
from dtq_client.ui.gateway import Gateway, describe, http_status


class Actions:
    """The POST routes."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def cancel_task(self, request: Request) -> Response:
        """Cancel the task: at once when queued, by asking its node when running."""
        return await _act(self._gateway.cancel, request.path_params["task_id"])

    async def retry_task(self, request: Request) -> Response:
        """Send a failed or cancelled task back to its queue with a fresh attempt budget."""
        return await _act(self._gateway.retry, request.path_params["task_id"])

    async def pause_queue(self, request: Request) -> Response:
        """Pause the queue: it accepts submits and dispatches nothing."""
        return await _act(self._gateway.pause, request.path_params["name"])

    async def resume_queue(self, request: Request) -> Response:
        """Resume the queue."""
        return await _act(self._gateway.resume, request.path_params["name"])

    async def cancel_queued(self, request: Request) -> Response:
        """Cancel every queued task of the queue."""
        return await _act(self._gateway.cancel_queued, request.path_params["name"])

    async def retry_failed(self, request: Request) -> Response:
        """Send every failed task of the queue back to it."""
        return await _act(self._gateway.retry_failed, request.path_params["name"])

    async def drain_node(self, request: Request) -> Response:
        """Drain the node: no new tasks; it finishes its own and exits."""
        return await _act(self._gateway.drain, request.path_params["node_id"])

    async def pause_schedule(self, request: Request) -> Response:
        """Pause the schedule."""
        return await _act(self._gateway.pause_schedule, request.path_params["name"])

    async def resume_schedule(self, request: Request) -> Response:
        """Resume the schedule."""
        return await _act(self._gateway.resume_schedule, request.path_params["name"])


async def _act(action: Callable[[str], Awaitable[str]], target: str) -> Response:
    try:
        message = await action(target)
    except DtqError as exc:
        return JSONResponse({"error": describe(exc)}, status_code=http_status(exc))
    return JSONResponse({"message": message})
