"""Chaos fixtures: the run size, one scenario per test, and the table at the end of the session.

``DTQ_CHAOS_SIZE=full`` (``make chaos``) runs every scenario at full size;
anything else (``make test``) runs the small size. Each test builds its
cluster through the ``scenario`` fixture and ends with ``scenario.finish(...)``,
which runs the checker, records the row and fails the test on any violation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.chaos import leases
from tests.chaos.checker import Expect, check
from tests.chaos.cluster import LEASE_EVENTS, ChaosCluster, Fault
from tests.chaos.ledger import Ledger
from tests.chaos.report import ROWS, Row, summary, table

T = TypeVar("T")


@dataclass(frozen=True)
class Size:
    """The run size: ``small`` in CI, ``full`` for ``make chaos``."""

    name: str

    @property
    def full(self) -> bool:
        return self.name == "full"

    def pick(self, small: T, full: T) -> T:
        """``small`` or ``full``, by the run size."""
        return full if self.full else small


@pytest.fixture
def size() -> Size:
    """Read at fixture time, not import time, so one process can run either size."""
    return Size("full" if os.environ.get("DTQ_CHAOS_SIZE", "small") == "full" else "small")


@dataclass
class Scenario:
    """One scenario's cluster, ledger and row; see the module docstring."""

    row: Row
    root: Path
    size: Size
    cluster: ChaosCluster | None = None
    ledger: Ledger = field(init=False)
    finished: bool = False
    skipped: bool = False

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.root / "ledger.jsonl")

    def start(self, *server_args: str, env: dict[str, str] | None = None) -> ChaosCluster:
        """Start the coordinator of this scenario (with ``server_args``)."""
        self.cluster = ChaosCluster(self.root, server_args)
        self.cluster.start_server(env)
        return self.cluster

    def skip(self, reason: str) -> None:
        """Skip the scenario, saying why (printed in the summary, never silent)."""
        self.skipped = True
        pytest.skip(reason)

    def note(self, text: str) -> None:
        """Add a line printed under the scenario's row (and to the test output)."""
        print(f"[{self.row.scenario}] {text}")
        self.row.notes.append(text)

    def interrupted_bound(self, faults: list[Fault] | None = None) -> int:
        """Leases cut by ``faults`` (default: every recorded fault): the duplicate bound."""
        cluster = self._cluster()
        history = leases.spans(cluster.events(LEASE_EVENTS))
        return leases.duplicate_bound(history, cluster.faults if faults is None else faults)

    def redelivery(self, fault: Fault, limit_s: float) -> float | None:
        """Worst redelivery after ``fault``; recorded in the row against ``limit_s``."""
        cluster = self._cluster()
        history = leases.spans(cluster.events(LEASE_EVENTS))
        worst = leases.redelivery_s(history, fault, leases.interrupted(history, fault))
        if worst is not None:
            previous = self.row.redelivery_s
            self.row.redelivery_s = worst if previous is None else max(previous, worst)
            self.row.redelivery_limit_s = limit_s
        return worst

    def finish(self, expect: Expect, extra: list[str] | None = None) -> None:
        """Run the checker, record the row, fail on any violation (``extra`` included)."""
        cluster = self._cluster()
        problems = check(cluster, self.ledger, expect, self.row)
        problems += extra or []
        worst, limit = self.row.redelivery_s, self.row.redelivery_limit_s
        if worst is not None and limit is not None and worst > limit:
            problems.append(f"redelivery took {worst:.2f} s > {limit:.2f} s")
        self.row.passed = not problems
        self.finished = True
        for problem in problems:
            self.row.notes.append(f"VIOLATION {problem}")
        assert not problems, "\n".join(problems) + "\n" + cluster.log_tail()

    def _cluster(self) -> ChaosCluster:
        assert self.cluster is not None, "call scenario.start() first"
        return self.cluster


class Scenarios:
    """Makes the scenario runs of one test (several for a test that loops over seeds)."""

    def __init__(self, name: str, root: Path, size: Size) -> None:
        self.name = name
        self.root = root
        self.size = size
        self.runs: list[Scenario] = []

    def new(self, suffix: str = "") -> Scenario:
        """A fresh run in its own directory; ``suffix`` tells runs of one test apart."""
        root = self.root / f"run{len(self.runs)}"
        root.mkdir()
        label = f"{self.name}{' ' + suffix if suffix else ''} ({self.size.name})"
        run = Scenario(Row(label), root, self.size)
        self.runs.append(run)
        return run

    def close(self, rows: list[Row]) -> None:
        """Record every run's row and stop its processes."""
        for run in self.runs:
            if run.skipped:
                pass
            elif not run.finished:
                run.row.notes.append("did not reach the checker (see the test's error)")
                rows.append(run.row)
            else:
                rows.append(run.row)
            if run.cluster is not None:
                run.cluster.close()


@pytest.fixture
def scenarios(request: pytest.FixtureRequest, tmp_path: Path, size: Size) -> Iterator[Scenarios]:
    """Scenario runs named after the test's ``scenario_id`` marker."""
    marker = request.node.get_closest_marker("scenario_id")
    book = Scenarios(marker.args[0] if marker else request.node.name, tmp_path, size)
    try:
        yield book
    finally:
        book.close(request.config.stash.setdefault(ROWS, []))


@pytest.fixture
def scenario(scenarios: Scenarios) -> Scenario:
    """The one run of a single-run scenario test."""
    return scenarios.new()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario_id(name): the RELIABILITY.md id of a scenario")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Print one row per scenario and the summary line."""
    rows = config.stash.get(ROWS, [])
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/chaos/" in r.nodeid]
    if not rows and not skipped:
        return
    terminalreporter.section("chaos scenarios")
    for line in table(rows):
        terminalreporter.write_line(line)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
    terminalreporter.write_line(summary(rows, len(skipped)))
