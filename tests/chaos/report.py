"""One row per chaos scenario, and the table ``make chaos`` prints at the end of the session."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class Row:
    """What a scenario proved (or failed to)."""

    scenario: str
    tasks: int = 0
    """Tasks stored by the coordinator."""
    acknowledged: int = 0
    """Submits that returned OK."""
    lost: int = 0
    """Acknowledged tasks that never reached a terminal state (I1; must be 0)."""
    duplicates: int = 0
    """Executions beyond the first, over all tasks (from the witness)."""
    bound: int = 0
    """The scenario's bound on duplicates."""
    redelivery_s: float | None = None
    """Worst time from a fault to the re-lease of an interrupted task, if measured."""
    redelivery_limit_s: float | None = None
    """What ``redelivery_s`` was held to."""
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    """Which path a scenario took, resource figures, the seed: anything worth printing."""


ROWS = pytest.StashKey[list[Row]]()
"""Where the session keeps the rows (``config.stash``)."""

HEADER = ("scenario", "tasks", "acked", "lost", "dups", "bound", "redeliv s", "limit s", "result")


def _cells(row: Row) -> tuple[str, ...]:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (
        row.scenario,
        str(row.tasks),
        str(row.acknowledged),
        str(row.lost),
        str(row.duplicates),
        str(row.bound),
        seconds(row.redelivery_s),
        seconds(row.redelivery_limit_s),
        "pass" if row.passed else "FAIL",
    )


def table(rows: list[Row]) -> list[str]:
    """The rows as aligned text lines, notes under each row."""
    cells = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for i, row_cells in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if j else c.ljust(w)
                for j, (c, w) in enumerate(zip(row_cells, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
        else:
            lines += [f"    {note}" for note in rows[i - 1].notes]
    return lines


def summary(rows: list[Row], skipped: int) -> str:
    """The one line that says how the chaos run went."""
    passed = sum(r.passed for r in rows)
    lost = sum(r.lost for r in rows)
    dups = sum(r.duplicates for r in rows)
    bound = sum(r.bound for r in rows)
    # The worst redelivery relative to its own limit (limits differ between scenarios).
    timed = [r for r in rows if r.redelivery_s is not None and r.redelivery_limit_s]
    worst = max(
        timed, key=lambda r: (r.redelivery_s or 0) / (r.redelivery_limit_s or 1), default=None
    )
    worst_text = "-"
    if worst is not None:
        worst_text = (
            f"{worst.redelivery_s:.2f} s in {worst.scenario} "
            f"(limit {worst.redelivery_limit_s:.2f} s)"
        )
    verdict = "OK" if passed == len(rows) and lost == 0 else "FAILED"
    return (
        f"chaos: {len(rows)} scenarios, {passed} passed, {len(rows) - passed} failed, "
        f"{skipped} skipped, lost={lost}, duplicates={dups} (bound {bound}), "
        f"worst redelivery {worst_text}: {verdict}"
    )
