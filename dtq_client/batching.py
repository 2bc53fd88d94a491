"""Splitting a stream of items into batches bounded by count and size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batches(
    items: Iterable[T],
    size_of: Callable[[T], int],
    *,
    max_count: int,
    max_bytes: int,
) -> Iterator[list[T]]:
    """Yield consecutive non-empty batches of ``items``, in order.

    A batch holds at most ``max_count`` items and, unless a single item is
    larger on its own, at most ``max_bytes`` by ``size_of``. An oversized item
    travels alone so that the coordinator, not the client, rejects it.
    """
    batch: list[T] = []
    batch_bytes = 0
    for item in items:
        size = size_of(item)
        if batch and (len(batch) >= max_count or batch_bytes + size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += size
    if batch:
        yield batch
