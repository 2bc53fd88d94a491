"""Applies a node's task updates in order, without making its stream wait for commits.

The stream reader hands each frame's updates over and goes on reading; one
task per stream applies whatever has piled up meanwhile in ONE commit. Under
load a node sends many small frames while a commit is in flight, so this turns
"one commit per frame" into "one commit per round trip" for each node.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from dtq_server.errors import CoordinatorError
from dtq_server.registry import EndStream, Outbound, SendAcks, Session
from dtq_server.sessions import NodeSessions
from dtq_server.updates import TaskUpdate

log = structlog.get_logger(__name__)


class UpdatePipeline:
    """The ordered, batching applier of one stream's updates."""

    def __init__(
        self, sessions: NodeSessions, session: Session, outbox: asyncio.Queue[Outbound]
    ) -> None:
        self._sessions = sessions
        self._session = session
        self._outbox = outbox
        self._pending: list[TaskUpdate] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, updates: list[TaskUpdate]) -> None:
        """Queue updates (in stream order) for the next commit."""
        if updates:
            self._pending.extend(updates)
            self._idle.clear()
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything added so far is applied (or the pipeline failed)."""
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            done, _ = await asyncio.wait({idle, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the stream's handler is cancelled meanwhile (the node went away):
            # a task left waiting was destroyed pending with the pipeline, logged as an error.
            idle.cancel()
        if self._task in done:
            raise asyncio.CancelledError  # the pipeline ended the stream already

    async def close(self) -> None:
        """Stop applying (the stream is over)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch, self._pending = self._pending, []
                    acks = await self._sessions.apply_updates(self._session, batch)
                    if acks:
                        self._outbox.put_nowait(SendAcks(acks))
                self._idle.set()
        except CoordinatorError as exc:
            self._outbox.put_nowait(EndStream(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream.updates_failed", node_id=self._session.node.node_id)
            self._outbox.put_nowait(EndStream(CoordinatorError("internal error")))
