"""The commands that act on many finished tasks at once: retry and purge."""

from __future__ import annotations

import itertools
import sys

import click
from rich.text import Text

from dtq_client.cli.app import (
    TERMINAL,
    ExitCode,
    cli,
    client_for,
    fail,
    lower,
    output_option,
    printer_for,
    state_choice,
    stderr_console,
)
from dtq_client.models import TaskState

# purge counts the tasks it is about to delete (for its prompt) up to this many.
_PURGE_COUNT_CAP = 10_000


@cli.command()
@click.argument("task_ids", metavar="[ID]...", nargs=-1)
@click.option("--queue", "-q", metavar="Q", help="Retry every matching task of this queue.")
@click.option("--type", "task_type", metavar="T", help="Retry every matching task of this type.")
@click.option(
    "--state",
    type=state_choice([TaskState.FAILED, TaskState.CANCELLED]),
    help="With --queue/--type: which tasks to retry [default: failed].",
)
@output_option
@click.pass_context
def retry(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    queue: str | None,
    task_type: str | None,
    state: str | None,
) -> None:
    """Send failed or cancelled tasks back to their queue.

    Retry the tasks ID... (each must be failed or cancelled), or every failed
    (dead-lettered) task of --queue and/or --type, or with --state cancelled
    every cancelled one, at most 10,000 per call. Each gets a fresh attempt
    budget. Prints how many were retried and skipped; the skipped IDs (not
    failed or cancelled, or unknown) are listed on stderr, and so is a note
    when more matching tasks remain past the 10,000.
    """
    if task_ids and (queue or task_type or state):
        raise click.UsageError("give task IDs or --queue/--type/--state, not both")
    if not task_ids and not (queue or task_type):
        raise click.UsageError("give task IDs, or --queue and/or --type")
    client = client_for(ctx)
    if task_ids:
        result = client.retry(task_ids)
    else:
        result = client.retry(queue=queue, type=task_type, state=lower(state))
    printer_for(ctx).retried(result)
    stderr = stderr_console()
    if result.skipped_task_ids:
        skipped = " ".join(result.skipped_task_ids)
        stderr.print(
            Text(f"skipped (not failed or cancelled, or unknown): {skipped}"), style="yellow"
        )
    if result.truncated:
        stderr.print(
            Text("more matching tasks remain (at most 10,000 per call): run retry again"),
            style="yellow",
        )


@cli.command()
@click.option(
    "--state", required=True, type=state_choice(TERMINAL), help="Delete the tasks in this state."
)
@click.option("--queue", "-q", metavar="Q", help="Only tasks of this queue.")
@click.option("--type", "task_type", metavar="T", help="Only tasks of this type.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@output_option
@click.pass_context
def purge(
    ctx: click.Context, state: str, queue: str | None, task_type: str | None, yes: bool
) -> None:
    """Delete finished tasks in one state (asks first).

    Delete the tasks in --state, only those of --queue and/or --type if given.
    Asks for confirmation, showing how many tasks match, unless --yes is given;
    without --yes, stdin must be a terminal. Prints how many were deleted.
    Exit 5 if the answer is no.
    """
    state = state.lower()
    client = client_for(ctx)
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise click.UsageError("stdin is not a terminal to confirm on: give --yes to purge")
        matching = client.iter_tasks(queue=queue, state=state, type=task_type, page_size=1_000)
        count = sum(1 for _ in itertools.islice(matching, _PURGE_COUNT_CAP + 1))
        if count == 0:
            stderr_console().print(Text(f"no {state} tasks{_where(queue, task_type)}"), style="dim")
            printer_for(ctx).deleted(0)
            return
        shown = f"more than {_PURGE_COUNT_CAP:,}" if count > _PURGE_COUNT_CAP else f"{count:,}"
        noun = "task" if count == 1 else "tasks"
        question = f"Delete {shown} {state} {noun}{_where(queue, task_type)}?"
        try:
            confirmed = click.confirm(question, default=False, err=True)
        except click.Abort:  # Ctrl-C or end of input at the prompt
            confirmed = False
        if not confirmed:
            fail("not confirmed: nothing deleted", ExitCode.NOT_CONFIRMED)
    printer_for(ctx).deleted(client.purge(state, queue=queue, type=task_type))


def _where(queue: str | None, task_type: str | None) -> str:
    """`` in queue 'q' of type 't'``, for the filters that are set."""
    where = f" in queue {queue!r}" if queue else ""
    return where + (f" of type {task_type!r}" if task_type else "")
