"""How the CLI prints models: rich tables, or the proto3 JSON mapping.

Data goes to stdout only; :class:`Printer` never writes messages. JSON output
is written raw (no highlighting or wrapping), so it is always parseable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from dtq_client import convert, payloads
from dtq_client.models import (
    CancelCounts,
    Group,
    GroupState,
    Node,
    NodeState,
    QueueStats,
    RateLimit,
    RetryResult,
    Schedule,
    Task,
    TaskState,
)

_PREVIEW_CHARS = 500

STATE_STYLES: dict[str, str] = {
    TaskState.WAITING: "dim cyan",
    TaskState.QUEUED: "cyan",
    TaskState.LEASED: "yellow",
    TaskState.RUNNING: "blue",
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "bold red",
    TaskState.CANCELLED: "magenta",
    NodeState.ACTIVE: "green",
    NodeState.DRAINING: "yellow",
    NodeState.DISCONNECTED: "magenta",
    NodeState.DEAD: "bold red",
    NodeState.LEFT: "dim",
}
"""Rich style of each task and node state (the two enums share no value).

A group state has the style of the task state of the same name.
"""


class OutputFormat(StrEnum):
    """The ``-o`` choices."""

    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"


class Printer:
    """Writes models to stdout in one :class:`OutputFormat`."""

    def __init__(self, fmt: OutputFormat, console: Console) -> None:
        self.fmt = fmt
        self.console = console

    def task(self, task: Task) -> None:
        """One task: a key-value view, or one JSON object."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(task_view(task))
        else:
            self._json(convert.to_json(task))

    def tasks(self, tasks: Sequence[Task]) -> None:
        """A list of tasks: a table, a JSON array or JSON lines."""
        self._many(tasks, tasks_table)

    def nodes(self, nodes: Sequence[Node]) -> None:
        """A list of nodes."""
        self._many(nodes, nodes_table)

    def node(self, node: Node) -> None:
        """One node."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(nodes_table([node]))
        else:
            self._json(convert.to_json(node))

    def queues(self, queues: Sequence[QueueStats]) -> None:
        """A list of queue statistics."""
        self._many(queues, queues_table)

    def queue(self, stats: QueueStats) -> None:
        """One queue: a one-row table, or one JSON object."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(queues_table([stats]))
        else:
            self._json(convert.to_json(stats))

    def cancel_counts(self, counts: CancelCounts) -> None:
        """What a bulk cancel did, shaped like ``dtq.v1.CancelTasksResponse`` in JSON."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(
                counts_view(
                    [("cancelled", counts.cancelled), ("cancel requested", counts.cancel_requested)]
                )
            )
        else:
            self._json(convert.to_json(counts))

    def retried(self, result: RetryResult) -> None:
        """What a retry did, shaped like ``dtq.v1.RetryTasksResponse`` in JSON."""
        if self.fmt is OutputFormat.TABLE:
            counts = [("retried", result.retried), ("skipped", len(result.skipped_task_ids))]
            self.console.print(counts_view(counts))
        else:
            self._json(convert.to_json(result))

    def deleted(self, deleted: int) -> None:
        """How many tasks a purge deleted, shaped like ``dtq.v1.PurgeTasksResponse`` in JSON."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(counts_view([("deleted", deleted)]))
        else:
            self._json(convert.deleted_to_json(deleted))

    def group(self, group: Group) -> None:
        """A group's status: a key-value view with its member ids, or one JSON object."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(group_view(group))
        else:
            self._json(convert.to_json(group))

    def schedules(self, schedules: Sequence[Schedule]) -> None:
        """A list of schedules."""
        self._many(schedules, schedules_table)

    def schedule(self, schedule: Schedule) -> None:
        """One schedule: a key-value view, or one JSON object."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(schedule_view(schedule))
        else:
            self._json(convert.to_json(schedule))

    def rate_limits(self, limits: Sequence[RateLimit]) -> None:
        """A list of rate-key limits."""
        self._many(limits, rate_limits_table)

    def rate_limit(self, limit: RateLimit) -> None:
        """One rate-key limit: a one-row table, or one JSON object."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(rate_limits_table([limit]))
        else:
            self._json(convert.to_json(limit))

    def empty(self) -> None:
        """An empty response (a delete): nothing in a table, ``{}`` in JSON."""
        if self.fmt is not OutputFormat.TABLE:
            self._json({})

    def change(self, task: Task) -> None:
        """One state of a watched task: a line, or one JSON object (never an array)."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(change_line(task))
        else:
            self._json(convert.to_json(task))

    def health(self, status: str) -> None:
        """A health status, shaped like ``grpc.health.v1.HealthCheckResponse`` in JSON."""
        if self.fmt is OutputFormat.TABLE:
            self.console.print(Text(status, style="green" if status == "SERVING" else "bold red"))
        else:
            self._json({"status": status})

    def _many(self, models: Sequence[Any], table: Callable[[Sequence[Any]], Table]) -> None:
        if self.fmt is OutputFormat.TABLE:
            self.console.print(table(models))
        elif self.fmt is OutputFormat.JSON:
            click.echo(json.dumps([convert.to_json(m) for m in models], indent=2))
        else:
            for model in models:
                click.echo(json.dumps(convert.to_json(model), ensure_ascii=False))

    def _json(self, data: dict[str, Any]) -> None:
        if self.fmt is OutputFormat.JSON:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            click.echo(json.dumps(data, ensure_ascii=False))


