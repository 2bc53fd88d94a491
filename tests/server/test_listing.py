"""ListTasks pages filtered by type or headers on SQLite and PostgreSQL: each looks at
one window of submission order, and following the tokens finds every match in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from dtq_server.models import TaskFilter
from dtq_server.store import listing
from dtq_server.store.base import Store
from dtq_server.store.postgres import PostgresStore
from dtq_server.store.sqlite import SqliteStore
from dtq_server.validation import SpecInput, Violations, validate_spec
from tests.harness import server_config

CONFIG = server_config(Path("unused"))
RARE_AT = {7, 8, 120, 121, 122, 299}
"""Positions in submission order of the tasks the filters below match."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "db.sqlite3")
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


def spec(rare: bool) -> SpecInput:
    headers = (("tenant", "acme"),) if rare else (("tenant", "other"),)
    return SpecInput("rare" if rare else "common", "", b"{}", "", 0, "", None, headers=headers)


@pytest.mark.parametrize(
    "task_filter",
    [
        TaskFilter(type="rare"),
        TaskFilter(type="rare", queue="default"),
        TaskFilter(headers=(("tenant", "acme"),)),
    ],
    ids=["type", "type and queue", "headers"],
)
def test_a_scanning_filter_pages_through_windows_and_finds_every_match(
    new_store: Callable[[], Store], task_filter: TaskFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page looks at SCAN_ROWS tasks at most; short and empty pages lead on below their
    window, and following them finds every match, newest first."""
    monkeypatch.setattr(listing, "SCAN_ROWS", 50)

    async def scenario() -> None:
        store = new_store()
        await store.open()
        try:
            tasks = [
                validate_spec(spec(i in RARE_AT), "task", CONFIG, Violations()) for i in range(300)
            ]
            assert all(tasks)
            stored = [r for r, _ in await store.insert([t for t in tasks if t], batch=True)]
            expected = [r.id for r in reversed(stored) if r.type == "rare"]
            found, pages, before = [], 0, None
            while True:
                page = await store.list_tasks(task_filter, 2, before, 1 << 20)
                pages += 1
                assert len(page.tasks) <= 2
                found += [t.id for t in page.tasks]
                if page.next_before_seq is None:
                    break
                before = page.next_before_seq
            assert found == expected
            assert pages >= 300 // 50  # a window per page at most
            everything = await store.list_tasks(TaskFilter(), 1000, None, 1 << 20)
            assert len(everything.tasks) == 300  # no type or header filter: no window
            assert everything.next_before_seq is None
        finally:
            await store.close()

    asyncio.run(scenario())
