"""Many single submits committed as one batch, each still answered on its own.

A batch submit is all or nothing; single submits are not: each one that
fails must fail alone, with the error it would get on its own. Committing a
pile of them one writer operation each (a savepoint, a key lookup, a
one-row insert) costs the store thread about as much again as the rest of
the submit, so both the submit stream and concurrent unary SubmitTask calls
commit their pile as ONE batch (:func:`settle`) and take it apart only when
the batch is refused: each spec is validated on its own, the valid ones are
tried as a batch again, and if that still fails (an idempotency clash, a
missing dependency, a key repeated within the pile, a queue with room for
only some of them) each goes in its own submit. The group-commit writer
gathers those into few commits, one savepoint each, in pile order. A
stream's piles keep their turns (:mod:`dtq_server.turns`) while taken
apart, so the next pile waits for them. Unary piles have no turns:
concurrent calls have no order. (A unary pile taken apart may be stored
after the pile behind it; so if both repeat one idempotency key, the later
submit may be the one answered ``created``. Either way one task, one id.)

:class:`UnaryPiles` gathers unary submits: a submit arriving while no pile
commits starts a pile at once (a lone submit waits for nothing), and
whatever arrives meanwhile forms the next one (:data:`SLOW_PILE_S`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from dtq_server.coordinator import Coordinator
from dtq_server.errors import (
    CoordinatorError,
    IdempotencyKeyReused,
    InvalidArgument,
    QueueFull,
    UnknownTaskType,
)
from dtq_server.models import TaskRecord
from dtq_server.turns import Turn
from dtq_server.validation import MAX_BATCH, SpecInput, Violations, validate_spec

MAX_PILE = MAX_BATCH
"""Most submits committed together (a batch submit's limit)."""
COMMITS_IN_FLIGHT = 2
"""A stream's piles committing at once: the next pile is converted and validated on the
event loop while the previous one is in the store's writer thread."""
SLOW_PILE_S = 0.05
"""A unary pile starts beside a committing one only once that one has taken this long.

Concurrent calls that arrive during a commit wait for it and go in the next pile
together: one bigger pile costs the writer less per task than a second, smaller one
committing beside it (64 calls in flight, A/B: 3,380-3,460 against 2,770-3,030 calls/s,
327-338 against 369-413 µs of the coordinator's CPU per call). A commit takes a
millisecond or two; one held up far longer (a failpoint's pause) does not hold back the
calls behind it, which go in a second pile (:data:`COMMITS_IN_FLIGHT` at most). A lone
submit still starts its pile at once."""

Outcome = tuple[TaskRecord, bool] | CoordinatorError
"""What one submit came to: the stored task and whether it is new, or why it was refused."""
PER_SUBMIT = (InvalidArgument, IdempotencyKeyReused, UnknownTaskType, QueueFull)
"""Errors about one spec. Any other error (shutting down, the store failing) is about
the whole pile and is raised."""


async def settle(
    coordinator: Coordinator, specs: list[SpecInput], turn: Turn | None = None
) -> list[Outcome]:
    """Commit a pile of single submits; one outcome per spec, in order.

    With a ``turn`` every store, taken apart or not, waits for it; the caller
    ends it once this returns."""
    try:
        return list(await coordinator.submit(specs, batch=True, turn=turn))
    except PER_SUBMIT:
        return await _apart(coordinator, specs, turn)


async def _apart(
    coordinator: Coordinator, specs: list[SpecInput], turn: Turn | None
) -> list[Outcome]:
    """Outcomes of specs a batch refused: bad ones named alone, good ones stored."""
    now = time.time()
    outcomes: list[Outcome | None] = []
    valid: list[int] = []
    for i, spec in enumerate(specs):
        v = Violations()
        validate_spec(spec, "task", coordinator.config, v, now)
        outcomes.append(InvalidArgument(v.items) if v.items else None)
        if not v.items:
            valid.append(i)
    if not valid:
        return filled(outcomes)
    batch = [specs[i] for i in valid]
    try:
        stored: list[Outcome] = list(await coordinator.submit(batch, batch=True, turn=turn))
    except PER_SUBMIT:
        stored = await _singly(coordinator, batch, turn)
    for i, outcome in zip(valid, stored, strict=True):
        outcomes[i] = outcome
    return filled(outcomes)


async def _singly(
    coordinator: Coordinator, specs: list[SpecInput], turn: Turn | None
) -> list[Outcome]:
    """One submit per spec, so one refusal each for what only the store sees (a key
    clash, a missing dependency, a key repeated in the pile, a full queue). They are
    queued at once and share the writer's commits, one savepoint each, in order."""
    singles = await asyncio.gather(
        *(coordinator.submit([spec], batch=False, turn=turn) for spec in specs),
        return_exceptions=True,
    )
    outcomes: list[Outcome] = []
    for single in singles:
        if isinstance(single, PER_SUBMIT):
            outcomes.append(single)
        elif isinstance(single, BaseException):
            raise single  # about the pile (shutting down, the store failing)
        else:
            outcomes.append(single[0])
    return outcomes


def filled(outcomes: Sequence[Outcome | None]) -> list[Outcome]:
    """``outcomes`` once every slot is set."""
    assert all(o is not None for o in outcomes), "a submit was left unanswered"
    return [o for o in outcomes if o is not None]


class UnaryPiles:
    """Concurrent unary submits, committed in piles (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._waiting: list[tuple[SpecInput, asyncio.Future[tuple[TaskRecord, bool]]]] = []
        self._commits: dict[asyncio.Task[None], float] = {}
        """Piles committing, with when each started (monotonic)."""
        self._recheck: asyncio.TimerHandle | None = None

    async def submit(self, spec: SpecInput) -> tuple[TaskRecord, bool]:
        """Store one task (or find it by its key): what ``Coordinator.submit`` of one spec
        returns or raises, with the same field paths (``task.*``)."""
        future: asyncio.Future[tuple[TaskRecord, bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append((spec, future))
        self._start()
        # A caller that gives up cancels only its own wait: the pile's commit is a task
        # of its own and still stores (and puts on the board) what it took.
        return await future

    def _start(self) -> None:
        while self._waiting and self._room():
            taken, self._waiting = self._waiting[:MAX_PILE], self._waiting[MAX_PILE:]
            commit = asyncio.create_task(self._commit(taken), name="dtq-submit-pile")
            self._commits[commit] = time.monotonic()
            commit.add_done_callback(self._finished)

    def _room(self) -> bool:
        """Whether a pile may start now; if only a slow commit would allow it, look again then."""
        if not self._commits:
            return True
        if len(self._commits) >= COMMITS_IN_FLIGHT:
            return False
        wait_s = min(self._commits.values()) + SLOW_PILE_S - time.monotonic()
        if wait_s <= 0:
            return True
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(wait_s, self._look_again)
        return False

    def _look_again(self) -> None:
        self._recheck = None
        self._start()

    def _finished(self, commit: asyncio.Task[None]) -> None:
        self._commits.pop(commit, None)
        self._start()

    async def _commit(
        self, taken: list[tuple[SpecInput, asyncio.Future[tuple[TaskRecord, bool]]]]
    ) -> None:
        try:
            outcomes = await settle(self._coordinator, [spec for spec, _ in taken])
        except Exception as exc:  # about the whole pile: every submit in it fails with it
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # the server is being torn down
            for _, future in taken:
                future.cancel()
            raise
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            if future.done():  # its caller gave up
                continue
            if isinstance(outcome, CoordinatorError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