# --- renderables ---------------------------------------------------------------------------


def task_view(task: Task) -> Table:
    """A two-column view of every field of ``task`` that is set."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, RenderableType | None]] = [
        ("id", Text(task.id)),
        ("type", Text(task.type)),
        ("queue", Text(task.queue)),
        ("state", state_text(task.state)),
        ("attempt", Text(f"{task.attempt} of {task.max_attempts}")),
        ("priority", Text(str(task.priority)) if task.priority else None),
        ("rate key", _optional(task.rate_key)),
        ("depends on", Text("\n".join(task.depends_on)) if task.depends_on else None),
        ("group", _optional(task.group_id)),
        ("submitted by", _optional(task.submitted_by)),
        ("headers", _headers_text(task.headers)),
        ("failures", Text(str(task.failures)) if task.failures else None),
        ("lease expiries", Text(str(task.lease_expiries)) if task.lease_expiries else None),
        ("cancel requested", Text("yes", style="magenta") if task.cancel_requested else None),
        ("node", _optional(task.node_id)),
        ("idempotency key", _optional(task.idempotency_key)),
        ("progress", Text(progress_text(task)) if task.progress else None),
        ("payload", Text(payload_preview(task.payload, task.content_type))),
        (
            "result",
            None
            if task.result is None
            else Text(payload_preview(task.result, task.result_content_type)),
        ),
        ("error", _error_text(task)),
        ("created", _optional(format_time(task.created_at))),
        ("updated", _optional(format_time(task.updated_at))),
        ("started", _optional(format_time(task.started_at))),
        ("finished", _optional(format_time(task.finished_at))),
        ("next attempt", _optional(format_time(task.next_attempt_at))),
        ("scheduled", _optional(format_time(task.scheduled_at))),
        (
            "execution timeout",
            None
            if task.execution_timeout_s is None
            else Text(format_seconds(task.execution_timeout_s)),
        ),
        ("expires", _optional(format_time(task.expires_at))),
    ]
    for key, value in rows:
        if value is not None:
            grid.add_row(key, value)
    return grid


def tasks_table(tasks: Sequence[Task]) -> Table:
    """One row per task."""
    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=36)
    for name in ("TYPE", "QUEUE", "STATE", "ATTEMPT", "NODE"):
        table.add_column(name)
    table.add_column("UPDATED", no_wrap=True, min_width=24)
    for task in tasks:
        table.add_row(
            Text(task.id),
            Text(task.type),
            Text(task.queue),
            state_text(task.state),
            Text(f"{task.attempt}/{task.max_attempts}"),
            Text(task.node_id or "-"),
            Text(format_time(task.updated_at) or "-"),
        )
    return table


def nodes_table(nodes: Sequence[Node]) -> Table:
    """One row per node."""
    table = Table(box=None, header_style="bold")
    for name in ("NODE", "STATE", "HOST", "PID", "VERSION", "BUSY", "PREFETCH", "QUEUES", "TYPES"):
        table.add_column(name)
    table.add_column("RESTARTS", justify="right")
    table.add_column("LAST SEEN")
    for node in nodes:
        table.add_row(
            Text(node.node_id),
            state_text(node.state),
            Text(node.hostname),
            Text(str(node.pid)),
            Text(node.version),
            Text(f"{node.busy_slots}/{node.slots}"),
            Text(str(node.prefetch)),
            Text(format_some(node.queues, separator=",")),
            Text(format_some(node.task_types, separator=",")),
            Text(str(node.supervisor_restarts)),
            Text(format_time(node.last_seen_at) or "-"),
        )
    return table


def queues_table(queues: Sequence[QueueStats]) -> Table:
    """One row per queue: its task counts, whether it is paused, its limits."""
    table = Table(box=None, header_style="bold")
    table.add_column("QUEUE")
    for name in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
        table.add_column(name, justify="right")
    table.add_column("PAUSED")
    table.add_column("MAX RUNNING", justify="right")
    table.add_column("RATE/S", justify="right")
    table.add_column("MAX DEPTH", justify="right")
    for stats in queues:
        counts = (stats.queued, stats.running, stats.succeeded, stats.failed, stats.cancelled)
        table.add_row(
            Text(stats.name),
            *(Text(str(count)) for count in counts),
            Text("yes", style="yellow") if stats.paused else Text("no"),
            Text(str(stats.max_running) if stats.max_running else "-"),
            Text(format_rate(stats.rate_limit) if stats.rate_limit else "-"),
            Text(str(stats.max_depth) if stats.max_depth else "-"),
        )
    return table


def group_view(group: Group) -> Table:
    """A two-column view of a group: its state, member counts and member ids."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("id", Text(group.id))
    grid.add_row("state", state_text(group.state))
    for name in ("total", "pending", "running", "succeeded", "failed", "cancelled"):
        grid.add_row(name, Text(str(getattr(group, name))))
    grid.add_row("tasks", Text("\n".join(group.task_ids)))
    return grid


