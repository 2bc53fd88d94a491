"""The pages (GET): overview, tasks, a task, a group and schedules, whole or as their live part.

Every page is ``page.html`` around one live fragment (``_overview.html``, ...).
The page's script asks for the same URL again every few seconds with
``X-DTQ-Fragment: 1`` and swaps in the fragment alone, so the page updates
without a reload and the filter form outside it keeps what is being typed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from dtq_client.errors import DtqError
from dtq_client.models import TaskState
from dtq_client.ui import present
from dtq_client.ui.gateway import Gateway, describe, http_status
from dtq_client.ui.listing import QueryError, StaleToken, TaskQuery
from dtq_client.ui.settings import UiConfig

FRAGMENT_HEADER = "x-dtq-fragment"
"""Sent by the page's script: answer the live fragment only."""

_RETRYABLE = (TaskState.FAILED, TaskState.CANCELLED)

_GROUP_MEMBERS_SHOWN = 500
"""Member ids a group page links to; a group holds up to 10,000, and the page
is fetched again every few seconds."""


class Pages:
    """The GET routes; each renders the gateway's answer, or the coordinator's error."""

    def __init__(self, gateway: Gateway, templates: Jinja2Templates, config: UiConfig) -> None:
        self._gateway = gateway
        self._templates = templates
        self._config = config

    async def overview(self, request: Request) -> Response:
        """Coordinator health, and a page each of queues and nodes (``?queues=`` and
        ``?nodes=`` hold their tokens)."""
        params = request.query_params
        overview = await self._gateway.overview(params.get("queues", ""), params.get("nodes", ""))
        return self._render(request, "_overview.html", "Overview", overview=overview)

    async def tasks(self, request: Request) -> Response:
        """Tasks, newest first, filtered by queue, state, type and a header, a page at a time."""
        try:
            query = TaskQuery.from_params(request.query_params)
            listing = await self._gateway.tasks(query)
        except QueryError as exc:
            # A bad token leaves good filters: keep them, and offer their newest page.
            shown = exc.query if isinstance(exc, StaleToken) else TaskQuery()
            return self._render(
                request,
                "_error.html",
                "Tasks",
                status=400,
                query=shown,
                error=str(exc),
                back="/tasks?" + urlencode(shown.params()),
                back_label="Newest tasks",
            )
        except DtqError as exc:
            return self._refused(request, "Tasks", exc, query=query)
        return self._render(request, "_tasks.html", "Tasks", query=query, listing=listing)

    async def task(self, request: Request) -> Response:
        """Every field of one task, its payload, result and last error, and its actions."""
        task_id = request.path_params["task_id"]
        title = f"Task {task_id}"
        try:
            task = await self._gateway.task(task_id)
        except DtqError as exc:
            return self._refused(request, title, exc)
        limit = self._config.max_shown_bytes
        error = task.last_error
        return self._render(
            request,
            "_task.html",
            title,
            task=task,
            payload=present.show_bytes(task.payload, task.content_type, limit),
            result=present.show_bytes(task.result, task.result_content_type, limit),
            error_message=present.show_text(error.message if error else "", limit),
            traceback=present.show_text(error.traceback if error else "", limit),
            can_cancel=not task.is_terminal,
            can_retry=task.state in _RETRYABLE,
        )

    async def group(self, request: Request) -> Response:
        """A group's aggregate state, its counts by state, and links to its members."""
        group_id = request.path_params["group_id"]
        title = f"Group {group_id}"
        try:
            group = await self._gateway.group(group_id)
        except DtqError as exc:
            return self._refused(request, title, exc)
        return self._render(
            request,
            "_group.html",
            title,
            group=group,
            members=group.task_ids[:_GROUP_MEMBERS_SHOWN],
        )

    async def schedules(self, request: Request) -> Response:
        """A page of schedules: their timing, task, next and last ticks; Pause/Resume."""
        token = request.query_params.get("page_token", "")
        try:
            schedules = await self._gateway.schedules(token)
        except DtqError as exc:
            first = {"back": "/schedules", "back_label": "First schedules"} if token else {}
            return self._refused(request, "Schedules", exc, **first)
        return self._render(
            request, "_schedules.html", "Schedules", schedules=schedules, page_token=token
        )

    def _refused(self, request: Request, title: str, exc: DtqError, **context: Any) -> Response:
        """The error page for what the coordinator answered, with its HTTP status."""
        return self._render(
            request, "_error.html", title, status=http_status(exc), error=describe(exc), **context
        )

    def _render(
        self, request: Request, live: str, title: str, *, status: int = 200, **context: Any
    ) -> Response:
        context.update(
            title=title,
            live=live,
            address=self._gateway.address,
            refresh_ms=round(self._config.refresh_s * 1000),
            now=datetime.now(UTC),
            states=[state.value for state in TaskState],
        )
        fragment = request.headers.get(FRAGMENT_HEADER) == "1"
        response = self._templates.TemplateResponse(
            request, live if fragment else "page.html", context, status_code=status
        )
        response.headers["vary"] = "X-DTQ-Fragment"
        return response
