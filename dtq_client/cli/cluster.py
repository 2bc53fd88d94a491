"""The commands about the cluster: nodes, drain, queues (pause, resume, limit) and health."""

from __future__ import annotations

import click

from dtq_client.cli.app import cli, client_for, output_option, printer_for


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
    """List queues (the default), or pause, resume or limit one.

    The list shows each queue's task counts, whether it is paused, and its
    concurrency limit (MAX RUNNING, "-" when none).
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
@click.argument("max_running", metavar="N", type=click.IntRange(min=0))
@output_option
@click.pass_context
def limit(ctx: click.Context, name: str, max_running: int) -> None:
    """Cap the running tasks of QUEUE at N across all nodes (0: no cap).

    Counts leased and running tasks on every node. Lowering the limit stops
    nothing already running; it holds back new dispatches. Durable.
    """
    printer_for(ctx).queue(client_for(ctx).set_queue_limit(name, max_running))


@cli.command()
@click.option("--service", default="", metavar="NAME", help="A service name [default: all].")
@output_option
@click.pass_context
def health(ctx: click.Context, service: str) -> None:
    """Print the coordinator's health status (SERVING, NOT_SERVING, ...)."""
    printer_for(ctx).health(client_for(ctx).health(service))
