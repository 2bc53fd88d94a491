from __future__ import annotations

from enum import StrEnum

import pytest

from dtq_client.errors import PayloadError
from dtq_client.models import (
    CancelCounts,
    DependencyFailure,
    GroupState,
    MissedTicks,
    QueueStats,
    Task,
    TaskSpec,
    TaskState,
)


@pytest.mark.parametrize("enum", [TaskState, GroupState, DependencyFailure, MissedTicks])
def test_enum_values_are_lower_case_names(enum: type[StrEnum]) -> None:
    assert [s.value for s in enum] == [s.name.lower() for s in enum]
    assert TaskState("running") is TaskState.RUNNING


def test_only_a_running_group_is_unfinished() -> None:
    assert [s for s in GroupState if not s.is_terminal] == [GroupState.RUNNING]


def test_a_spec_keeps_its_dependencies_as_a_tuple() -> None:
    spec = TaskSpec("echo", depends_on=["a", "b"], on_dependency_failure="cancel")  # type: ignore[arg-type]
    assert spec.depends_on == ("a", "b")
    assert spec.on_dependency_failure is DependencyFailure.CANCEL
    assert spec == TaskSpec(
        "echo", depends_on=("a", "b"), on_dependency_failure=DependencyFailure.CANCEL
    )
    with pytest.raises(TypeError):
        TaskSpec("echo", depends_on="a")
    with pytest.raises(ValueError):
        TaskSpec("echo", on_dependency_failure="retry")  # type: ignore[arg-type]


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
