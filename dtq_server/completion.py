"""Work that must not stop half-way when the call that started it is cancelled.

A store write commits on the writer thread whatever happens to the coroutine
awaiting it. If a cancelled call (a client deadline, a stream torn down by a
connection rotation) stopped that coroutine between the commit and the memory
update that follows it, memory and store would disagree for good: a stored
task missing from the queue, a finished task whose lease memory still holds.
So the commit and its follow-up run as a task of their own; the caller's
cancellation stops only the caller's wait. Used by every call that commits and
then changes memory: submits, node outcomes, cancels, retries, and the requeue
of a session's leases when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def run_to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if the caller is cancelled, ``work`` still finishes."""
    job = asyncio.ensure_future(work)
    job.add_done_callback(_retrieve)
    return await asyncio.shield(job)


def _retrieve(job: asyncio.Future[Any]) -> None:
    """Mark the job's error as seen: the caller may have left (it gets the error if not)."""
    if not job.cancelled():
        job.exception()
