"""Sending batches one step ahead (the batches themselves: :mod:`dtq.batching`)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def send_ahead(call: Callable[[T], R], requests: Sequence[T]) -> Generator[tuple[T, R], None, None]:
    """Yield ``(request, call(request))`` in order, with the next call already under way.

    The calls run one at a time, in order, on a helper thread; the next one starts
    before its predecessor's answer is yielded, so the caller's work on an answer
    (converting thousands of tasks) overlaps the coordinator's work on the next
    batch. A call that raises stops everything after it: nothing later is sent.
    One request (or none) needs no thread.
    """
    if len(requests) <= 1:
        for request in requests:
            yield request, call(request)
        return
    # Leaving early (the caller stops iterating) waits for the call under way.
    with ThreadPoolExecutor(1, thread_name_prefix="dtq-send-ahead") as pool:
        future = pool.submit(call, requests[0])
        for index, request in enumerate(requests):
            response = future.result()
            if index + 1 < len(requests):
                future = pool.submit(call, requests[index + 1])
            yield request, response
