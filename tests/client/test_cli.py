"""The dtq-client command: parsing, output formats and exit codes.

Commands that talk to a coordinator run against a real one, with a real
``dtq-worker`` node running ``dtq_worker.demo:registry`` (the ``cluster``
fixture, shared by the module).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from dtq import __version__
from dtq_client import Client
from dtq_client.cli import cli, describe_rpc_error
from dtq_client.errors import InvalidArgument
from dtq_client.models import Node, NodeState, Schedule, Task, TaskSpec, TaskState
from dtq_client.output import OutputFormat, Printer
from tests.harness import python_env

from .conftest import NOBODY, NODE_ID, Cluster

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
    for command in ("retry", "purge", "queues", "health", "group", "schedules", "rate-limits"):
        assert command in result.stdout
    assert "Exit codes:" in result.stdout
    assert "4    wait timed out" in result.stdout
    assert "5    purge not confirmed" in result.stdout


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
        ("submit", "echo", "--wait-timeout", "5"),
        ("submit", "echo", "--timeout", "0"),
        ("submit", "echo", "--delay", "1", "--at", "2030-01-01T00:00:00Z"),
        ("submit", "echo", "--at", "next tuesday"),
        ("submit", "echo", "--priority", "1001"),
        ("submit", "echo", "--delay", "-1"),
        # No Duration holds these (they were tracebacks converting them):
        ("submit", "echo", "--delay", "inf"),
        ("submit", "echo", "--delay", "nan"),
        ("submit", "echo", "--timeout", "1e300"),
        ("submit", "echo", "--result-ttl", "inf"),
        ("schedules", "create", "s", "echo", "--every", "nan"),
        ("--timeout", "inf", "queues"),
        # Times that fall off the calendar in UTC (OverflowError tracebacks):
        ("submit", "echo", "--at", "0001-01-01T00:00+05:00"),
        ("submit", "echo", "--at", "9999-12-31T23:59:59-05:00"),
        ("submit", "echo", "--header", "novalue"),
        ("submit", "echo", "--header", "a=1", "--header", "a=2"),
        ("schedules", "create", "s", "echo", "--every", "60", "--header", "novalue"),
        ("cancel",),
        ("cancel", "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10", "--queue", "q"),
        ("cancel", "--state", "queued"),
        ("cancel", "--queue", "q", "--state", "failed"),
        ("retry",),
        ("retry", "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10", "--type", "t"),
        ("retry", "--queue", "q", "--state", "succeeded"),
        ("purge", "--queue", "q"),
        ("purge", "--state", "queued", "--yes"),
        ("queues", "limit", "q", "-1"),
        ("queues", "limit", "q"),
        # Past what the request's uint32 carries (a "Value out of range" traceback):
        ("queues", "limit", "q", str(2**63)),
        ("queues", "depth", "q", str(2**32)),
        ("queues", "drain", "q"),
        ("list", "--state", "sleeping"),
        ("list", "--limit", "0"),
        ("-o", "yaml", "queues"),
        ("--timeout", "0", "queues"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output + result.stderr


def test_a_header_must_be_key_equals_value_and_given_once() -> None:
    novalue = run("submit", "echo", "--header", "novalue")
    assert novalue.exit_code == 2
    assert "--header" in novalue.stderr
    assert "'novalue' is not KEY=VALUE" in novalue.stderr
    twice = run("submit", "echo", "--header", "a=1", "--header", "b=2", "--header", "a=3")
    assert twice.exit_code == 2
    assert "header 'a' given twice" in twice.stderr


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


def test_a_node_serving_many_queues_names_twenty_in_the_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A node may serve 100,000 queues: the table names 20 and counts the rest;
    JSON keeps them all."""
    queues = tuple(f"q{i:03d}" for i in range(120))
    node = Node(node_id="wide", session_id="s", state=NodeState.ACTIVE, queues=queues)
    Printer(OutputFormat.TABLE, Console(width=400)).nodes([node])
    table = capsys.readouterr().out
    assert ",".join(queues[:20]) + " and 100 more" in table
    assert "q020" not in table
    Printer(OutputFormat.JSON, Console()).nodes([node])
    assert json.loads(capsys.readouterr().out)[0]["queues"] == list(queues)


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


def test_table_views_show_headers_one_per_line_in_key_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    headers = {"tenant": "[bold]acme[/bold]", "b": "x=y"}
    task = Task(id="t1", type="echo", queue="default", state=TaskState.QUEUED, headers=headers)
    printer = Printer(OutputFormat.TABLE, Console(width=200))
    printer.task(task)
    out = capsys.readouterr().out
    assert re.search(r"^headers +b=x=y *\n +tenant=\[bold\]acme\[/bold\] *$", out, re.M), out
    printer.task(Task(id="t2", type="echo", queue="default", state=TaskState.QUEUED))
    assert not re.search("^headers", capsys.readouterr().out, re.M)
    spec = TaskSpec("echo", headers={"tenant": "acme"})
    printer.schedule(Schedule(name="s", task=spec, interval_s=60))
    assert re.search(r"^headers +tenant=acme *$", capsys.readouterr().out, re.M)


