"""TaskService.SubmitTaskStream: pipelined submits, each answered once committed.

A unary SubmitTask costs the client a full round trip per task. On this
stream the client keeps sending while earlier submits commit: a reader task
piles up the submits that arrive, and the answering loop commits the whole
pile at once (one ``Coordinator.submit(batch=True)``, so one writer op and
one fsync however many arrived), answers it, then takes the next pile. The
deeper the client's window, the bigger the piles, the fewer commits per task.
Two piles may be committing at once (:data:`COMMITS_IN_FLIGHT`), so the event
loop converts and validates the next one while the writer thread stores the
previous one; each pile takes a turn (:mod:`dtq_server.turns`), so piles are
stored in submit order whichever finishes validating first, and answers go
out in submit order.

A bad submit must fail alone, but a batch is all or nothing, so a pile that
the batch refuses is taken apart (:func:`dtq_server.piles.settle`, shared
with concurrent unary submits).

Errors that are not about one submit (shutting down, the store failing) end
the stream; the client resends what was not answered, which idempotency keys
make safe. Reading stops while :data:`MAX_UNANSWERED` submits wait, so a
client that sends faster than the store commits is held back by HTTP/2 flow
control instead of growing this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence

from dtq.v1 import task_service_pb2 as pb
from dtq_server import piles, scopes
from dtq_server.coordinator import Coordinator
from dtq_server.errors import CoordinatorError, InvalidArgument, PermissionDenied, ShuttingDown
from dtq_server.piles import COMMITS_IN_FLIGHT, MAX_PILE, Outcome
from dtq_server.servicers.convert import fill_submitted, spec_from_proto
from dtq_server.servicers.errors import rich_status
from dtq_server.turns import Turn, Turns
from dtq_server.validation import MAX_BATCH, SpecInput

MAX_FRAME = MAX_BATCH
"""Most submits one request frame may carry; more ends the stream INVALID_ARGUMENT."""
MAX_UNANSWERED = 2 * MAX_PILE
"""Reading pauses while this many submits wait for a commit."""
IDLE_CHECK_S = 0.25
"""How often an idle stream looks whether shutdown began (it then ends UNAVAILABLE)."""


async def answer_submits(
    coordinator: Coordinator, frames: AsyncIterator[pb.SubmitTaskStreamRequest]
) -> AsyncIterator[pb.SubmitTaskStreamResponse]:
    """Serve one stream: commit what arrived, answer it in order, repeat until half-close."""
    pile = _Pile()
    turns = Turns()
    reader = asyncio.create_task(pile.fill(frames), name="dtq-submit-stream-reader")
    # Commits are tasks of their own: a client that goes away mid-commit must not
    # cancel one half-way through its bookkeeping (committed tasks must reach the board).
    commits: deque[tuple[list[pb.StreamedSubmit], asyncio.Task[list[Outcome]]]] = deque()
    try:
        while True:
            while len(commits) < COMMITS_IN_FLIGHT and (submits := pile.take(MAX_PILE)):
                commit = asyncio.create_task(_settle(coordinator, submits, turns.take()))
                commits.append((submits, commit))
            if commits:
                submits, commit = commits[0]
                outcomes = await asyncio.shield(commit)
                commits.popleft()
                yield _response(submits, outcomes)
                continue
            if reader.done():
                break
            if coordinator.shutting_down:
                raise ShuttingDown()  # UNAVAILABLE: the client moves on at once
            await pile.wait(IDLE_CHECK_S)
        reader.result()  # a malformed or oversized frame ends the stream after the answers
    finally:
        reader.cancel()
        for _, commit in commits:  # they finish unobserved; their errors were the stream's
            commit.add_done_callback(_observe)
        with contextlib.suppress(asyncio.CancelledError, CoordinatorError):
            await reader


def _observe(commit: asyncio.Task[list[Outcome]]) -> None:
    """Mark an abandoned commit's error as seen (asyncio would log it as lost)."""
    if not commit.cancelled():
        commit.exception()


class _Pile:
    """Submits read from the stream and not yet taken for a commit."""

    def __init__(self) -> None:
        self.submits: list[pb.StreamedSubmit] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def fill(self, frames: AsyncIterator[pb.SubmitTaskStreamRequest]) -> None:
        """Read frames until the client half-closes (the reader task's whole job)."""
        try:
            async for frame in frames:
                if len(frame.submits) > MAX_FRAME:
                    raise InvalidArgument([("submits", f"at most {MAX_FRAME:,} per frame")])
                self.submits.extend(frame.submits)
                self._arrived.set()
                while len(self.submits) >= MAX_UNANSWERED:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._arrived.set()  # wake the answering loop: it checks whether reading ended

    def take(self, limit: int) -> list[pb.StreamedSubmit]:
        """The oldest ``limit`` submits at most, removed from the pile."""
        taken, self.submits = self.submits[:limit], self.submits[limit:]
        if len(self.submits) < MAX_UNANSWERED:
            self._room.set()
        return taken

    async def wait(self, timeout_s: float) -> None:
        """Until submits arrive, reading ends, or ``timeout_s`` passes."""
        with contextlib.suppress(TimeoutError):  # (asyncio.timeout: see Scheduler.run)
            async with asyncio.timeout(timeout_s):
                await self._arrived.wait()
        self._arrived.clear()


async def _settle(
    coordinator: Coordinator, submits: Sequence[pb.StreamedSubmit], turn: Turn
) -> list[Outcome]:
    """Commit a pile in its turn; one outcome per submit, in order (see :mod:`dtq_server.piles`)."""
    outcomes: list[Outcome | None] = [None] * len(submits)
    specs: list[SpecInput] = []
    where: list[int] = []
    by = scopes.submitter()
    scoped = scopes.restricted()
    try:
        for i, submit in enumerate(submits):
            if not submit.HasField("task"):
                outcomes[i] = InvalidArgument([("task", "is required")])
                continue
            if scoped:
                try:
                    scopes.check_queues((submit.task.queue,))
                except PermissionDenied as exc:  # this submit alone: the others are stored
                    outcomes[i] = exc
                    continue
            specs.append(spec_from_proto(submit.task, by))
            where.append(i)
        if specs:
            stored = await piles.settle(coordinator, specs, turn)
            for i, outcome in zip(where, stored, strict=True):
                outcomes[i] = outcome
    finally:
        turn.end()  # stored, refused or torn down: the next pile's turn
    return piles.filled(outcomes)


def _response(
    submits: Sequence[pb.StreamedSubmit], outcomes: Sequence[Outcome]
) -> pb.SubmitTaskStreamResponse:
    """One response frame answering ``submits``."""
    response = pb.SubmitTaskStreamResponse()
    results = response.results
    for submit, outcome in zip(submits, outcomes, strict=True):
        result = results.add(ref=submit.ref)
        if isinstance(outcome, CoordinatorError):
            result.error.CopyFrom(rich_status(outcome))
        else:
            fill_submitted(result.submitted, *outcome)
    return response
