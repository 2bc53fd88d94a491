"""``@frozen`` value types: plain slotted dataclasses at run time, frozen to mypy."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from mypy import api as mypy_api

from dtq_server.models import Lease, TaskPage
from dtq_worker import models as worker_models
from dtq_worker.context import TaskContext


def test_frozen_types_compare_and_hash_by_value() -> None:
    assert Lease("t", 1) == Lease("t", 1)
    assert {Lease("t", 1), Lease("t", 1), Lease("t", 2)} == {Lease("t", 1), Lease("t", 2)}
    assert dataclasses.replace(Lease("t", 1), attempt=2) == Lease("t", 2)
    assert TaskPage().tasks == []
    assert not hasattr(Lease("t", 1), "__dict__")  # slotted
    assert worker_models.Lease("t", 1) == worker_models.Lease("t", 1)
    assert len({worker_models.Lease("t", 1), worker_models.Lease("t", 1)}) == 1


def test_frozen_without_eq_keeps_identity() -> None:
    first = TaskContext("t", 1, 3, "echo", "default", "")
    second = TaskContext("t", 1, 3, "echo", "default", "")
    assert first != second
    assert len({first, second, first}) == 2
    assert not hasattr(first, "__dict__")


def test_mypy_rejects_assigning_a_field(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
        from dtq_server.models import Lease
        from dtq_worker.context import TaskContext
        lease = Lease("t", 1)
        lease.attempt = 2
        Lease("t", "1")
        context = TaskContext("t", 1, 3, "echo", "default", "")
        context.attempt = 2
        """
        )
    )
    out, _, status = mypy_api.run(["--no-incremental", str(snippet)])
    assert status == 1, out
    assert 'Property "attempt" defined in "Lease" is read-only' in out
    assert 'Argument 2 to "Lease" has incompatible type "str"; expected "int"' in out
    assert 'Property "attempt" defined in "TaskContext" is read-only' in out
