"""The commands about tasks: submit, get, wait, watch, cancel, list, and group."""

from __future__ import annotations

from datetime import datetime

import click
from rich.text import Text

from dtq_client.cli.app import (
    POSITIVE_SECONDS,
    SECONDS,
    UNFINISHED,
    Iso8601,
    cli,
    client_for,
    finish_waited,
    lower,
    output_option,
    printer_for,
    state_choice,
    stderr_console,
)
from dtq_client.cli.specs import JsonValue, parse_headers, payload_of, task_options
from dtq_client.errors import ProtocolError
from dtq_client.models import DependencyFailure, Task, TaskState
from dtq_client.output import change_line


@cli.command()
@click.argument("task_type", metavar="TYPE")
@task_options
@click.option("--idempotency-key", metavar="K", help="Submit at most once per key.")
@click.option(
    "--delay",
    "delay_s",
    type=SECONDS,
    metavar="S",
    help="Do not run before S seconds from now (not with --at).",
)
@click.option(
    "--at",
    "run_at",
    type=Iso8601(),
    metavar="ISO8601",
    help="Do not run before this time (a time without offset is local time).",
)
@click.option(
    "--depends-on",
    "depends_on",
    multiple=True,
    metavar="ID",
    help="Run only after task ID succeeded (repeatable); the task waits until then.",
)
@click.option(
    "--on-dependency-failure",
    type=click.Choice([p.value for p in DependencyFailure], case_sensitive=False),
    help="If a dependency fails or is cancelled: fail this task too, or cancel it [default: fail].",
)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the task to finish.")
@click.option(
    "--wait-timeout",
    "wait_timeout_s",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="With --wait: give up waiting after S seconds (exit 4).",
)
@output_option
@click.pass_context
def submit(
    ctx: click.Context,
    *,
    task_type: str,
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
    idempotency_key: str | None,
    delay_s: float | None,
    run_at: datetime | None,
    depends_on: tuple[str, ...],
    on_dependency_failure: str | None,
    wait_: bool,
    wait_timeout_s: float | None,
) -> None:
    """Submit a task of TYPE and print it.

    With --depends-on the task is "waiting" until every task it names has
    succeeded. With --wait, wait for it to finish and print it then; exit 1 if
    it failed or was cancelled, 4 if --wait-timeout passed first.
    """
    value = payload_of(payload, payload_file)
    if delay_s is not None and run_at is not None:
        raise click.UsageError("give --delay or --at, not both")
    if wait_timeout_s is not None and not wait_:
        raise click.UsageError("--wait-timeout only applies with --wait")
    if on_dependency_failure is not None and not depends_on:
        raise click.UsageError("--on-dependency-failure only applies with --depends-on")
    client = client_for(ctx)
    task = client.submit(
        task_type,
        value,
        queue=queue,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        priority=priority,
        run_at=run_at,
        delay_s=delay_s,
        execution_timeout_s=execution_timeout_s,
        schedule_to_start_timeout_s=schedule_to_start_timeout_s,
        result_ttl_s=result_ttl_s,
        rate_key=rate_key,
        headers=headers,
        depends_on=depends_on,
        on_dependency_failure=lower(on_dependency_failure),
    )
    if not wait_:
        printer_for(ctx).task(task)
        return
    stderr_console().print(Text(f"submitted {task.id}, waiting"), style="dim")
    task = client.wait(task.id, timeout_s=wait_timeout_s)
    printer_for(ctx).task(task)
    finish_waited(task)


