"""The ``dtq-client`` group and what every command shares.

The group's options build a :class:`~dtq_client.ClientConfig`; :class:`_Cli`
is the one place client errors become exit codes; the helpers give a command
its client, its printer (``-o``, before or after the command name) and its
stderr, and the option types the commands have in common.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn

import click
import grpc
from rich.console import Console
from rich.text import Text

from dtq import __version__
from dtq.cli_types import FiniteFloat
from dtq.connect_flags import connect_options
from dtq.tls import ClientTls, TlsConfigError
from dtq_client.client import Client
from dtq_client.config import DEFAULT_ADDRESS, ClientConfig, RetryPolicy
from dtq_client.convert.scalars import MAX_DURATION_S
from dtq_client.errors import DtqError, RpcError, WaitTimeout
from dtq_client.models import Task, TaskState
from dtq_client.output import OutputFormat, Printer


class ExitCode(IntEnum):
    """The process exit codes (see :mod:`dtq_client.cli`)."""

    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    RPC_ERROR = 3
    WAIT_TIMEOUT = 4
    NOT_CONFIRMED = 5
    INTERRUPTED = 130


EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    a waited or watched task ended FAILED or CANCELLED
  2    usage error
  3    RPC error (status code, reason and field violations on stderr)
  4    wait timed out
  5    purge not confirmed (nothing deleted)
  130  interrupted
"""

# --- option types --------------------------------------------------------------------------

POSITIVE_SECONDS = FiniteFloat(min=0, min_open=True, max=MAX_DURATION_S)
SECONDS = FiniteFloat(min=0, max=MAX_DURATION_S)
"""Seconds a protobuf Duration holds (up to 10,000 years): more was a traceback."""
UNFINISHED = [TaskState.WAITING, TaskState.QUEUED, TaskState.LEASED, TaskState.RUNNING]
TERMINAL = [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED]


def state_choice(states: list[TaskState]) -> click.Choice[str]:
    """A ``--state`` choice among ``states``, by lower-case name, any case accepted."""
    return click.Choice([s.value for s in states], case_sensitive=False)


def lower(state: str | None) -> str | None:
    """A ``--state`` value as the model's lower-case name (None stays None)."""
    return None if state is None else state.lower()


class Iso8601(click.ParamType[datetime]):
    """A time in ISO 8601 (``2030-01-02T03:04:05+01:00``); naive times are local."""

    name = "ISO8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            moment = value
        else:
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(
                    f"{value!r} is not an ISO 8601 time, e.g. 2030-01-02T03:04:05Z", param, ctx
                )
        try:
            # astimezone() on a naive time reads it as local time and makes it aware;
            # in UTC, a time at either end of the calendar may fall off it.
            moment = moment if moment.tzinfo is not None else moment.astimezone()
            moment.astimezone(UTC)
        except (ValueError, OverflowError):
            self.fail(f"{value!r} is out of the range of times (years 1-9999 in UTC)", param, ctx)
        return moment


# --- messages and errors -------------------------------------------------------------------


def stderr_console() -> Console:
    """Where messages go."""
    # soft_wrap: a message is one logical line, however narrow the terminal.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str | Text, code: ExitCode) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code``."""
    stderr_console().print(message if isinstance(message, Text) else Text(message))
    raise click.exceptions.Exit(code)


def describe_rpc_error(exc: RpcError, address: str) -> Text:
    """The stderr message for an RPC error: code, reason, message and field violations."""
    text = Text("error: ", style="bold red")
    text.append(exc.code.name, style="bold")
    if exc.reason:
        text.append(f" ({exc.reason})")
    # The field violations get a line each; a message that only joins them is left out.
    if exc.message and not exc.message_lists_violations:
        text.append(f": {exc.message}")
    for field, description in exc.field_violations:
        text.append(f"\n  {field}: {description}")
    if exc.code is grpc.StatusCode.UNAVAILABLE:
        text.append(f"\n  is the coordinator running at {address}?", style="dim")
    return text


