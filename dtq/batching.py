"""Consecutive items cut into batches by count and size: the client's submit batches,
the coordinator's frames to a node and a node's frames of updates all cut this way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batches(
    items: Iterable[T],
    size_of: Callable[[T], int],
    *,
    max_bytes: int,
    max_count: int | None = None,
) -> Iterator[list[T]]:
    """Yield consecutive non-empty batches of ``items``, in order.

    A batch holds at most ``max_count`` items (any number if None) and, unless a
    single item is larger on its own, at most ``max_bytes`` by ``size_of``. An
    oversized item travels alone: a client leaves refusing it to the coordinator,
    and a frame over its budget still goes, on its own.
    """
    batch: list[T] = []
    batch_bytes = 0
    for item in items:
        size = size_of(item)
        full = max_count is not None and len(batch) >= max_count
        if batch and (full or batch_bytes + size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += size
    if batch:
        yield batch


__all__ = ["batches"]
