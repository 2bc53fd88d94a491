"""The coordinator's reaper: delayed tasks coming due together, and telling a frozen
process from a slow await."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dtq_client import Client, TaskSpec
from dtq_server.coordinator import PROMOTE_CHUNK, WRITE_CHUNK
from dtq_server.errors import StoreUnavailable
from tests.harness import InProcessCoordinator, RawNode, server_config, wait_until


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


class ApplyCalls:
    """Records the sizes of the store's ``apply`` calls, failing the first ``fail`` of
    them as a store that is down does (the real store's method, wrapped)."""

    def __init__(self, coordinator: InProcessCoordinator, fail: int = 0) -> None:
        self.sizes: list[int] = []
        store = coordinator.server.coordinator.store
        real = store.apply

        async def apply(transitions: list[Any]) -> Any:
            self.sizes.append(len(transitions))
            if len(self.sizes) <= fail:
                raise StoreUnavailable("the store could not commit: disk I/O error")
            return await real(transitions)

        coordinator.run(lambda: setattr(store, "apply", apply))


def unstarted(client: Client, queue: str) -> list[str]:
    return [
        t.id
        for t in client.iter_tasks(queue=queue, state="failed")
        if t.last_error is not None and t.last_error.type == "SCHEDULE_TO_START_TIMEOUT"
    ]


def test_deadlines_passing_together_fail_their_tasks_a_chunk_per_write(
    coordinator: InProcessCoordinator,
) -> None:
    """Every task whose schedule-to-start deadline had passed was failed in one write
    built on the event loop: 100,000 at once held both for seconds."""
    count = 2 * WRITE_CHUNK + 300
    calls = ApplyCalls(coordinator)
    with Client(coordinator.address) as client:
        due = datetime.fromtimestamp(time.time() + 3, UTC)  # every deadline at due + 0.5 s
        spec = TaskSpec(
            "nobody.runs.this", queue="unserved", run_at=due, schedule_to_start_timeout_s=0.5
        )
        for start in range(0, count, 1000):
            client.submit_many([spec] * min(1000, count - start), answer="ack")
        assert time.time() < due.timestamp(), "submitting took past the due time"
        wait_until(lambda: len(unstarted(client, "unserved")) == count, 20, what="all failed")
    assert max(calls.sizes) == WRITE_CHUNK, calls.sizes
    assert sum(calls.sizes) == count


def test_a_deadline_whose_failing_did_not_commit_is_kept(
    coordinator: InProcessCoordinator,
) -> None:
    """The tasks of a write that failed (the store down for a moment) were let off their
    deadline for good: queued, never failed, waiting for a node."""
    calls = ApplyCalls(coordinator, fail=2)
    with Client(coordinator.address) as client:
        task = client.submit(
            "nobody.runs.this", None, queue="blip", schedule_to_start_timeout_s=0.5
        )
        wait_until(lambda: unstarted(client, "blip") == [task.id], 10, what="the task failed")
    assert calls.sizes[:3] == [1, 1, 1]  # two refused, the third committed


def test_a_long_sweep_does_not_hold_up_the_reaper(tmp_path: Path) -> None:
    """The retention sweep ran inside the reaper's pass: 900,000 tasks expiring together
    took ~8 s to delete, and for those seconds no node could be found dead, no delayed
    task became ready, no schedule-to-start deadline was enforced."""
    coordinator = InProcessCoordinator(
        server_config(tmp_path / "data", sweep_interval_s=0.2)
    ).start()
    try:
        store = coordinator.server.coordinator.store
        delete_expired = store.delete_expired
        sweeping, release = threading.Event(), asyncio.Event()

        async def held(now: float, limit: int) -> int:  # the fault: a sweep that takes long
            sweeping.set()
            await release.wait()
            return await delete_expired(now, limit)

        coordinator.run(lambda: setattr(store, "delete_expired", held))
        wait_until(sweeping.is_set, 10, what="a sweep under way")
        with Client(coordinator.address) as client:
            task = client.submit(
                "nobody.runs", None, queue="meanwhile", schedule_to_start_timeout_s=0.3
            )
            wait_until(lambda: unstarted(client, "meanwhile") == [task.id], 10, what="the deadline")
        coordinator.run(release.set)
    finally:
        coordinator.stop()


def test_a_task_failing_its_start_deadline_is_not_leased_during_the_write(
    coordinator: InProcessCoordinator,
) -> None:
    """The tasks being failed stayed on the board until the write committed: a node that
    came along meanwhile was leased one, whose lease reached the writer first and won (a
    task started past its deadline). Found by fuzzing the worker stream."""
    store = coordinator.server.coordinator.store
    apply = store.apply
    failing, release = threading.Event(), asyncio.Event()

    async def held(transitions: list[Any]) -> Any:  # the failing write, slow to commit
        if any(t.error is not None for t in transitions):
            failing.set()
            await release.wait()
        return await apply(transitions)

    coordinator.run(lambda: setattr(store, "apply", held))
    with Client(coordinator.address) as client:
        late = client.submit("echo", None, queue="late", schedule_to_start_timeout_s=0.3)
        wait_until(failing.is_set, 10, what="the deadline's write under way")
        node = RawNode(coordinator.address, queues=("late",), auto_heartbeat=True)
        try:
            on_time = client.submit("echo", None, queue="late")
            (assignment,) = node.next("assignments").assignments.assignments
            assert assignment.lease.task_id == on_time.id  # the older task was not leased
            coordinator.run(release.set)
            wait_until(lambda: unstarted(client, "late") == [late.id], 10, what="late failed")
            assert client.get(late.id).attempt == 0
        finally:
            node.close()