@cli.command()
@click.argument("task_id", metavar="ID")
@output_option
@click.pass_context
def get(ctx: click.Context, task_id: str) -> None:
    """Print a task."""
    printer_for(ctx).task(client_for(ctx).get(task_id))


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option(
    "--timeout",
    "wait_timeout_s",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="Give up after S seconds (exit 4) [default: wait for ever].",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Meanwhile print each state or progress change, one line each on stderr.",
)
@output_option
@click.pass_context
def wait(ctx: click.Context, task_id: str, wait_timeout_s: float | None, follow: bool) -> None:
    """Wait for a task to finish and print it.

    Exit 1 if it failed or was cancelled, 4 if --timeout passed first. With
    --follow the changes go to stderr, so stdout still holds only the
    finished task.
    """
    client = client_for(ctx)
    if follow:
        stderr = stderr_console()
        last: Task | None = None
        for last in client.watch(task_id, timeout_s=wait_timeout_s):
            stderr.print(change_line(last))
        if last is None or not last.is_terminal:
            raise ProtocolError(f"the watch of task {task_id} ended before a terminal state")
        task = last
    else:
        task = client.wait(task_id, timeout_s=wait_timeout_s)
    printer_for(ctx).task(task)
    finish_waited(task)


@cli.command()
@click.argument("task_id", metavar="ID")
@output_option
@click.pass_context
def watch(ctx: click.Context, task_id: str) -> None:
    """Print a task's state, then each change until it finishes.

    With -o json or jsonl, each state is one JSON object. Exit 1 if the task
    failed or was cancelled.
    """
    printer = printer_for(ctx)
    last: Task | None = None
    for task in client_for(ctx).watch(task_id):
        printer.change(task)
        last = task
    if last is not None:
        finish_waited(last)


@cli.command()
@click.argument("task_id", metavar="[ID]", required=False)
@click.option("--queue", "-q", metavar="Q", help="Cancel every unfinished task of this queue.")
@click.option("--type", "task_type", metavar="T", help="Cancel every unfinished task of this type.")
@click.option(
    "--state", type=state_choice(UNFINISHED), help="With --queue/--type: only this state."
)
@output_option
@click.pass_context
def cancel(
    ctx: click.Context,
    task_id: str | None,
    queue: str | None,
    task_type: str | None,
    state: str | None,
) -> None:
    """Cancel a task, or every unfinished task of a queue and/or type.

    Cancel the task ID and print it, or every unfinished task of --queue
    and/or --type (with --state, only those in that state). A waiting or
    queued task is cancelled at once; a leased or running one is marked
    "cancel requested" and ends CANCELLED when its node stops it. The bulk form prints how many
    tasks were cancelled and how many were asked to stop.
    """
    if task_id is not None:
        if queue or task_type or state:
            raise click.UsageError("give a task ID or --queue/--type/--state, not both")
        printer_for(ctx).task(client_for(ctx).cancel(task_id))
        return
    if not (queue or task_type):
        raise click.UsageError("give a task ID, or --queue and/or --type to cancel many")
    counts = client_for(ctx).cancel_tasks(queue=queue, type=task_type, state=lower(state))
    printer_for(ctx).cancel_counts(counts)


@cli.command("list")
@click.option("--queue", "-q", metavar="Q", help="Only this queue.")
@click.option("--state", type=state_choice(list(TaskState)), help="Only this state.")
@click.option("--type", "task_type", metavar="T", help="Only this task type.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, metavar="N")
@click.option(
    "--header",
    "headers",
    multiple=True,
    callback=parse_headers,
    metavar="KEY=VALUE",
    help="Only tasks carrying this header with this value (repeatable: all of them).",
)
@output_option
@click.pass_context
def list_(
    ctx: click.Context,
    queue: str | None,
    state: str | None,
    task_type: str | None,
    limit: int,
    headers: dict[str, str],
) -> None:
    """List tasks, newest first."""
    tasks = client_for(ctx).list_tasks(
        queue=queue, state=lower(state), type=task_type, limit=limit, headers=headers
    )
    printer_for(ctx).tasks(tasks)


@cli.command()
@click.argument("group_id", metavar="ID")
@output_option
@click.pass_context
def group(ctx: click.Context, group_id: str) -> None:
    """Print the status of a group of tasks: its state, member counts and member ids.

    The state is "running" while a member is unfinished, then "succeeded" if
    all succeeded, "failed" if one failed, else "cancelled".
    """
    printer_for(ctx).group(client_for(ctx).get_group(group_id))
