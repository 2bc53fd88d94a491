"""The coordinator's reaper: delayed tasks coming due together, and telling a frozen
process from a slow await."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

from dtq_client import Client, TaskSpec
from dtq_server.coordinator import PROMOTE_CHUNK
from tests.harness import InProcessCoordinator, wait_until


def test_tasks_due_together_become_ready_a_chunk_at_a_time(
    coordinator: InProcessCoordinator,
) -> None:
    """All at once, 300,000 tasks sharing a run_at held the event loop 0.8-1.1 s (no
    call answered meanwhile, and the reaper took it for a frozen process)."""
    count = 3 * PROMOTE_CHUNK + 500
    core = coordinator.server.coordinator
    board = core.board
    chunks: list[tuple[int, int]] = []  # (tasks moved, loop turns seen before the call)
    turns = [0]
    spinning: list[asyncio.Task[None]] = []
    promote = board.promote_due

    async def spin() -> None:  # counts the loop's turns given to something else
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    def recording(now: float, limit: int) -> int:
        moved = promote(now, limit)
        if moved:
            chunks.append((moved, turns[0]))
            if not spinning:
                spinning.append(asyncio.get_running_loop().create_task(spin()))
        return moved

    coordinator.run(lambda: setattr(board, "promote_due", recording))
    due = datetime.fromtimestamp(time.time() + 3, UTC)
    with Client(coordinator.address) as client:
        for start in range(0, count, 1000):
            n = min(1000, count - start)
            client.submit_many([TaskSpec("echo", queue="later", run_at=due)] * n, answer="ack")
    assert time.time() < due.timestamp(), "submitting took past the due time"
    wait_until(lambda: sum(m for m, _ in chunks) == count, 20, what="every task promoted")
    coordinator.run(spinning[0].cancel)
    assert [m for m, _ in chunks] == [PROMOTE_CHUNK] * 3 + [500]
    seen = [t for _, t in chunks]
    assert all(b > a for a, b in itertools.pairwise(seen)), seen  # loop served between


def test_a_slow_await_in_the_reaper_is_not_a_frozen_process(
    coordinator: InProcessCoordinator,
) -> None:
    """The gap between two reaper ticks counted the reaper's own awaits (a slow write):
    nodes were forgiven their silence for a freeze that never was."""
    sessions = coordinator.server.coordinator.sessions
    forgiven: list[float] = []
    checks = [0]

    expire = sessions.expire_silent

    async def slow_once() -> None:
        checks[0] += 1
        if checks[0] == 2:
            await asyncio.sleep(1.5)  # the fault: a store write this slow
        await expire()

    forgive = sessions.forgive

    def recording(stalled_s: float) -> None:
        forgiven.append(stalled_s)
        forgive(stalled_s)

    def wrap() -> None:
        sessions.forgive = recording  # type: ignore[method-assign]
        sessions.expire_silent = slow_once  # type: ignore[method-assign]

    coordinator.run(wrap)
    wait_until(lambda: checks[0] >= 5, 10, what="reaper ticks after the slow one")
    assert forgiven == []
    # And a freeze (the loop's thread held: SIGSTOP, a VM pause) still is one.
    coordinator.run(lambda: time.sleep(1.5))
    wait_until(lambda: bool(forgiven), 10, what="the freeze forgiven")
    assert 1.0 < forgiven[0] < 3.0, forgiven
