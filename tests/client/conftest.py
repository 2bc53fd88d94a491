"""Shared builders for the client tests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dtq_client.models import Progress, Task, TaskError, TaskState


@pytest.fixture
def full_task() -> Task:
    """A task with every field set to a non-default value."""
    return Task(
        id="0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10",
        type="email.send",
        queue="mail",
        state=TaskState.FAILED,
        attempt=3,
        max_attempts=3,
        failures=2,
        idempotency_key="order-42",
        payload=b'{"to":"ada@example.com"}',
        content_type="application/json",
        result=b'{"sent":false}',
        result_content_type="application/json",
        last_error=TaskError(
            type="SMTPError", message="relay refused", traceback="Traceback ...", retryable=True
        ),
        node_id="host-1234",
        lease_expiries=1,
        cancel_requested=True,
        progress=Progress(percent=42.5, message="halfway"),
        created_at=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        updated_at=datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC),
        started_at=datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC),
        finished_at=datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC),
        next_attempt_at=datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC),
    )
