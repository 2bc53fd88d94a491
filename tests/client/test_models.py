from __future__ import annotations

import pytest

from dtq_client.errors import PayloadError
from dtq_client.models import CancelCounts, QueueStats, Task, TaskState


def test_state_values_are_lower_case_names() -> None:
    assert [s.value for s in TaskState] == [s.name.lower() for s in TaskState]
    assert TaskState("running") is TaskState.RUNNING


@pytest.mark.parametrize("state", list(TaskState))
def test_terminal_states(state: TaskState) -> None:
    terminal = state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)
    assert state.is_terminal is terminal
    assert Task(id="t", type="x", queue="q", state=state).is_terminal is terminal


def test_payload_and_result_values(full_task: Task) -> None:
    assert full_task.payload_value() == {"to": "ada@example.com"}
    assert full_task.result_value() == {"sent": False}


def test_values_of_a_task_without_result_or_json() -> None:
    task = Task(
        id="t",
        type="x",
        queue="q",
        state=TaskState.QUEUED,
        payload=b"\x01",
        content_type="application/octet-stream",
    )
    assert task.payload_value() == b"\x01"
    assert task.result_value() is None


def test_invalid_json_payload_raises_payload_error() -> None:
    task = Task(id="t", type="x", queue="q", state=TaskState.QUEUED, payload=b"{")
    with pytest.raises(PayloadError):
        task.payload_value()


def test_queue_total() -> None:
    assert QueueStats("q", 1, 2, 3, 4, 5).total == 15


def test_queue_settings_default_to_running_without_a_limit() -> None:
    stats = QueueStats("q")
    assert (stats.paused, stats.max_running) == (False, 0)


def test_cancel_counts_unpack_as_a_pair() -> None:
    cancelled, cancel_requested = CancelCounts(cancelled=2, cancel_requested=1)
    assert (cancelled, cancel_requested) == (2, 1)
