"""``dtq-client``: submit, inspect and cancel tasks, and look at the cluster.

The CLI only parses arguments, calls :class:`dtq_client.Client` and prints the
result: data on stdout (``-o table|json|jsonl``), messages and errors on stderr.

Exit codes:

* 0 - success
* 1 - a waited or watched task ended FAILED or CANCELLED
* 2 - usage error (bad option or argument, invalid ``--payload`` JSON)
* 3 - RPC error: the coordinator answered with an error or could not be reached
  (the message shows the status code, reason and field violations)
* 4 - ``--wait``/``wait`` timed out before the task finished
* 130 - interrupted (Ctrl-C)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import IO, Any, NoReturn

import click
import grpc
from rich.console import Console
from rich.text import Text

import dtq.logs
from dtq import __version__
from dtq_client.client import Client
from dtq_client.config import DEFAULT_ADDRESS, ClientConfig, RetryPolicy
from dtq_client.errors import DtqError, RpcError, WaitTimeout
from dtq_client.models import Task, TaskState
from dtq_client.output import OutputFormat, Printer


class ExitCode(IntEnum):
    """The process exit codes (see the module docstring)."""

    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    RPC_ERROR = 3
    WAIT_TIMEOUT = 4
    INTERRUPTED = 130


EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    a waited or watched task ended FAILED or CANCELLED
  2    usage error
  3    RPC error (status code, reason and field violations on stderr)
  4    wait timed out
  130  interrupted
"""

_POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)


@dataclass(frozen=True)
class JsonValue:
    """A JSON option's decoded value (a wrapper, so that ``null`` differs from "not given")."""

    value: object


@dataclass(frozen=True)
class _Settings:
    """What the group options decided, passed to every command."""

    config: ClientConfig
    output: OutputFormat


def _stderr() -> Console:
    # soft_wrap: a message is one logical line, however narrow the terminal.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str | Text, code: ExitCode) -> NoReturn:
    _stderr().print(message if isinstance(message, Text) else Text(message))
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


