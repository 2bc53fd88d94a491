"""The coordinator's garbage-collector pace (dtq_server.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dtq_server import collector


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """The test process's thresholds, restored afterwards."""
    before = gc.get_threshold()
    try:
        yield before
    finally:
        gc.set_threshold(*before)


def test_tune_collects_the_young_generation_less_often(thresholds: tuple[int, int, int]) -> None:
    collector.tune()
    young, middle, oldest = gc.get_threshold()
    assert young == collector.YOUNG_THRESHOLD > thresholds[0]
    assert (middle, oldest) == thresholds[1:]  # the older generations keep their pace
