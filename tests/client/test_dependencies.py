"""Task dependencies and groups through the client, against a real coordinator and worker nodes.

Tasks go to a queue of the test's own (the ``queue`` fixture), which no node
serves until the test starts one (``served``): so a parent cannot finish
before its children are submitted, and every WAITING below is certain.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from dtq_client import (
    Client,
    ClientConfig,
    Group,
    GroupNotFound,
    GroupState,
    InvalidArgument,
    RetryPolicy,
    TaskSpec,
    TaskState,
)
from tests.harness import wait_until

from .conftest import NOBODY, Cluster

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=10.0)
UNKNOWN_ID = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    config = ClientConfig(address=cluster.address, timeout_s=5.0, retry=FAST_RETRY)
    with Client.from_config(config) as client:
        yield client


def wait_for_group(client: Client, group_id: str, timeout_s: float = 15) -> Group:
    """The group once every member finished; fails after ``timeout_s``."""

    def finished() -> Group | None:
        group = client.get_group(group_id)
        return group if group.is_terminal else None

    group = wait_until(finished, timeout_s, what=f"group {group_id} to finish")
    assert group is not None
    return group


# --- dependencies --------------------------------------------------------------------------


def test_a_child_waits_for_all_its_parents_then_runs(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    parents = [client.submit("sleep", {"seconds": 0.1}, queue=queue) for _ in range(2)]
    parent_ids = tuple(p.id for p in parents)
    child = client.submit("echo", {"after": "parents"}, queue=queue, depends_on=parent_ids)
    assert (child.state, child.depends_on) == (TaskState.WAITING, parent_ids)
    assert not child.is_terminal
    assert [t.id for t in client.list_tasks(queue=queue, state="waiting")] == [child.id]
    with contextlib.closing(client.watch(child.id)) as changes:
        assert next(changes).state is TaskState.WAITING  # a watch starts from waiting too
    served(2)
    done = client.wait(child.id, timeout_s=15)
    assert (done.state, done.result_value()) == (TaskState.SUCCEEDED, {"after": "parents"})
    finished = [client.get(task_id) for task_id in parent_ids]
    assert {p.state for p in finished} == {TaskState.SUCCEEDED}
    assert all(p.finished_at is not None for p in finished)
    assert done.started_at is not None
    assert done.started_at >= max(p.finished_at for p in finished if p.finished_at)


def test_a_failed_parent_cascades_down_by_policy(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    parent = client.submit("fail", {"message": "boom"}, queue=queue, max_attempts=1)
    fails = client.submit("echo", queue=queue, depends_on=[parent.id])
    cancels = client.submit(
        "echo", queue=queue, depends_on=[parent.id], on_dependency_failure="cancel"
    )
    grandchild = client.submit("echo", queue=queue, depends_on=[fails.id])
    assert {t.state for t in (fails, cancels, grandchild)} == {TaskState.WAITING}
    served(1)
    assert client.wait(parent.id, timeout_s=15).state is TaskState.FAILED
    failed, cancelled, cascaded = (client.wait(t.id, 10) for t in (fails, cancels, grandchild))
    assert (failed.state, cancelled.state, cascaded.state) == (
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.FAILED,
    )
    for task in (failed, cascaded):
        assert task.last_error is not None
        assert task.last_error.type == "DEPENDENCY_FAILED"
    # Each names the task that ended it, a level at a time.
    assert failed.last_error is not None and cascaded.last_error is not None
    assert failed.last_error.message == f"dependency {parent.id} ended failed"
    assert cascaded.last_error.message == f"dependency {fails.id} ended failed"
    assert {t.attempt for t in (failed, cancelled, cascaded)} == {0}  # none of them ran
    # A task submitted after its dependency failed is failed at once.
    late = client.submit("echo", queue=queue, depends_on=[parent.id])
    assert late.state is TaskState.FAILED


def test_cancelling_parents_and_waiting_tasks(client: Client, queue: str) -> None:
    parent = client.submit(NOBODY, queue=queue)
    child = client.submit(NOBODY, queue=queue, depends_on=[parent.id])
    assert client.cancel(parent.id).state is TaskState.CANCELLED
    failed = client.wait(child.id, timeout_s=5)  # the default policy fails it
    assert failed.state is TaskState.FAILED
    assert failed.last_error is not None and failed.last_error.type == "DEPENDENCY_FAILED"
    # Bulk cancel takes waiting tasks (first, so that the cascade cannot fail them).
    other = client.submit(NOBODY, queue=queue)
    waiting = [client.submit(NOBODY, queue=queue, depends_on=[other.id]) for _ in range(2)]
    assert client.cancel_tasks(queue=queue, state=TaskState.WAITING) == (2, 0)
    assert {client.get(t.id).state for t in waiting} == {TaskState.CANCELLED}
    assert client.get(other.id).state is TaskState.QUEUED
    assert client.cancel(waiting[0].id).state is TaskState.CANCELLED  # a no-op, as for any


def test_bad_dependencies_are_refused(client: Client, queue: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.submit(NOBODY, queue=queue, depends_on=[UNKNOWN_ID])
    assert [field for field, _ in info.value.field_violations] == ["task.depends_on[0]"]
    parent = client.submit(NOBODY, queue=queue)
    with pytest.raises(TypeError):
        client.submit(NOBODY, queue=queue, depends_on=parent.id)
    with pytest.raises(ValueError):
        client.submit(NOBODY, queue=queue, depends_on=[parent.id], on_dependency_failure="skip")
    [result] = client.submit_many([TaskSpec(NOBODY, queue=queue, depends_on=[parent.id])])
    assert (result.task.state, result.task.depends_on) == (TaskState.WAITING, (parent.id,))
    assert result.task.group_id is None  # submit_many makes no group


# --- groups --------------------------------------------------------------------------------


def test_a_group_aggregates_its_members(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    specs = [TaskSpec("echo", i, queue=queue) for i in range(2)]
    specs.append(TaskSpec("fail", {"message": "boom"}, queue=queue, max_attempts=1))
    submitted = client.submit_group(specs)
    assert [r.created for r in submitted.results] == [True] * 3
    assert {t.group_id for t in submitted.tasks} == {submitted.group_id}
    assert client.get_group(submitted.group_id) == Group(
        id=submitted.group_id,
        state=GroupState.RUNNING,
        total=3,
        pending=3,
        task_ids=tuple(t.id for t in submitted.tasks),
    )
    served(2)
    done = wait_for_group(client, submitted.group_id)
    assert (done.state, done.succeeded, done.failed) == (GroupState.FAILED, 2, 1)
    assert (done.pending, done.running, done.cancelled) == (0, 0, 0)


def test_a_resubmitted_group_is_the_group_first_stored(client: Client) -> None:
    prefix = uuid.uuid4().hex
    specs = [TaskSpec("echo", i, idempotency_key=f"{prefix}-{i}") for i in range(3)]
    first = client.submit_group(specs)
    done = wait_for_group(client, first.group_id)
    assert (done.state, done.succeeded, done.total) == (GroupState.SUCCEEDED, 3, 3)
    # What a retry after a lost answer does: the tasks exist, so nothing new is stored,
    # and the group is the one they are in (the coordinator answers a fresh, empty one).
    again = client.submit_group(specs)
    assert again.group_id == first.group_id
    assert [r.created for r in again.results] == [False] * 3
    assert [t.id for t in again.tasks] == [t.id for t in first.tasks]
    with pytest.raises(GroupNotFound):
        client.get_group(uuid.uuid4().hex)
