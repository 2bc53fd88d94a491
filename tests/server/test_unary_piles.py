"""When concurrent unary submits start a pile of their own, and when they wait for the next.

The scheduling alone, against a coordinator whose commits finish when the test says
(tests/server/test_piles.py has concurrent submits against a real one).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from dtq_server import piles
from dtq_server.coordinator import Coordinator
from dtq_server.piles import UnaryPiles


class GatedCoordinator:
    """Stores each pile when its gate opens; records the size of every pile it was given."""

    def __init__(self) -> None:
        self.piles: list[list[str]] = []
        self.gates: list[asyncio.Event] = []

    async def submit(self, specs: list[Any], batch: bool, turn: Any = None) -> list[Any]:
        self.piles.append(list(specs))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [(f"stored {spec}", True) for spec in specs]


def _submit(unary: UnaryPiles, spec: str) -> asyncio.Future[Any]:
    """``unary.submit`` of a stand-in spec (the gated coordinator only echoes it)."""
    return asyncio.ensure_future(unary.submit(cast(Any, spec)))


async def _until(predicate: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.001)


def test_calls_arriving_during_a_commit_go_in_one_pile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone submit starts at once; the three behind it wait and share the next commit."""
    monkeypatch.setattr(piles, "SLOW_PILE_S", 60.0)  # no commit counts as slow here

    async def scenario() -> None:
        coordinator = GatedCoordinator()
        unary = UnaryPiles(cast(Coordinator, coordinator))
        first = _submit(unary, "a")
        await _until(lambda: len(coordinator.piles) == 1)
        behind = [_submit(unary, s) for s in "bcd"]
        await asyncio.sleep(0.01)
        assert coordinator.piles == [["a"]], "they wait for the commit in flight"
        coordinator.gates[0].set()
        assert await first == ("stored a", True)
        await _until(lambda: len(coordinator.piles) == 2)
        assert coordinator.piles[1] == ["b", "c", "d"]
        coordinator.gates[1].set()
        assert await asyncio.gather(*behind) == [(f"stored {s}", True) for s in "bcd"]

    asyncio.run(scenario())


def test_a_slow_commit_lets_a_second_pile_start_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit held up past SLOW_PILE_S does not hold back the call behind it, and no
    more than COMMITS_IN_FLIGHT piles commit at once."""
    monkeypatch.setattr(piles, "SLOW_PILE_S", 0.05)

    async def scenario() -> None:
        coordinator = GatedCoordinator()
        unary = UnaryPiles(cast(Coordinator, coordinator))
        stuck = _submit(unary, "a")
        await _until(lambda: len(coordinator.piles) == 1)
        second = _submit(unary, "b")
        await _until(lambda: len(coordinator.piles) == 2)  # after ~50 ms, no new arrival
        third = _submit(unary, "c")
        coordinator.gates[1].set()
        assert await second == ("stored b", True)
        await _until(lambda: len(coordinator.piles) == 3)  # "a" is still slow: room again
        assert piles.COMMITS_IN_FLIGHT == 2
        fourth = _submit(unary, "d")
        await asyncio.sleep(0.15)
        assert len(coordinator.piles) == 3, "two piles commit already: d waits"
        coordinator.gates[0].set()
        await _until(lambda: len(coordinator.piles) == 4)
        for gate in coordinator.gates:
            gate.set()
        results = list(await asyncio.gather(stuck, third, fourth))
        assert results == [("stored a", True), ("stored c", True), ("stored d", True)]
        assert coordinator.piles == [["a"], ["b"], ["c"], ["d"]]

    asyncio.run(scenario())
