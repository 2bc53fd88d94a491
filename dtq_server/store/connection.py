"""What the SQL modules need of a database connection: the part of DB-API both
``sqlite3`` and the PostgreSQL adapter (:mod:`dtq_server.store.postgres`) offer.

The SQL is written once, in the dialect both understand (``?`` parameters,
``INSERT ... ON CONFLICT DO NOTHING``, ``UPDATE ... FROM (VALUES ...)``,
``RETURNING``); the adapter rewrites the parameter marks for psycopg.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cursor(Protocol):
    """The rows of one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection the store's SQL functions run on."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def chunked(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive slices of at most ``size``: a statement takes a bounded
    number of parameters (SQLite at most 32,766 in all)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
