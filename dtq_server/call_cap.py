"""The coordinator's cap on how long a unary call runs (``--max-call-time``, RELIABILITY R10).

A call with no deadline (the gRPC default of generated clients) or a very long
one could otherwise wait on a stuck store without end. Each unary call is noted
with the time it must end by, and one sweep, a few times a second, cancels those
past it; the call then ends DEADLINE_EXCEEDED (reason MAX_CALL_TIME). A timer
per call (``asyncio.timeout``) cost ~17 µs of the coordinator's ~360 µs per
single submit (a fifth of what is ours in it); a dict entry costs well under 1.
A call whose client deadline comes first is ended by grpc, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from dtq_server.errors import CallTooLong
from dtq_server.servicers.errors import Context, abort, to_status


class CallCap:
    """Ends unary calls that run past ``max_call_s``, with one sweep for all of them."""

    def __init__(self, max_call_s: float) -> None:
        self.max_call_s = max_call_s
        self._running: dict[asyncio.Task[Any], float] = {}
        """Each running call's task, and the monotonic time it must end by."""
        self._expired: set[asyncio.Task[Any]] = set()

    async def run(self, call: Awaitable[Any], context: Context) -> Any:
        """``call``, ended DEADLINE_EXCEEDED if it runs past the cap."""
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel it with
            return await call
        self._running[task] = time.monotonic() + self.max_call_s
        try:
            return await call
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the client went away, or the server is stopping
            task.uncancel()  # the cancel was the sweep's: end with a status instead
            await abort(context, to_status(CallTooLong(self.max_call_s)))
        finally:
            del self._running[task]
            self._expired.discard(task)

    async def sweep_forever(self) -> None:
        """Cancel the calls past their end, a few times a second (run as a task)."""
        interval = min(0.25, self.max_call_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, end in list(self._running.items()):
                if end <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
