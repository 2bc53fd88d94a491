"""The curated public API of dtq_worker."""

from __future__ import annotations

import dtq_worker
from dtq_worker import WorkerError


def test_all_is_sorted_and_importable() -> None:
    assert dtq_worker.__all__ == sorted(dtq_worker.__all__)
    for name in dtq_worker.__all__:
        assert getattr(dtq_worker, name).__doc__, name


def test_the_documented_names_are_public() -> None:
    expected = {
        "Registry",
        "TaskContext",
        "NonRetryableError",
        "TaskCancelled",
        "WorkerConfig",
        "Node",
        "run_node",
    }
    assert expected <= set(dtq_worker.__all__)


def test_every_error_derives_from_worker_error() -> None:
    errors = [
        getattr(dtq_worker, name)
        for name in dtq_worker.__all__
        if isinstance(getattr(dtq_worker, name), type)
        and issubclass(getattr(dtq_worker, name), Exception)
    ]
    assert len(errors) > 5
    assert all(issubclass(error, WorkerError) for error in errors)