# --- against a real coordinator and node ---------------------------------------------------


@pytest.fixture
def cluster(process_cluster: Cluster) -> Cluster:
    """A coordinator process: CliRunner captures stdout, which an in-process one logs to."""
    return process_cluster


@pytest.fixture
def address(cluster: Cluster) -> str:
    return cluster.address


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with Client(cluster.address, timeout_s=5.0) as client:
        yield client


def field(name: str, value: str) -> re.Pattern[str]:
    """A line of the table view of a task: ``name``, spaces, ``value`` (and padding)."""
    return re.compile(rf"^{re.escape(name)} +{re.escape(value)} *$", re.MULTILINE)


def test_submit_wait_prints_the_result_as_json(address: str, client: Client) -> None:
    # As a user runs it: a separate process, data on stdout, messages on stderr.
    result = subprocess.run(
        [
            *(sys.executable, "-m", "dtq_client", "--address", address),
            *("submit", "echo", "--payload", '{"x": 1}', "--wait", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["type"], data["state"], data["nodeId"]) == (
        "echo",
        "TASK_STATE_SUCCEEDED",
        NODE_ID,
    )
    assert data["payload"]["json"] == {"x": 1}
    assert data["result"]["json"] == {"x": 1}
    assert data["result"]["contentType"] == "application/json"
    assert f"submitted {data['id']}, waiting" in result.stderr
    assert client.get(data["id"]).payload == b'{"x":1}'


def test_a_failed_task_exits_1(address: str) -> None:
    payload = '{"message": "boom"}'
    result = run(
        "--address",
        address,
        "submit",
        "fail",
        "--payload",
        payload,
        "--max-attempts",
        "1",
        "--wait",
    )
    assert result.exit_code == 1
    assert field("state", "failed").search(result.stdout)
    assert "ValueError: boom" in result.stderr


def test_a_cancelled_task_exits_1(address: str, client: Client, queue: str) -> None:
    task = client.submit(NOBODY, queue=queue)
    client.cancel(task.id)
    result = run("--address", address, "wait", task.id)
    assert result.exit_code == 1
    assert field("state", "cancelled").search(result.stdout)
    assert f"task {task.id} cancelled" in result.stderr


def test_watch_prints_each_state_as_json_lines(address: str, client: Client) -> None:
    task = client.submit("sleep", {"seconds": 0.3})
    result = run("--address", address, "-o", "jsonl", "watch", task.id)
    assert result.exit_code == 0, result.stderr
    states = [json.loads(line)["state"] for line in result.stdout.splitlines()]
    assert states[-1] == "TASK_STATE_SUCCEEDED"
    assert "TASK_STATE_RUNNING" in states
    assert len(states) == len(set(states))


def test_wait_timeout_exits_4(address: str, client: Client, queue: str) -> None:
    task = client.submit(NOBODY, queue=queue)
    result = run("--address", address, "wait", task.id, "--timeout", "0.2")
    assert result.exit_code == 4
    assert "timed out" in result.stderr
    assert "last seen queued" in result.stderr
    assert result.stdout == ""
    result = run(
        *("--address", address, "submit", NOBODY, "-q", queue, "--wait", "--wait-timeout", "0.2")
    )
    assert result.exit_code == 4
    assert result.stdout == ""


def test_a_bad_request_exits_3_naming_the_field(address: str) -> None:
    result = run("--address", address, "submit", "echo", "--queue", "bad queue")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.startswith("error: INVALID_ARGUMENT (INVALID_FIELD)")
    assert re.search(r"^  task\.queue: queue 'bad queue' must be ", result.stderr, re.MULTILINE)


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (("get", "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"), "NOT_FOUND (TASK_NOT_FOUND)"),
        (("cancel", "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"), "NOT_FOUND (TASK_NOT_FOUND)"),
        (("get", "abc"), "INVALID_ARGUMENT (INVALID_FIELD)"),
        (("drain", "ghost"), "NOT_FOUND (NODE_NOT_FOUND)"),
    ],
)
def test_coordinator_errors_exit_3(address: str, args: tuple[str, ...], status: str) -> None:
    result = run("--address", address, *args)
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: {status}")
    assert result.stdout == ""


def test_cancelling_a_finished_task_exits_3(address: str, client: Client) -> None:
    done = client.wait(client.submit("echo", 1).id, timeout_s=10)
    assert done.state is TaskState.SUCCEEDED
    result = run("--address", address, "cancel", done.id)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: FAILED_PRECONDITION (TASK_TERMINAL)")


