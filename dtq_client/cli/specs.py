"""The options that describe a task, shared by ``submit`` and ``schedules create``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TypeVar

import click

from dtq_client.cli.app import POSITIVE_SECONDS

_F = TypeVar("_F", bound=Callable[..., None])


@dataclass(frozen=True)
class JsonValue:
    """A JSON option's decoded value (a wrapper, so that ``null`` differs from "not given")."""

    value: object


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


def parse_headers(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> dict[str, str]:
    """Click callback: ``KEY=VALUE`` items as a dict, or a usage error naming the option.

    The value is everything after the first ``=`` (it may hold more). A key
    given twice is an error rather than silently one of the two. The keys and
    values themselves are the coordinator's to check.
    """
    headers: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        if key in headers:
            raise click.BadParameter(f"header {key!r} given twice", ctx=ctx, param=param)
        headers[key] = value
    return headers


def payload_of(payload: JsonValue | None, payload_file: JsonValue | None) -> object:
    """The task's input from ``--payload`` or ``--payload-file`` (None when neither)."""
    if payload is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    value = payload or payload_file
    return None if value is None else value.value


def task_options(command: _F) -> _F:
    """Add the options of a task's spec, from its payload to its headers.

    The command receives them as ``payload``, ``payload_file``, ``queue``,
    ``max_attempts``, ``priority``, ``execution_timeout_s``,
    ``schedule_to_start_timeout_s``, ``result_ttl_s``, ``rate_key`` and ``headers``
    (a dict).
    """
    options = [
        click.option(
            "--payload", callback=_parse_json, metavar="JSON", help="The input, as JSON text."
        ),
        click.option(
            "--payload-file",
            type=click.File("r"),
            callback=_read_json_file,
            help="Read the JSON input from a file ('-' for stdin).",
        ),
        click.option("--queue", "-q", metavar="Q", help="Queue [default: default]."),
        click.option(
            "--max-attempts", type=click.IntRange(1, 100), metavar="N", help="Attempt budget."
        ),
        click.option(
            "--priority",
            type=click.IntRange(-1000, 1000),
            default=0,
            metavar="N",
            help="Higher runs first within the queue, -1000 to 1000 [default: 0].",
        ),
        click.option(
            "--timeout",
            "execution_timeout_s",
            type=POSITIVE_SECONDS,
            metavar="S",
            help="Execution timeout: an attempt running longer fails TIMED_OUT (and is retried).",
        ),
        click.option(
            "--schedule-to-start-timeout",
            "schedule_to_start_timeout_s",
            type=POSITIVE_SECONDS,
            metavar="S",
            help="Fail the task if no node starts it within S seconds of it being due.",
        ),
        click.option(
            "--result-ttl",
            "result_ttl_s",
            type=POSITIVE_SECONDS,
            metavar="S",
            help="Keep the finished task S seconds [default: the coordinator's, 7 days].",
        ),
        click.option(
            "--rate-key",
            metavar="K",
            help="Share the rate limit of key K (see rate-limits) with the key's other tasks.",
        ),
        click.option(
            "--header",
            "headers",
            multiple=True,
            callback=parse_headers,
            metavar="KEY=VALUE",
            help="Metadata for the handler (ctx.headers), e.g. a trace id or tenant (repeatable).",
        ),
    ]
    for option in reversed(options):  # decorators apply bottom-up; keep the order above
        command = option(command)
    return command