def schedule_timing(schedule: Schedule) -> str:
    """``cron 0 3 * * *`` or ``every 30 s``."""
    if schedule.cron is not None:
        return f"cron {schedule.cron}"
    if schedule.interval_s is not None:
        return f"every {format_seconds(schedule.interval_s)}"
    return "-"


def _missed_ticks(schedule: Schedule) -> str:
    """The missed-ticks policy as the CLI spells it (``run-once``), the default spelled out."""
    return str(schedule.missed_ticks or "run_once").replace("_", "-")


def schedules_table(schedules: Sequence[Schedule]) -> Table:
    """One row per schedule: timing, task, state and its next and last ticks."""
    table = Table(box=None, header_style="bold")
    for name in ("NAME", "TIMING", "ZONE", "TYPE", "QUEUE", "PAUSED", "MISSED"):
        table.add_column(name)
    table.add_column("FIRED", justify="right")
    table.add_column("NEXT", no_wrap=True)
    table.add_column("LAST", no_wrap=True)
    for schedule in schedules:
        table.add_row(
            Text(schedule.name),
            Text(schedule_timing(schedule)),
            Text(schedule.time_zone or "UTC"),
            Text(schedule.task.type),
            Text(schedule.task.queue or "default"),
            Text("yes", style="yellow") if schedule.paused else Text("no"),
            Text(_missed_ticks(schedule)),
            Text(str(schedule.fired_count)),
            _next_fire(schedule),
            Text(format_time(schedule.last_fire_at) or "-"),
        )
    return table


def _next_fire(schedule: Schedule) -> Text:
    """The next tick; a tick the coordinator could not fire is marked (``get`` says why)."""
    text = Text(format_time(schedule.next_fire_at) or "-")
    if schedule.last_error is not None:
        text.append(" failing", style="red")
    return text


def schedule_view(schedule: Schedule) -> Table:
    """A two-column view of a schedule and its task template."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    spec = schedule.task
    data, content_type = payloads.encode(spec.payload, spec.content_type)
    rows: list[tuple[str, RenderableType | None]] = [
        ("name", Text(schedule.name)),
        ("timing", Text(schedule_timing(schedule))),
        ("time zone", Text(schedule.time_zone or "UTC")),
        ("paused", Text("yes", style="yellow") if schedule.paused else Text("no")),
        ("missed ticks", Text(_missed_ticks(schedule))),
        ("fired", Text(str(schedule.fired_count))),
        ("next fire", _optional(format_time(schedule.next_fire_at))),
        ("last fire", _optional(format_time(schedule.last_fire_at))),
        ("created", _optional(format_time(schedule.created_at))),
        (
            "last error",
            None
            if schedule.last_error is None
            else Text(f"{schedule.last_error} (at {format_time(schedule.last_error_at)})", "red"),
        ),
        ("type", Text(spec.type)),
        ("queue", Text(spec.queue or "default")),
        ("payload", Text(payload_preview(data, content_type))),
        ("priority", Text(str(spec.priority)) if spec.priority else None),
        ("max attempts", Text(str(spec.max_attempts)) if spec.max_attempts else None),
        ("rate key", _optional(spec.rate_key)),
        ("headers", _headers_text(spec.headers)),
        (
            "execution timeout",
            None
            if spec.execution_timeout_s is None
            else Text(format_seconds(spec.execution_timeout_s)),
        ),
    ]
    for key, value in rows:
        if value is not None:
            grid.add_row(key, value)
    return grid


def rate_limits_table(limits: Sequence[RateLimit]) -> Table:
    """One row per rate key: tasks per second and burst."""
    table = Table(box=None, header_style="bold")
    table.add_column("KEY")
    table.add_column("PER SECOND", justify="right")
    table.add_column("BURST", justify="right")
    for limit in limits:
        table.add_row(Text(limit.key), Text(format_rate(limit.per_second)), Text(str(limit.burst)))
    return table


def counts_view(counts: Sequence[tuple[str, int]]) -> Table:
    """A two-column view of named counts (what a bulk operation did)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(justify="right")
    for name, count in counts:
        grid.add_row(name, Text(str(count)))
    return grid


