"""Protobuf <-> model conversion: with the client's calls, the only code that sees ``_pb2`` types.

Conversions go both ways so that the CLI can print any model in the proto3
JSON mapping (:func:`to_json`). On the way in, an empty content type becomes
``application/json`` (its meaning on the wire), so ``from_proto(to_proto(x)) == x``
holds for every model while ``to_proto(from_proto(m))`` may spell that default out.
A naive ``datetime`` going out (such as a spec's ``run_at``) is local time, as
``datetime.timestamp()`` reads it; every ``datetime`` coming in is aware UTC.

One module per part of the contract: :mod:`~dtq_client.convert.tasks` (tasks,
specs, groups, bulk results), :mod:`~dtq_client.convert.cluster` (nodes,
queues, rate limits), :mod:`~dtq_client.convert.schedules`, and
:mod:`~dtq_client.convert.view` (the JSON view); every name is re-exported here.
"""

from __future__ import annotations

from dtq_client.convert.cluster import (
    lease_from_proto,
    lease_to_proto,
    node_from_proto,
    node_state_from_proto,
    node_to_proto,
    queue_stats_from_proto,
    queue_stats_to_proto,
    rate_limit_from_proto,
    rate_limit_to_proto,
)
from dtq_client.convert.scalars import duration_to_proto
from dtq_client.convert.schedules import (
    missed_ticks_from_proto,
    missed_ticks_to_proto,
    schedule_from_proto,
    schedule_to_proto,
)
from dtq_client.convert.tasks import (
    cancel_counts_from_proto,
    cancel_counts_to_proto,
    dependency_failure_from_proto,
    dependency_failure_to_proto,
    fill_spec,
    group_from_proto,
    group_state_from_proto,
    group_to_proto,
    progress_from_proto,
    progress_to_proto,
    retry_result_from_proto,
    retry_result_to_proto,
    spec_from_proto,
    spec_to_proto,
    submit_ack_from_proto,
    submit_ack_to_proto,
    submit_result_from_proto,
    submit_result_to_proto,
    submitted_group_to_proto,
    task_error_from_proto,
    task_error_to_proto,
    task_from_proto,
    task_state_from_proto,
    task_state_to_proto,
    task_to_proto,
)
from dtq_client.convert.view import Model, deleted_to_json, message_json, to_json, to_message

__all__ = [
    "Model",
    "cancel_counts_from_proto",
    "cancel_counts_to_proto",
    "deleted_to_json",
    "dependency_failure_from_proto",
    "dependency_failure_to_proto",
    "duration_to_proto",
    "fill_spec",
    "group_from_proto",
    "group_state_from_proto",
    "group_to_proto",
    "lease_from_proto",
    "lease_to_proto",
    "message_json",
    "missed_ticks_from_proto",
    "missed_ticks_to_proto",
    "node_from_proto",
    "node_state_from_proto",
    "node_to_proto",
    "progress_from_proto",
    "progress_to_proto",
    "queue_stats_from_proto",
    "queue_stats_to_proto",
    "rate_limit_from_proto",
    "rate_limit_to_proto",
    "retry_result_from_proto",
    "retry_result_to_proto",
    "schedule_from_proto",
    "schedule_to_proto",
    "spec_from_proto",
    "spec_to_proto",
    "submit_ack_from_proto",
    "submit_ack_to_proto",
    "submit_result_from_proto",
    "submit_result_to_proto",
    "submitted_group_to_proto",
    "task_error_from_proto",
    "task_error_to_proto",
    "task_from_proto",
    "task_state_from_proto",
    "task_state_to_proto",
    "task_to_proto",
    "to_json",
    "to_message",
]
