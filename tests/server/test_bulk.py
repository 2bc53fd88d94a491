"""Bulk cancels and purges, a chunk at a time, on an in-process coordinator with a
real SQLite file (chunk sizes made small so a few dozen tasks take several)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dtq_client import Client, TaskSpec, TaskState
from dtq_server import bulk
from tests.harness import InProcessCoordinator

NOBODY = "nobody.serves.this"


def test_a_bulk_cancel_and_a_purge_take_every_matching_task_chunk_by_chunk(
    make_coordinator: Callable[..., InProcessCoordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "SCAN_SLICE", 5)
    monkeypatch.setattr(bulk, "WRITE_BATCH", 7)
    coordinator = make_coordinator()
    with Client(coordinator.address) as client:
        parent = client.submit(NOBODY, queue="parents")  # never runs: no node
        queued = client.submit_many([TaskSpec(NOBODY, i, queue="q") for i in range(30)])
        waiting = client.submit_many(
            [TaskSpec(NOBODY, i, queue="q", depends_on=[parent.id]) for i in range(20)]
        )
        kept = client.submit(NOBODY, queue="q2")
        # More waiting tasks than one chunk: all of them (it used to stop at the first).
        assert client.cancel_tasks(queue="q") == (50, 0)
        ids = [r.task.id for r in queued + waiting]
        assert {client.get(i).state for i in ids} == {TaskState.CANCELLED}
        [stats] = [q for q in client.queues() if q.name == "q"]
        assert (stats.queued, stats.waiting, stats.cancelled) == (0, 0, 50)
        assert client.purge("cancelled", queue="q") == 50
        assert client.list_tasks(queue="q") == []
        assert [q.name for q in client.queues()] == ["parents", "q2"]
        assert {client.get(t.id).state for t in (parent, kept)} == {TaskState.QUEUED}
