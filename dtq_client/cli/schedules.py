"""The ``schedules`` commands: create, list, get, pause, resume and delete periodic tasks."""

from __future__ import annotations

import click
from rich.text import Text

from dtq.cli_types import FiniteFloat
from dtq_client.cli.app import (
    cli,
    client_for,
    output_option,
    printer_for,
    stderr_console,
)
from dtq_client.cli.specs import JsonValue, payload_of, task_options
from dtq_client.convert.scalars import MAX_DURATION_S
from dtq_client.models import MissedTicks, TaskSpec

_MISSED = {policy.value.replace("_", "-"): policy for policy in MissedTicks}
"""``--missed`` choices: the policies with dashes (``run-once``)."""


@cli.group(invoke_without_command=True)
@output_option
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """List periodic schedules (the default), or create, get, pause, resume or delete one.

    The coordinator fires every tick itself, exactly once even across its own
    crashes: each tick submits one task with the idempotency key
    schedule:NAME:TICK. Cron ticks follow the coordinator's wall clock.
    """
    if ctx.invoked_subcommand is None:
        printer_for(ctx).schedules(client_for(ctx).list_schedules())


@schedules.command("list")
@output_option
@click.pass_context
def list_schedules(ctx: click.Context) -> None:
    """List schedules, by name."""
    printer_for(ctx).schedules(client_for(ctx).list_schedules())


@schedules.command()
@click.argument("name", metavar="NAME")
@click.argument("task_type", metavar="TYPE")
@click.option(
    "--cron",
    metavar="EXPR",
    help="Cron expression: 5 fields, or 6 with seconds last ('* * * * * */10': every 10 s).",
)
@click.option(
    "--every",
    "interval_s",
    type=FiniteFloat(min=1, max=MAX_DURATION_S),
    metavar="S",
    help="Or a fixed period of S seconds (at least 1), counted from now.",
)
@click.option(
    "--tz",
    "time_zone",
    metavar="ZONE",
    help="IANA time zone the cron expression is read in, e.g. Europe/Paris [default: UTC].",
)
@click.option(
    "--missed",
    type=click.Choice(list(_MISSED), case_sensitive=False),
    help="Ticks missed while the coordinator was down: skip them, run the latest once, "
    "or run them all (at most 1,000) [default: run-once].",
)
@click.option("--paused", is_flag=True, help="Create it paused (resume it later).")
@task_options
@output_option
@click.pass_context
def create(
    ctx: click.Context,
    *,
    name: str,
    task_type: str,
    cron: str | None,
    interval_s: float | None,
    time_zone: str | None,
    missed: str | None,
    paused: bool,
    payload: JsonValue | None,
    payload_file: JsonValue | None,
    queue: str | None,
    max_attempts: int | None,
    priority: int,
    execution_timeout_s: float | None,
    schedule_to_start_timeout_s: float | None,
    result_ttl_s: float | None,
    rate_key: str | None,
    headers: dict[str, str],
) -> None:
    """Create schedule NAME: submit a task of TYPE at every tick, and print it.

    Give --cron or --every. Creating the same schedule again prints it
    unchanged; a different one under an existing name is an error (exit 3).
    """
    if (cron is None) == (interval_s is None):
        raise click.UsageError("give --cron or --every (one of them)")
    if time_zone is not None and cron is None:
        raise click.UsageError("--tz only applies with --cron")
    spec = TaskSpec(
        task_type,
        payload_of(payload, payload_file),
        queue=queue,
        max_attempts=max_attempts,
        priority=priority,
        execution_timeout_s=execution_timeout_s,
        schedule_to_start_timeout_s=schedule_to_start_timeout_s,
        result_ttl_s=result_ttl_s,
        rate_key=rate_key,
        headers=headers,
    )
    schedule = client_for(ctx).create_schedule(
        name,
        spec,
        cron=cron,
        interval_s=interval_s,
        time_zone=time_zone,
        missed_ticks=None if missed is None else _MISSED[missed.lower()],
        paused=paused,
    )
    printer_for(ctx).schedule(schedule)


@schedules.command()
@click.argument("name", metavar="NAME")
@output_option
@click.pass_context
def get(ctx: click.Context, name: str) -> None:
    """Print schedule NAME with its task and its next and last ticks."""
    printer_for(ctx).schedule(client_for(ctx).get_schedule(name))


@schedules.command()
@click.argument("name", metavar="NAME")
@output_option
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Pause schedule NAME: the ticks that pass while it is paused are skipped."""
    printer_for(ctx).schedule(client_for(ctx).pause_schedule(name))


@schedules.command()
@click.argument("name", metavar="NAME")
@output_option
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Resume schedule NAME from its next tick after now."""
    printer_for(ctx).schedule(client_for(ctx).resume_schedule(name))


@schedules.command()
@click.argument("name", metavar="NAME")
@output_option
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Delete schedule NAME (the tasks it already submitted stay)."""
    client_for(ctx).delete_schedule(name)
    stderr_console().print(Text(f"schedule {name!r} deleted"), style="dim")
    printer_for(ctx).empty()