def change_line(task: Task) -> Text:
    """One line for a watched task's state: time, state, attempt, node, progress."""
    line = Text(f"{format_time(task.updated_at) or '-'}  ")
    line.append_text(state_text(task.state))
    line.append(" " * max(1, 10 - len(task.state)))
    line.append(f"attempt {task.attempt}/{task.max_attempts}")
    if task.node_id:
        line.append(f"  node {task.node_id}")
    if task.progress is not None:
        line.append(f"  {progress_text(task)}")
    if task.cancel_requested and not task.is_terminal:
        line.append("  cancel requested", style="magenta")
    if task.is_terminal and task.last_error is not None and task.state is not TaskState.SUCCEEDED:
        line.append(f"  {task.last_error.type}: {task.last_error.message}")
    return line


# --- pieces --------------------------------------------------------------------------------


def state_text(state: TaskState | NodeState | GroupState) -> Text:
    """A state name in its colour."""
    return Text(str(state), style=STATE_STYLES.get(state, ""))


NAMES_SHOWN = 20
"""Queues or task types a node's row names (a node may serve 100,000 queues)."""


def format_some(names: Sequence[str], shown: int = NAMES_SHOWN, separator: str = ", ") -> str:
    """``a, b, c``, or the first ``shown`` of ``names`` and ``and 17 more``."""
    listed = separator.join(names[:shown])
    if len(names) <= shown:
        return listed
    return f"{listed} and {len(names) - shown} more"


def format_time(value: datetime | None) -> str:
    """UTC ISO 8601 to the millisecond, e.g. ``2024-05-01T12:00:00.123Z``; "" for None."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_seconds(seconds: float) -> str:
    """A duration in seconds to the millisecond, without trailing zeros: ``2.5 s``, ``90 s``."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + " s"


def format_rate(per_second: float) -> str:
    """A rate without trailing zeros: ``2.5``, ``100``."""
    return f"{per_second:.3f}".rstrip("0").rstrip(".")


def payload_preview(data: bytes, content_type: str) -> str:
    """Compact JSON for JSON payloads, else a size and type; long text is cut short."""
    if payloads.is_json(content_type):
        try:
            text = json.dumps(json.loads(data), ensure_ascii=False, separators=(",", ":"))
        except ValueError:
            return f"<{len(data)} bytes, invalid JSON>"
        return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"
    return f"<{len(data)} bytes {content_type}>"


def progress_text(task: Task) -> str:
    """``42%: message``, or just the message when the percentage is unknown."""
    progress = task.progress
    if progress is None:
        return ""
    percent = "" if progress.percent is None else f"{progress.percent:g}%"
    return ": ".join(part for part in (percent, progress.message) if part)


def _optional(value: str | None) -> Text | None:
    return Text(value) if value else None


def _headers_text(headers: Mapping[str, str]) -> Text | None:
    """``key=value`` lines in key order (a value holds no line break: it is printable)."""
    if not headers:
        return None
    return Text("\n".join(f"{key}={headers[key]}" for key in sorted(headers)))


def _error_text(task: Task) -> Text | None:
    error = task.last_error
    if error is None:
        return None
    text = Text(f"{error.type}: {error.message}", style="red")
    text.append(" (retryable)" if error.retryable else " (not retryable)", style="dim")
    if error.traceback:
        text.append("\n" + error.traceback.rstrip(), style="dim")
    return text
