"""The commands about the cluster: nodes, drain, queues, rate limits and health."""

from __future__ import annotations

import click
from rich.text import Text

from dtq.cli_types import FiniteFloat
from dtq_client.cli.app import cli, client_for, output_option, printer_for, stderr_console
from dtq_client.cluster_requests import UINT32_MAX

# UpdateQueue and SetRateLimit take at most this many tasks per second.
_MAX_RATE = 100_000


@cli.command()
@click.option("--all", "include_gone", is_flag=True, help="Include dead and departed nodes.")
@output_option
@click.pass_context
def nodes(ctx: click.Context, include_gone: bool) -> None:
    """List worker nodes."""
    printer_for(ctx).nodes(client_for(ctx).nodes(include_gone=include_gone))


@cli.command()
@click.argument("node_id", metavar="NODE_ID")
@output_option
@click.pass_context
def drain(ctx: click.Context, node_id: str) -> None:
    """Drain a node: no new tasks; it finishes its running ones and exits."""
    printer_for(ctx).node(client_for(ctx).drain(node_id))


@cli.group(invoke_without_command=True)
@output_option
@click.pass_context
def queues(ctx: click.Context) -> None:
    """List queues (the default), or pause, resume, limit, rate-limit or cap the depth of one.

    The list shows each queue's task counts, whether it is paused, its
    concurrency limit (MAX RUNNING), its rate limit in tasks per second
    (RATE/S) and its maximum of unfinished tasks (MAX DEPTH), "-" when none.
    """
    if ctx.invoked_subcommand is None:
        printer_for(ctx).queues(client_for(ctx).queues())


@queues.command()
@click.argument("name", metavar="QUEUE")
@output_option
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Pause QUEUE: it accepts submits but dispatches nothing.

    Tasks already running carry on. Durable: a restarted coordinator keeps it paused.
    """
    printer_for(ctx).queue(client_for(ctx).pause_queue(name))


@queues.command()
@click.argument("name", metavar="QUEUE")
@output_option
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Resume a paused QUEUE."""
    printer_for(ctx).queue(client_for(ctx).resume_queue(name))


@queues.command()
@click.argument("name", metavar="QUEUE")
@click.argument("max_running", metavar="N", type=click.IntRange(0, UINT32_MAX))
@output_option
@click.pass_context
def limit(ctx: click.Context, name: str, max_running: int) -> None:
    """Cap the running tasks of QUEUE at N across all nodes (0: no cap).

    Counts leased and running tasks on every node. Lowering the limit stops
    nothing already running; it holds back new dispatches. Durable.
    """
    printer_for(ctx).queue(client_for(ctx).set_queue_limit(name, max_running))


@queues.command()
@click.argument("name", metavar="QUEUE")
@click.argument("per_second", metavar="PER_SECOND", type=FiniteFloat(0, _MAX_RATE))
@output_option
@click.pass_context
def rate(ctx: click.Context, name: str, per_second: float) -> None:
    """Dispatch at most PER_SECOND tasks of QUEUE per second (0: no limit).

    A token bucket across all nodes, holding one second's worth of tokens (at
    least one). Durable. Per-tenant limits are rate keys: see rate-limits.
    """
    printer_for(ctx).queue(client_for(ctx).set_queue_rate_limit(name, per_second))


@queues.command()
@click.argument("name", metavar="QUEUE")
@click.argument("max_depth", metavar="N", type=click.IntRange(0, UINT32_MAX))
@output_option
@click.pass_context
def depth(ctx: click.Context, name: str, max_depth: int) -> None:
    """Refuse submits that would take QUEUE past N unfinished tasks (0: no limit).

    Counts tasks queued (also those waiting for a retry or their run time),
    leased or running. A refused submit stores nothing and fails with
    RESOURCE_EXHAUSTED (QUEUE_FULL). Lowering it removes no task. Durable.
    """
    printer_for(ctx).queue(client_for(ctx).set_queue_max_depth(name, max_depth))


@cli.group("rate-limits", invoke_without_command=True)
@output_option
@click.pass_context
def rate_limits(ctx: click.Context) -> None:
    """List rate-key limits (the default), or set or delete one.

    Tasks submitted with --rate-key K share K's token bucket, across every
    queue and node: at most PER SECOND of them start per second on average,
    and at most BURST at once after a quiet period. A key without a limit
    does not throttle.
    """
    if ctx.invoked_subcommand is None:
        printer_for(ctx).rate_limits(client_for(ctx).rate_limits())


@rate_limits.command("list")
@output_option
@click.pass_context
def list_rate_limits(ctx: click.Context) -> None:
    """List rate-key limits."""
    printer_for(ctx).rate_limits(client_for(ctx).rate_limits())


@rate_limits.command("set")
@click.argument("key", metavar="KEY")
@click.argument("per_second", metavar="PER_SECOND", type=FiniteFloat(0, _MAX_RATE, min_open=True))
@click.option(
    "--burst",
    type=click.IntRange(1, _MAX_RATE),
    metavar="N",
    help="Bucket size: tasks started at once after a quiet period [default: one second's worth].",
)
@output_option
@click.pass_context
def set_rate_limit(ctx: click.Context, key: str, per_second: float, burst: int | None) -> None:
    """Limit the tasks with rate key KEY to PER_SECOND per second (replaces its limit). Durable."""
    printer_for(ctx).rate_limit(client_for(ctx).set_rate_limit(key, per_second, burst=burst))


@rate_limits.command("delete")
@click.argument("key", metavar="KEY")
@output_option
@click.pass_context
def delete_rate_limit(ctx: click.Context, key: str) -> None:
    """Remove the limit of rate key KEY: its tasks are no longer throttled."""
    client_for(ctx).delete_rate_limit(key)
    stderr_console().print(Text(f"rate limit of {key!r} removed"), style="dim")
    printer_for(ctx).empty()


@cli.command()
@click.option("--service", default="", metavar="NAME", help="A service name [default: all].")
@output_option
@click.pass_context
def health(ctx: click.Context, service: str) -> None:
    """Print the coordinator's health status (SERVING, NOT_SERVING, ...)."""
    printer_for(ctx).health(client_for(ctx).health(service))
