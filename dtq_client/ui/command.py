"""``dtq-client ui``: serve the web dashboard.

Registered on the ``dtq-client`` group by :mod:`dtq_client.cli`. This module
imports nothing of the ``ui`` extra at import time, so ``dtq-client`` works
without it; the command says how to install it when it is missing.
"""

from __future__ import annotations

import click
from rich.text import Text

from dtq.cli_types import FiniteFloat
from dtq_client.cli.app import ExitCode, cli, client_for, fail, stderr_console
from dtq_client.ui.settings import DEFAULT_LISTEN, UiConfig, UiConfigError


@cli.command()
@click.option(
    "--listen",
    envvar="DTQ_UI_LISTEN",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve the UI on (port 0 picks one) [env DTQ_UI_LISTEN].",
)
@click.option(
    "--insecure",
    envvar="DTQ_UI_INSECURE",
    is_flag=True,
    help="Allow a non-loopback --listen. The UI has no login: whoever reaches it acts "
    "with this command's token [env DTQ_UI_INSECURE].",
)
@click.option(
    "--refresh",
    "refresh_s",
    type=FiniteFloat(min=0.2, max=3600),
    default=2.0,
    envvar="DTQ_UI_REFRESH",
    show_default=True,
    metavar="S",
    help="Seconds between the updates of an open page [env DTQ_UI_REFRESH].",
)
@click.pass_context
def ui(ctx: click.Context, listen: str, insecure: bool, refresh_s: float) -> None:
    """Serve a web dashboard of the coordinator until Ctrl-C.

    It shows the coordinator's health, its queues and worker nodes, its tasks
    (filtered by queue, state, type and header; every field of one task), task
    groups and schedules, updated every few seconds. It cancels and retries
    tasks, one or a queue's at once; pauses and resumes queues and schedules;
    and drains nodes. It calls the coordinator with this command's --address,
    TLS options and token, and answers on loopback only unless --insecure.

    Needs the ui extra: pip install 'dtq[ui]'.
    """
    try:
        config = UiConfig(listen=listen, insecure=insecure, refresh_s=refresh_s)
    except UiConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        from dtq_client.ui.app import create_app  # noqa: PLC0415 - the optional extra
        from dtq_client.ui.serve import UiServer  # noqa: PLC0415
    except ImportError as exc:
        missing = (exc.name or str(exc)).partition(".")[0]
        fail(
            f"the web UI needs the ui extra ({missing} is not installed): pip install 'dtq[ui]'",
            ExitCode.USAGE,
        )
    client = client_for(ctx)
    try:
        server = UiServer(create_app(client, config), config)
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}", ExitCode.USAGE)
    message = Text(f"DTQ web UI on {server.url} ", style="bold")
    message.append(f"(coordinator {client.config.address}); Ctrl-C stops it", style="dim")
    stderr_console().print(message)
    server.run()
