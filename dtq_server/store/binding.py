"""Parameters as SQLite's Python binding takes them without a detour.

``sqlite3`` binds int, float, str and bytearray parameters directly. For any
other value, None and bytes included, it first searches its adapter registry,
and for these two the search ends in failed attribute lookups, one of which
builds and throws away an AttributeError: about 0.7 µs per None and 1 µs per
bytes, against 0.01 µs per int (CPython 3.11; 1,000-row ``executemany`` of
31-column rows: 25 µs a row of Nones, 33 of bytes, 3.6 of ints, 8 of
bytearrays). A plain task's row has 32 parameters, 15 of them NULL and two of
them blobs, so binding them cost more than SQLite's insert of the row.

So the hot statements write NULLs into the SQL (one statement per pattern of
NULLs in a batch; ``sqlite3`` keeps each one prepared in its statement cache)
and pass blobs as bytearray, which SQLite stores as the same BLOB.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

Nulls = tuple[bool, ...]
"""Which parameters of a row are NULL, in order."""


def blob(value: bytes) -> bytearray:
    """``value`` bound as a BLOB without the adapter search (a copy; see the module)."""
    return bytearray(value)


def by_nulls(rows: Iterable[Sequence[Any]]) -> dict[Nulls, list[list[Any]]]:
    """``rows`` grouped by where their NULLs are, each without its NULLs.

    Order is kept within a group; callers whose rows carry their own order (an
    explicit ``seq``) do not depend on the order between groups.
    """
    groups: dict[Nulls, list[list[Any]]] = {}
    for row in rows:
        nulls = tuple(map(operator.is_, row, repeat(None)))
        groups.setdefault(nulls, []).append([value for value in row if value is not None])
    return groups


@functools.lru_cache(maxsize=256)
def values_clause(nulls: Nulls) -> str:
    """``VALUES (?, NULL, ...)`` for rows with NULLs where ``nulls`` says."""
    return f"VALUES ({', '.join('NULL' if null else '?' for null in nulls)})"
