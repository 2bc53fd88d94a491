"""The dtq-client command: parsing, output formats and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from dtq import __version__
from dtq.v1 import task_pb2, task_service_pb2
from dtq_client.cli import cli, describe_rpc_error
from dtq_client.errors import InvalidArgument
from dtq_client.models import Task, TaskState
from dtq_client.output import OutputFormat, Printer


# Keep the caller's DTQ_* environment out of the tests.
CLEAN_ENV: dict[str, str | None] = {
    "DTQ_ADDRESS": None,
    "DTQ_OUTPUT": None,
    "DTQ_TIMEOUT": None,
    "DTQ_RETRIES": None,
}


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner(env={**CLEAN_ENV, **(env or {})}).invoke(cli, list(args))


# --- help and usage ------------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("submit", "get", "wait", "watch", "cancel", "list", "nodes", "drain"):
        assert command in result.stdout
    assert "Exit codes:" in result.stdout
    assert "4    wait timed out" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dtq_client", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_invalid_payload_is_a_usage_error_naming_the_option() -> None:
    result = run("submit", "echo", "--payload", "{not json")
    assert result.exit_code == 2
    assert "--payload" in result.stderr
    assert "not valid JSON" in result.stderr
    assert result.stdout == ""


def test_invalid_payload_file_is_a_usage_error(tmp_path: Any) -> None:
    path = tmp_path / "payload.json"
    path.write_text("[1,")
    result = run("submit", "echo", "--payload-file", str(path))
    assert result.exit_code == 2
    assert "--payload-file" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "echo", "--payload", "1", "--payload-file", "-"),
        ("submit", "echo", "--timeout", "5"),
        ("list", "--state", "sleeping"),
        ("list", "--limit", "0"),
        ("-o", "yaml", "queues"),
        ("--timeout", "0", "queues"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert run(*args).exit_code == 2


def test_unreachable_coordinator_exits_3_with_a_clear_message() -> None:
    result = run("--address", "127.0.0.1:1", "--timeout", "2", "--retries", "1", "get", "t1")
    assert result.exit_code == 3
    assert "UNAVAILABLE" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert result.stdout == ""


def test_rpc_error_message_shows_code_reason_and_violations() -> None:
    error = InvalidArgument(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid task",
        reason="INVALID_FIELD",
        field_violations=[("task.queue", "too long")],
    )
    text = describe_rpc_error(error, "127.0.0.1:50051").plain
    assert text == "error: INVALID_ARGUMENT (INVALID_FIELD): invalid task\n  task.queue: too long"


def test_a_message_that_repeats_the_violations_is_not_printed_twice() -> None:
    error = InvalidArgument(
        grpc.StatusCode.INVALID_ARGUMENT,
        "task.queue: too long; task.type: empty",
        reason="INVALID_FIELD",
        field_violations=[("task.queue", "too long"), ("task.type", "empty")],
    )
    text = describe_rpc_error(error, "127.0.0.1:50051").plain
    assert (
        text
        == "error: INVALID_ARGUMENT (INVALID_FIELD)\n  task.queue: too long\n  task.type: empty"
    )
    assert str(error) == "INVALID_ARGUMENT (INVALID_FIELD): task.queue: too long; task.type: empty"


# --- formatting ----------------------------------------------------------------------------


def test_json_output_of_a_task_decodes_json_payloads(
    full_task: Task, capsys: pytest.CaptureFixture[str]
) -> None:
    Printer(OutputFormat.JSON, Console()).task(full_task)
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == full_task.id
    assert data["state"] == "TASK_STATE_FAILED"
    assert data["payload"]["json"] == {"to": "ada@example.com"}
    assert data["payload"]["contentType"] == "application/json"
    assert data["result"]["json"] == {"sent": False}
    assert "data" in data["result"]


def test_json_lists_are_arrays_and_jsonl_is_one_object_per_line(
    full_task: Task, capsys: pytest.CaptureFixture[str]
) -> None:
    Printer(OutputFormat.JSON, Console()).tasks([full_task, full_task])
    assert len(json.loads(capsys.readouterr().out)) == 2
    Printer(OutputFormat.JSONL, Console()).tasks([full_task, full_task])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["payload"]["json"] == {"to": "ada@example.com"}


def test_table_view_shows_fields_without_interpreting_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = Task(
        id="t1",
        type="echo",
        queue="default",
        state=TaskState.RUNNING,
        payload=b'{"text":"[bold]hi[/bold]"}',
    )
    Printer(OutputFormat.TABLE, Console(width=200)).task(task)
    out = capsys.readouterr().out
    assert "running" in out
    assert '{"text":"[bold]hi[/bold]"}' in out


