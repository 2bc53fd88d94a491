"""The task list: its query (filters and page token, to and from the URL) and one page of it.

The list pages with the coordinator's page tokens (:meth:`Client.list_tasks_page
<dtq_client.Client.list_tasks_page>`): "Older" carries the token of the page
after the one shown. A token marks a place in submission order, not an offset,
so an older page keeps its tasks while new ones arrive (its live refresh shows
the same place), and any page costs one ListTasks call however deep it is. A
token pages only the listing it came from: the coordinator refuses it with
other filters, and the page says so (:class:`StaleToken`) with a way back to
the newest tasks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from dtq_client.models import Task, TaskState

_MAX_FILTER_CHARS = 200
"""Longest queue or type filter accepted (the coordinator's longest type name)."""

_MAX_HEADER_KEY_CHARS = 64
_MAX_HEADER_VALUE_CHARS = 2048
"""The coordinator's limits on a header; it checks the key's characters itself."""

_TOKEN = re.compile(r"[A-Za-z0-9_=-]{1,200}")
"""What a coordinator page token looks like (URL-safe base64, a few dozen characters):
anything else is refused before it costs a call."""

_STATES = frozenset(state.value for state in TaskState)


class QueryError(ValueError):
    """A task-list parameter the UI cannot send (an unknown state, a too long name)."""


class StaleToken(QueryError):
    """A page token that pages nothing: from other filters, or not one the coordinator gave."""

    def __init__(self, message: str, query: TaskQuery) -> None:
        super().__init__(message)
        self.query = query
        """The same filters without the token: their newest page is the way back."""


@dataclass(frozen=True)
class TaskQuery:
    """The task list's filters and position; "" means no filter (or the newest page)."""

    queue: str = ""
    state: str = ""
    type: str = ""
    header: str = ""
    """One ``KEY=VALUE``: only tasks carrying that header with that value."""
    page_token: str = ""
    """Where the page starts: a coordinator token, "" for the newest tasks."""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TaskQuery:
        """The query in a URL's parameters; :class:`QueryError` for a bad value."""
        state = params.get("state", "").strip().lower()
        if state and state not in _STATES:
            raise QueryError(f"unknown state {state!r}")
        queue, type_ = params.get("queue", "").strip(), params.get("type", "").strip()
        if len(queue) > _MAX_FILTER_CHARS or len(type_) > _MAX_FILTER_CHARS:
            raise QueryError(f"queue and type filters are at most {_MAX_FILTER_CHARS} characters")
        header = params.get("header", "").strip()
        if header:
            _check_header(header)
        query = cls(queue, state, type_, header)
        token = params.get("page_token", "")
        if token and not _TOKEN.fullmatch(token):
            raise StaleToken("the page_token in this link is not one the coordinator gave", query)
        return replace(query, page_token=token)

    @property
    def headers(self) -> dict[str, str] | None:
        """The header filter as the client takes it; None without one."""
        if not self.header:
            return None
        key, _, value = self.header.partition("=")
        return {key: value}

    def params(self, **changes: str) -> dict[str, str]:
        """The URL parameters of this query with ``changes``, leaving out empty ones."""
        values = {
            "queue": self.queue,
            "state": self.state,
            "type": self.type,
            "header": self.header,
            "page_token": self.page_token,
            **changes,
        }
        return {key: value for key, value in values.items() if value}


def _check_header(header: str) -> None:
    key, sep, value = header.partition("=")
    if not sep or not key:
        raise QueryError(f"the header filter must be KEY=VALUE, got {header!r}")
    if len(key) > _MAX_HEADER_KEY_CHARS or len(value) > _MAX_HEADER_VALUE_CHARS:
        raise QueryError(
            f"a header key is at most {_MAX_HEADER_KEY_CHARS} characters "
            f"and its value at most {_MAX_HEADER_VALUE_CHARS}"
        )


@dataclass(frozen=True)
class TaskListing:
    """One page of the task list, newest first."""

    query: TaskQuery
    tasks: tuple[Task, ...]
    older_token: str
    """The token of the next (older) page; "" on the last page."""
