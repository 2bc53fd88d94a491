"""A stream's update pipeline when the stream's handler is cancelled while it flushes."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

from dtq_server.registry import Session
from dtq_server.servicers.update_pipeline import UpdatePipeline
from dtq_server.sessions import NodeSessions


class SlowSessions:
    """Applies updates only once ``commit`` is set (a store slow to commit)."""

    def __init__(self) -> None:
        self.commit = asyncio.Event()

    async def apply_updates(self, session: Any, batch: list[Any]) -> list[Any]:
        await self.commit.wait()
        return []


def test_a_flush_cancelled_midway_leaves_no_task_waiting() -> None:
    """Found by fuzzing the worker stream on PostgreSQL: a node that went away while its
    last outcomes committed cancelled the flush, whose helper task waiting on the idle
    event was left pending and, once the pipeline was dropped, destroyed: asyncio logged
    "Task was destroyed but it is pending!" as an error."""
    destroyed: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: destroyed.append(context["message"]))
        sessions = SlowSessions()
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        pipeline = UpdatePipeline(cast(NodeSessions, sessions), cast(Session, object()), outbox)
        pipeline.add([object()])  # type: ignore[list-item]
        flushing = asyncio.ensure_future(pipeline.flush())
        await asyncio.sleep(0)  # the flush is waiting for the commit
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        await pipeline.close()
        waiting = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert waiting == [], waiting
        del pipeline, flushing
        gc.collect()

    asyncio.run(scenario())
    gc.collect()
    assert destroyed == []
