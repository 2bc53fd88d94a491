"""The proto3 JSON view of any model, as the CLI prints it."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from dtq.v1 import task_pb2, task_service_pb2
from dtq_client import payloads
from dtq_client.convert.cluster import (
    lease_to_proto,
    node_to_proto,
    queue_stats_to_proto,
    rate_limit_to_proto,
)
from dtq_client.convert.schedules import schedule_to_proto
from dtq_client.convert.tasks import (
    cancel_counts_to_proto,
    group_to_proto,
    retry_result_to_proto,
    spec_to_proto,
    submit_ack_to_proto,
    submit_result_to_proto,
    submitted_group_to_proto,
    task_to_proto,
)
from dtq_client.models import (
    CancelCounts,
    Group,
    Lease,
    Node,
    QueueStats,
    RateLimit,
    RetryResult,
    Schedule,
    SubmitAck,
    SubmitResult,
    SubmittedGroup,
    Task,
    TaskSpec,
)

Model = (
    Task
    | TaskSpec
    | SubmitResult
    | SubmitAck
    | SubmittedGroup
    | Group
    | Node
    | Lease
    | QueueStats
    | RateLimit
    | Schedule
    | CancelCounts
    | RetryResult
)
"""Everything :func:`to_message` and :func:`to_json` accept."""


def to_message(model: Model) -> Message:
    """The protobuf message of any model."""
    match model:
        case Task():
            return task_to_proto(model)
        case TaskSpec():
            return spec_to_proto(model)
        case SubmitResult():
            return submit_result_to_proto(model)
        case SubmitAck():
            return submit_ack_to_proto(model)
        case SubmittedGroup():
            return submitted_group_to_proto(model)
        case Group():
            return group_to_proto(model)
        case Node():
            return node_to_proto(model)
        case Lease():
            return lease_to_proto(model)
        case QueueStats():
            return queue_stats_to_proto(model)
        case RateLimit():
            return rate_limit_to_proto(model)
        case Schedule():
            return schedule_to_proto(model)
        case CancelCounts():
            return cancel_counts_to_proto(model)
        case RetryResult():
            return retry_result_to_proto(model)


def to_json(model: Model) -> dict[str, Any]:
    """The proto3 JSON mapping of ``model``, with decoded JSON payloads.

    Fields at their default value are included, so that scripts can rely on
    every key being present. Every ``Payload`` whose content type is JSON (or
    empty) also gets a ``"json"`` key holding the decoded value next to
    ``data`` (base64) and ``contentType``.
    """
    return message_json(to_message(model))


def deleted_to_json(deleted: int) -> dict[str, Any]:
    """The proto3 JSON mapping of a ``dtq.v1.PurgeTasksResponse``."""
    return message_json(task_service_pb2.PurgeTasksResponse(deleted=deleted))


def message_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON mapping of any message, as :func:`to_json` shapes it."""
    data = MessageToDict(message, always_print_fields_with_no_presence=True)
    _add_decoded_payloads(message, data)
    return data


def _add_decoded_payloads(message: Message, data: dict[str, Any]) -> None:
    if isinstance(message, task_pb2.Payload):
        if payloads.is_json(message.content_type):
            # Not valid JSON despite its type: show only the raw data.
            with contextlib.suppress(ValueError):
                data["json"] = json.loads(message.data)
        return
    for field, value in message.ListFields():
        if field.message_type is None or field.json_name not in data:
            continue
        if field.message_type.GetOptions().map_entry:
            continue  # no map in dtq.v1 holds a payload
        if field.is_repeated:
            for item, item_data in zip(value, data[field.json_name], strict=True):
                _add_decoded_payloads(item, item_data)
        else:
            _add_decoded_payloads(value, data[field.json_name])
