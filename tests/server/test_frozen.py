"""``@frozen`` value types: plain slotted dataclasses at run time, frozen to mypy."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from mypy import api as mypy_api

from dtq_server.models import Lease, TaskPage


def test_frozen_types_compare_and_hash_by_value() -> None:
    assert Lease("t", 1) == Lease("t", 1)
    assert {Lease("t", 1), Lease("t", 1), Lease("t", 2)} == {Lease("t", 1), Lease("t", 2)}
    assert dataclasses.replace(Lease("t", 1), attempt=2) == Lease("t", 2)
    assert TaskPage().tasks == []
    assert not hasattr(Lease("t", 1), "__dict__")  # slotted


def test_mypy_rejects_assigning_a_field(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
        from dtq_server.models import Lease
        lease = Lease("t", 1)
        lease.attempt = 2
        Lease("t", "1")
        """
        )
    )
    out, _, status = mypy_api.run(["--no-incremental", str(snippet)])
    assert status == 1, out
    assert 'Property "attempt" defined in "Lease" is read-only' in out
    assert 'Argument 2 to "Lease" has incompatible type "str"; expected "int"' in out
