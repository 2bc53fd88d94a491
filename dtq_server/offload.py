"""Big CPU-bound chunks of work (thousands of specs to convert and validate) off the loop.

Python runs one thread at a time, so a worker thread does not make the work
cheaper; what it buys is fairness. Converting and validating a 10,000-task
batch takes the event loop for tens of milliseconds, during which node
streams are not read and no task is dispatched: nodes run dry while a client
submits. On a worker thread the same work is interleaved with the loop at the
interpreter's switch interval (5 ms), and nodes keep being served. Small jobs
stay on the loop: the hop to a thread costs more than they do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

OFF_LOOP_ITEMS = 200
"""Jobs over at least this many items run on a worker thread."""


async def run(fn: Callable[[], T], items: int) -> T:
    """``fn()``, on a worker thread when ``items`` makes it big enough to matter."""
    if items < OFF_LOOP_ITEMS:
        return fn()
    return await asyncio.to_thread(fn)
