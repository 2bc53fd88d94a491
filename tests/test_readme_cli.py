"""The README's CLI reference names every option, environment variable and command the
four commands have, and nothing they lack (it had drifted: dtq-client's --retries and
health --service were missing)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest

from dtq_client.cli import cli as client_cli
from dtq_server.cli import main as server_cli
from dtq_server.tokens import main as token_cli
from dtq_worker.cli import main as worker_cli
from tests.readme import section, tables

ALWAYS = {"--help", "--version"}


def table_rows(text: str) -> list[list[str]]:
    return [row for table in tables(text) for row in table if row[0].lstrip().startswith("`")]


def long_options(command: click.Command, offs: bool = False) -> set[str]:
    """The command's option names as typed (``--x``); with ``offs`` a flag's off
    switch too (``--no-x``, which the README need not spell out)."""
    return {
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in param.opts + (param.secondary_opts if offs else [])
        if name.startswith("--") and name not in ALWAYS
    }


def env_vars(command: click.Command) -> set[str]:
    return {
        param.envvar
        for param in command.params
        if isinstance(param, click.Option) and isinstance(param.envvar, str)
    }


def named(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text))


@pytest.mark.parametrize(
    ("command", "heading"),
    [(server_cli, "### `dtq-server`"), (worker_cli, "### `dtq-worker MODULE[:ATTR]`")],
    ids=["dtq-server", "dtq-worker"],
)
def test_the_option_tables_match_the_commands(command: click.Command, heading: str) -> None:
    rows = table_rows(section(heading))
    documented = set().union(*(named(row[0], r"`(--[a-z0-9-]+)`") for row in rows))
    documented_env = set().union(*(named(row[1], r"DTQ_[A-Z0-9_]+") for row in rows))
    assert long_options(command) - documented == set(), "options missing from the README"
    gone = documented - long_options(command, offs=True)
    assert gone == set(), "the README names options that are gone"
    assert env_vars(command) - documented_env == set(), "variables missing from the README"
    assert documented_env - env_vars(command) == set(), "the README names variables that are gone"


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        if isinstance(command, click.Group):
            yield from commands(command, path)
        else:
            yield path, command


def test_the_client_reference_names_every_command_and_option() -> None:
    text = section("### `dtq-client")
    globals_ = long_options(client_cli)
    assert globals_ - named(text, r"--[a-z0-9-]+") == set(), "global options missing"
    assert env_vars(client_cli) - named(text, r"DTQ_[A-Z0-9_]+") == set(), "variables missing"
    synopses = [row[0] for row in table_rows(text)]
    for path, command in commands(client_cli):
        group, _, verb = path.rpartition(" ")
        # "schedules [list]" documents both "schedules" and "schedules list".
        spelled = [path] + ([f"{group} [list]"] if verb == "list" and group else [])
        starts = [re.compile(rf"`{re.escape(p)}(?=[ `])") for p in spelled]
        rows = [s for s in synopses if any(start.search(s) for start in starts)]
        assert rows, f"dtq-client {path} is not in the command table"
        given = named(" ".join(rows), r"--[a-z0-9-]+")
        missing = long_options(command) - given - globals_
        assert missing == set(), f"dtq-client {path}: {sorted(missing)} not in its row"


def test_the_token_command_is_documented_with_its_options() -> None:
    text = section("### `dtq-token")
    assert long_options(token_cli) - named(text, r"--[a-z0-9-]+") == set()