def finish_waited(task: Task) -> None:
    """Exit 1 with a message if a waited task did not succeed."""
    if task.state is TaskState.SUCCEEDED:
        return
    message = f"task {task.id} {task.state}"
    if task.last_error is not None and task.state is TaskState.FAILED:
        message += f": {task.last_error.type}: {task.last_error.message}"
    fail(message, ExitCode.TASK_FAILED)


# --- the group -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """What the group options decided, passed to every command."""

    config: ClientConfig
    output: OutputFormat


class _Cli(click.Group):
    """The command group; the one place client errors become exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WaitTimeout as exc:
            fail(f"timed out: {exc}", ExitCode.WAIT_TIMEOUT)
        except RpcError as exc:
            fail(describe_rpc_error(exc, _settings(ctx).config.address), ExitCode.RPC_ERROR)
        except DtqError as exc:
            fail(f"error: {exc}", ExitCode.RPC_ERROR)
        except KeyboardInterrupt:
            fail("interrupted", ExitCode.INTERRUPTED)


@click.group(
    cls=_Cli,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--address",
    envvar="DTQ_ADDRESS",
    default=DEFAULT_ADDRESS,
    show_default=True,
    metavar="HOST:PORT",
    help="The coordinator, or a gRPC target naming several (ipv4:h1:p1,h2:p2) [env DTQ_ADDRESS].",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice([f.value for f in OutputFormat]),
    default=OutputFormat.TABLE.value,
    envvar="DTQ_OUTPUT",
    show_default=True,
    help="Output format [env DTQ_OUTPUT].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=POSITIVE_SECONDS,
    default=10.0,
    envvar="DTQ_TIMEOUT",
    show_default=True,
    metavar="S",
    help="Deadline of each call in seconds [env DTQ_TIMEOUT].",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=RetryPolicy().attempts - 1,
    envvar="DTQ_RETRIES",
    show_default=True,
    metavar="N",
    help="Retries of a call that found the coordinator unavailable [env DTQ_RETRIES].",
)
@connect_options
@click.version_option(__version__, "--version", prog_name="dtq-client")
@click.pass_context
def cli(
    ctx: click.Context,
    address: str,
    output: str,
    timeout_s: float,
    retries: int,
    tls: ClientTls | None,
    token: str | None,
) -> None:
    """Submit, inspect, cancel, retry and purge DTQ tasks; run schedules, queues and rate limits."""
    try:
        config = ClientConfig(
            address=address,
            timeout_s=timeout_s,
            retry=RetryPolicy(attempts=retries + 1),
            tls=tls,
            token=token,
        )
    except TlsConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    ctx.obj = _Settings(config=config, output=OutputFormat(output))


def _settings(ctx: click.Context) -> _Settings:
    settings = ctx.find_object(_Settings)
    if settings is None:  # only when a command is invoked on its own, without the group
        raise click.UsageError("run commands through the dtq-client group")
    return settings


def client_for(ctx: click.Context) -> Client:
    """A client for this invocation, closed when the command ends."""
    client = Client.from_config(_settings(ctx).config)
    ctx.call_on_close(client.close)
    return client


_OUTPUT_KEY = "dtq_client.output"


def _set_output(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_OUTPUT_KEY] = OutputFormat(value)


def output_option(command: Callable[..., None]) -> Callable[..., None]:
    """Accept ``-o`` after the command name too (``submit echo --wait -o json``)."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice([f.value for f in OutputFormat]),
        expose_value=False,
        callback=_set_output,
        help="Output format (overrides the one given before the command).",
    )(command)


# Piped tables are not squeezed into rich's 80-column default: nothing reads
# them but scripts and pagers, which cope with long lines.
_PIPED_WIDTH = 1_000


def printer_for(ctx: click.Context) -> Printer:
    """Prints this invocation's data on stdout, in the ``-o`` format it asked for."""
    output = ctx.meta.get(_OUTPUT_KEY, _settings(ctx).output)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=_PIPED_WIDTH)
    return Printer(output, console)