class _Cli(click.Group):
    """The command group; the one place client errors become exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WaitTimeout as exc:
            _fail(f"timed out: {exc}", ExitCode.WAIT_TIMEOUT)
        except RpcError as exc:
            _fail(describe_rpc_error(exc, _settings(ctx).config.address), ExitCode.RPC_ERROR)
        except DtqError as exc:
            _fail(f"error: {exc}", ExitCode.RPC_ERROR)
        except KeyboardInterrupt:
            _fail("interrupted", ExitCode.INTERRUPTED)


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
    help="The coordinator [env DTQ_ADDRESS].",
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
    type=_POSITIVE_SECONDS,
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
@click.version_option(__version__, "--version", prog_name="dtq-client")
@click.pass_context
def cli(ctx: click.Context, address: str, output: str, timeout_s: float, retries: int) -> None:
    """Submit, inspect and cancel DTQ tasks; list nodes and queues."""
    config = ClientConfig(
        address=address, timeout_s=timeout_s, retry=RetryPolicy(attempts=retries + 1)
    )
    ctx.obj = _Settings(config=config, output=OutputFormat(output))


def _settings(ctx: click.Context) -> _Settings:
    settings = ctx.find_object(_Settings)
    if settings is None:  # only when a command is invoked on its own, without the group
        raise click.UsageError("run commands through the dtq-client group")
    return settings


def _client(ctx: click.Context) -> Client:
    """A client for this invocation, closed when the command ends."""
    client = Client.from_config(_settings(ctx).config)
    ctx.call_on_close(client.close)
    return client


_OUTPUT_KEY = "dtq_client.output"


def _set_output(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_OUTPUT_KEY] = OutputFormat(value)


def _output_option(command: Callable[..., None]) -> Callable[..., None]:
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


def _printer(ctx: click.Context) -> Printer:
    output = ctx.meta.get(_OUTPUT_KEY, _settings(ctx).output)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=_PIPED_WIDTH)
    return Printer(output, console)


def _parse_json(ctx: click.Context, param: click.Parameter, text: str | None) -> JsonValue | None:
    """Click callback: decode a JSON option, or fail as a usage error naming it."""
    if text is None:
        return None
    try:
        return JsonValue(json.loads(text))
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", ctx=ctx, param=param) from exc


def _read_json_file(
    ctx: click.Context, param: click.Parameter, file: IO[str] | None
) -> JsonValue | None:
    """Click callback: decode a JSON file option, or fail as a usage error naming it."""
    return None if file is None else _parse_json(ctx, param, file.read())


def _finish(task: Task) -> None:
    """Exit 1 with a message if a waited task did not succeed."""
    if task.state is TaskState.SUCCEEDED:
        return
    message = f"task {task.id} {task.state}"
    if task.last_error is not None and task.state is TaskState.FAILED:
        message += f": {task.last_error.type}: {task.last_error.message}"
    _fail(message, ExitCode.TASK_FAILED)


@cli.command()
@click.argument("task_type", metavar="TYPE")
@click.option("--payload", callback=_parse_json, metavar="JSON", help="The input, as JSON text.")
@click.option(
    "--payload-file",
    type=click.File("r"),
    callback=_read_json_file,
    help="Read the JSON input from a file ('-' for stdin).",
)
@click.option("--queue", "-q", metavar="Q", help="Queue [default: default].")
@click.option("--max-attempts", type=click.IntRange(1, 100), metavar="N", help="Attempt budget.")
@click.option("--idempotency-key", metavar="K", help="Submit at most once per key.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the task to finish.")
@click.option(
    "--timeout",
    "wait_timeout_s",
    type=_POSITIVE_SECONDS,
    metavar="S",
    help="With --wait: give up after S seconds (exit 4).",
)
@_output_option
@click.pass_context
def submit(
    ctx: click.Context,
    *,
    task_type: str,
    payload: JsonValue | None,
    payload_file: JsonValue | None,
    queue: str | None,
    max_attempts: int | None,
    idempotency_key: str | None,
    wait_: bool,
    wait_timeout_s: float | None,
) -> None:
    """Submit a task of TYPE and print it.

    With --wait, wait for it to finish and print it then; exit 1 if it failed
    or was cancelled, 4 if --timeout passed first.
    """
    if payload is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    if wait_timeout_s is not None and not wait_:
        raise click.UsageError("--timeout only applies with --wait")
    value = payload or payload_file
    client = _client(ctx)
    task = client.submit(
        task_type,
        None if value is None else value.value,
        queue=queue,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
    )
    if not wait_:
        _printer(ctx).task(task)
        return
    _stderr().print(Text(f"submitted {task.id}, waiting"), style="dim")
    task = client.wait(task.id, timeout_s=wait_timeout_s)
    _printer(ctx).task(task)
    _finish(task)


@cli.command()
@click.argument("task_id", metavar="ID")
@_output_option
@click.pass_context
def get(ctx: click.Context, task_id: str) -> None:
    """Print a task."""
    _printer(ctx).task(_client(ctx).get(task_id))


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option(
    "--timeout",
    "wait_timeout_s",
    type=_POSITIVE_SECONDS,
    metavar="S",
    help="Give up after S seconds (exit 4) [default: wait for ever].",
)
@_output_option
@click.pass_context
def wait(ctx: click.Context, task_id: str, wait_timeout_s: float | None) -> None:
    """Wait for a task to finish and print it.

    Exit 1 if it failed or was cancelled, 4 if --timeout passed first.
    """
    task = _client(ctx).wait(task_id, timeout_s=wait_timeout_s)
    _printer(ctx).task(task)
    _finish(task)


@cli.command()
@click.argument("task_id", metavar="ID")
@_output_option
@click.pass_context
def watch(ctx: click.Context, task_id: str) -> None:
    """Print a task's state, then each change until it finishes.

    With -o json or jsonl, each state is one JSON object. Exit 1 if the task
    failed or was cancelled.
    """
    printer = _printer(ctx)
    last: Task | None = None
    for task in _client(ctx).watch(task_id):
        printer.change(task)
        last = task
    if last is not None:
        _finish(last)


@cli.command()
@click.argument("task_id", metavar="ID")
@_output_option
@click.pass_context
def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a task and print it."""
    _printer(ctx).task(_client(ctx).cancel(task_id))


@cli.command("list")
@click.option("--queue", "-q", metavar="Q", help="Only this queue.")
@click.option(
    "--state",
    type=click.Choice([s.value for s in TaskState], case_sensitive=False),
    help="Only this state.",
)
@click.option("--type", "task_type", metavar="T", help="Only this task type.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, metavar="N")
@_output_option
@click.pass_context
def list_(
    ctx: click.Context, queue: str | None, state: str | None, task_type: str | None, limit: int
) -> None:
    """List tasks, newest first."""
    tasks = _client(ctx).list_tasks(
        queue=queue, state=None if state is None else state.lower(), type=task_type, limit=limit
    )
    _printer(ctx).tasks(tasks)


@cli.command()
@click.option("--all", "include_gone", is_flag=True, help="Include dead and departed nodes.")
@_output_option
@click.pass_context
def nodes(ctx: click.Context, include_gone: bool) -> None:
    """List worker nodes."""
    _printer(ctx).nodes(_client(ctx).nodes(include_gone=include_gone))


@cli.command()
@click.argument("node_id", metavar="NODE_ID")
@_output_option
@click.pass_context
def drain(ctx: click.Context, node_id: str) -> None:
    """Drain a node: no new tasks; it finishes its running ones and exits."""
    _printer(ctx).node(_client(ctx).drain(node_id))


@cli.command()
@_output_option
@click.pass_context
def queues(ctx: click.Context) -> None:
    """List queues with their task counts."""
    _printer(ctx).queues(_client(ctx).queues())


@cli.command()
@click.option("--service", default="", metavar="NAME", help="A service name [default: all].")
@_output_option
@click.pass_context
def health(ctx: click.Context, service: str) -> None:
    """Print the coordinator's health status (SERVING, NOT_SERVING, ...)."""
    _printer(ctx).health(_client(ctx).health(service))


def main() -> None:
    """The ``dtq-client`` console script."""
    dtq.logs.configure("warning")
    cli.main(prog_name="dtq-client")
