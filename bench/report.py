"""Benchmark figures, their targets from issue 5, and the table and JSON they are reported as.

A figure keeps every round's value; the table shows the median with the spread
(min-max) and the target with a verdict. Targets that are ratios to the peers
(Huey, Dramatiq, Celery) cannot be judged without them: those say
"see bench-peers" and get no verdict here. Nothing is asserted: a missed target
is reported, never raised.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Verdict(StrEnum):
    """How a figure compares with its target."""

    PASS = "pass"
    FAIL = "FAIL"
    NONE = "-"
    """No target to judge here (relative to the peers), or no value."""


@dataclass(frozen=True)
class Target:
    """A figure's target: its text for the table and, when absolute, the test."""

    text: str
    check: Callable[[float], bool] | None = None
    """None: the target is relative to something this run did not measure."""

    @classmethod
    def at_least(cls, bound: float, text: str) -> Target:
        """The figure must be ``bound`` or more."""
        return cls(text, lambda value: value >= bound)

    @classmethod
    def at_most(cls, bound: float, text: str) -> Target:
        """The figure must be ``bound`` or less."""
        return cls(text, lambda value: value <= bound)

    @classmethod
    def relative(cls, text: str) -> Target:
        """Judged against figures measured elsewhere (``make bench-peers``)."""
        return cls(text)


@dataclass
class Figure:
    """One measured quantity, one value per round."""

    name: str
    target: Target
    values: list[float] = field(default_factory=list)
    judge: Callable[[Sequence[float]], float] = statistics.median
    """Which value the verdict is about: the median, or the worst round (``max``) for bounds
    such as peak memory or detection time that must hold every time."""
    note: str = ""

    @property
    def verdict(self) -> Verdict:
        """PASS/FAIL against an absolute target; NONE for relative targets or no values."""
        if self.target.check is None or not self.values:
            return Verdict.NONE
        return Verdict.PASS if self.target.check(self.judge(self.values)) else Verdict.FAIL

    def summary(self) -> dict[str, Any]:
        """Median, spread and verdict, for the JSON file."""
        out: dict[str, Any] = {"values": self.values, "rounds": len(self.values)}
        if self.values:
            out |= {
                "median": statistics.median(self.values),
                "min": min(self.values),
                "max": max(self.values),
            }
        out |= {"target": self.target.text, "verdict": str(self.verdict)}
        if self.note:
            out["note"] = self.note
        return out


def fmt(value: float) -> str:
    """A number for the table: thousands separators for big ones, 2-3 significant digits else."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the rounds, or empty for a single round."""
    if len(values) < 2:
        return ""
    return f"{fmt(min(values))}-{fmt(max(values))}"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain-text table, columns padded to their widest cell; the first column left-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        padded = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def figures_table(figures: Sequence[Figure]) -> str:
    """Figure, median, spread, target and verdict, one row per figure."""
    rows = [
        [f.name, fmt(f.judge(f.values)) if f.values else "n/a", spread(f.values),
         f.target.text, str(f.verdict)]
        for f in figures
    ]  # fmt: skip
    return table(rows, ["figure", "value", "spread", "target", "pass/fail"])


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the raw numbers (creating the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
