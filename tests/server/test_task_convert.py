"""A stored task as the coordinator sends it, read back by the client's parser.

``task_to_proto`` writes sub-messages in place (for speed), so a field it
forgets or misplaces would not show up as a type error: these tests check every
field of ``dtq.v1.Task`` on the wire and what ``dtq_client`` makes of it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from dtq.v1 import task_pb2
from dtq_client import convert as client_convert
from dtq_client.models import TaskState as ClientState
from dtq_server.models import Progress, TaskError, TaskRecord, TaskState
from dtq_server.servicers.convert import task_to_proto

CREATED = 1_764_201_600.123456

MINIMAL = TaskRecord(
    id="t-1", seq=1, type="echo", queue="default", payload=b"[1]",
    content_type="application/json", state=TaskState.SUCCEEDED, attempt=0, max_attempts=3,
    failures=0, idempotency_key=None, retry_backoff_s=None, result=None,
    result_content_type="", last_error=None, node_id=None, session_id=None, lease_expiries=0,
    cancel_requested=False, progress=None, created_at=CREATED, updated_at=CREATED + 1,
    started_at=None, finished_at=None, next_attempt_at=None, priority=0, run_at=None,
    execution_timeout_s=None, expires_at=None, rate_key="", depends_on=(), group_id=None,
)  # fmt: skip
FULL = dataclasses.replace(
    MINIMAL, state=TaskState.QUEUED, attempt=2, failures=1, idempotency_key="key-1",
    result=b"\x00\xff", result_content_type="application/octet-stream",
    last_error=TaskError("ValueError", "bad", "Traceback ...", retryable=True),
    node_id="node-1", lease_expiries=1, cancel_requested=True,
    progress=Progress(42.5, "half"), started_at=CREATED + 2, finished_at=CREATED + 3,
    next_attempt_at=CREATED + 4, priority=-3, run_at=CREATED + 5,
    execution_timeout_s=2.5, expires_at=CREATED + 6, rate_key="api", depends_on=("a", "b"),
    group_id="g-1", submitted_by="billing-app", headers=(("tenant", "acme"), ("trace", "t-1")),
)  # fmt: skip


def _over_the_wire(record: TaskRecord) -> task_pb2.Task:
    return task_pb2.Task.FromString(task_to_proto(record).SerializeToString())


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(round(seconds, 6), UTC)


def test_a_full_task_writes_every_field_of_the_contract() -> None:
    wire = _over_the_wire(FULL)
    assert {field.name for field, _ in wire.ListFields()} == {
        field.name for field in task_pb2.Task.DESCRIPTOR.fields
    }


def test_a_minimal_task_leaves_the_optional_fields_unset() -> None:
    wire = _over_the_wire(MINIMAL)
    assert {field.name for field, _ in wire.ListFields()} == {
        "id", "type", "queue", "payload", "state", "max_attempts", "create_time", "update_time",
    }  # fmt: skip


def test_the_client_reads_back_what_was_stored() -> None:
    task = client_convert.task_from_proto(_over_the_wire(FULL))
    assert (task.id, task.type, task.queue) == ("t-1", "echo", "default")
    assert task.state is ClientState.QUEUED
    assert (task.payload, task.content_type) == (b"[1]", "application/json")
    assert (task.result, task.result_content_type) == (b"\x00\xff", "application/octet-stream")
    assert (task.attempt, task.max_attempts, task.failures) == (2, 3, 1)
    assert (task.idempotency_key, task.node_id, task.lease_expiries) == ("key-1", "node-1", 1)
    assert task.cancel_requested is True
    assert task.last_error is not None
    assert (task.last_error.type, task.last_error.message, task.last_error.retryable) == (
        "ValueError", "bad", True,
    )  # fmt: skip
    assert task.progress is not None and (task.progress.percent, task.progress.message) == (
        42.5, "half",
    )  # fmt: skip
    assert [
        task.created_at, task.updated_at, task.started_at, task.finished_at,
        task.next_attempt_at, task.scheduled_at, task.expires_at,
    ] == [_at(CREATED + offset) for offset in range(7)]  # fmt: skip
    assert (task.priority, task.execution_timeout_s, task.rate_key) == (-3, 2.5, "api")
    assert (task.depends_on, task.group_id) == (("a", "b"), "g-1")
    assert task.submitted_by == "billing-app"
    assert task.headers == {"tenant": "acme", "trace": "t-1"}


def test_a_retry_time_is_sent_only_while_the_task_waits_in_the_queue() -> None:
    running = dataclasses.replace(FULL, state=TaskState.RUNNING)
    assert not _over_the_wire(running).HasField("next_attempt_time")