def test_get_and_cancel_as_table_and_json(address: str, client: Client, queue: str) -> None:
    task = client.submit(NOBODY, {"n": 1}, queue=queue)
    table = run("--address", address, "get", task.id)
    assert table.exit_code == 0, table.stderr
    for name, value in [("id", task.id), ("queue", queue), ("state", "queued")]:
        assert field(name, value).search(table.stdout), table.stdout
    assert field("payload", '{"n":1}').search(table.stdout)
    data = json.loads(run("--address", address, "get", task.id, "-o", "json").stdout)
    assert (data["id"], data["state"], data["queue"]) == (task.id, "TASK_STATE_QUEUED", queue)
    assert data["payload"]["json"] == {"n": 1}
    cancelled = run("--address", address, "-o", "json", "cancel", task.id)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "TASK_STATE_CANCELLED"
    again = run("--address", address, "cancel", task.id)
    assert again.exit_code == 0, again.stderr
    assert field("state", "cancelled").search(again.stdout)


def test_list_as_table_and_json(address: str, client: Client, queue: str) -> None:
    tasks = [client.submit(NOBODY, i, queue=queue) for i in range(3)]
    client.cancel(tasks[0].id)
    newest_first = [t.id for t in reversed(tasks)]
    listed = json.loads(run("--address", address, "list", "-q", queue, "-o", "json").stdout)
    assert [t["id"] for t in listed] == newest_first
    limited = run("--address", address, "-o", "json", "list", "-q", queue, "--limit", "1")
    assert [t["id"] for t in json.loads(limited.stdout)] == newest_first[:1]
    # More than islice takes (a ValueError traceback): as good as no limit.
    unlimited = run("--address", address, "-o", "json", "list", "-q", queue, "--limit", str(2**63))
    assert [t["id"] for t in json.loads(unlimited.stdout)] == newest_first
    lines = run("--address", address, "-o", "jsonl", "list", "-q", queue, "--state", "cancelled")
    assert [json.loads(line)["id"] for line in lines.stdout.splitlines()] == [tasks[0].id]
    table = run("--address", address, "list", "-q", queue)
    assert table.exit_code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "TYPE", "QUEUE", "STATE", "ATTEMPT", "NODE", "UPDATED"]
    assert [row.split()[0] for row in rows] == newest_first
    assert [row.split()[3] for row in rows] == ["queued", "queued", "cancelled"]


def test_piped_tables_are_not_truncated(address: str, client: Client, queue: str) -> None:
    task = client.submit("a.rather.long.task.type.that.nobody.handles", queue=queue)
    result = run("--address", address, "list", "--queue", queue, "--state", "QUEUED")
    assert result.exit_code == 0, result.stderr
    [row] = result.stdout.splitlines()[1:]
    *columns, updated = row.split()
    assert columns == [task.id, task.type, queue, "queued", "0/3", "-"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", updated)


def test_nodes_as_table_and_json(address: str, cluster: Cluster) -> None:
    listed = json.loads(run("--address", address, "-o", "json", "nodes").stdout)
    [node] = [n for n in listed if n["nodeId"] == NODE_ID]
    assert node["state"] == "NODE_STATE_ACTIVE"
    assert node["taskTypes"] == ["add", "echo", "fail", "sleep"]
    assert node["pid"] == cluster.node.pid
    table = run("--address", address, "nodes")
    assert table.exit_code == 0, table.stderr
    header, *rows = [line.split() for line in table.stdout.splitlines()]
    assert header[:8] == ["NODE", "STATE", "HOST", "PID", "VERSION", "BUSY", "PREFETCH", "QUEUES"]
    [row] = [row for row in rows if row[0] == NODE_ID]
    assert row[1] == "active"
    assert row[6].isdigit(), "PREFETCH: the node's current one (auto by default)"
    assert "add,echo,fail,sleep" in row


def test_queues_as_table_and_json(address: str, client: Client, queue: str) -> None:
    for _ in range(2):
        client.submit(NOBODY, queue=queue)
    client.cancel(client.submit(NOBODY, queue=queue).id)
    listed = json.loads(run("--address", address, "queues", "-o", "json").stdout)
    [stats] = [q for q in listed if q["name"] == queue]
    counts = [int(stats[k]) for k in ("queued", "running", "succeeded", "failed", "cancelled")]
    assert counts == [2, 0, 0, 0, 1]
    table = run("--address", address, "queues")
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        *("QUEUE", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"),
        *("PAUSED", "MAX", "RUNNING", "RATE/S", "MAX", "DEPTH"),
    ]
    rows = [line.split() for line in table.stdout.splitlines()]
    assert [queue, "2", "0", "0", "0", "1", "no", "-", "-", "-"] in rows


def test_health_as_table_and_json(address: str) -> None:
    table = run("--address", address, "health")
    assert (table.exit_code, table.stdout) == (0, "SERVING\n")
    data = json.loads(run("--address", address, "-o", "json", "health").stdout)
    assert data == {"status": "SERVING"}


def test_env_selects_address_and_output(address: str, client: Client, queue: str) -> None:
    task = client.submit(NOBODY, queue=queue)
    result = run("get", task.id, env={"DTQ_ADDRESS": address, "DTQ_OUTPUT": "jsonl"})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == task.id
