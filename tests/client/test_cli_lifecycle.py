"""The dtq-client lifecycle commands against a real coordinator process and worker node.

Submit options (priority, schedule, timeouts, retention), bulk ``cancel``,
``retry``, ``purge`` and its confirmation prompt, ``queues pause|resume|limit``
and ``wait --follow``. The prompt is answered through a real pseudo-terminal,
since ``purge`` refuses to ask anything of a stdin that is not one.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result

from dtq_client import Client, TaskState
from dtq_client.cli import cli
from tests.harness import python_env

from .conftest import NOBODY, Cluster

CLEAN_ENV: dict[str, str | None] = {
    "DTQ_ADDRESS": None,
    "DTQ_OUTPUT": None,
    "DTQ_TIMEOUT": None,
    "DTQ_RETRIES": None,
}


@pytest.fixture
def cluster(process_cluster: Cluster) -> Cluster:
    """A coordinator process: CliRunner captures stdout, which an in-process one logs to."""
    return process_cluster


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with Client(cluster.address, timeout_s=5.0) as client:
        yield client


Dtq = Callable[..., Result]
"""Runs ``dtq-client --address <cluster> ARGS...`` in-process and returns the click Result."""


@pytest.fixture
def dtq(cluster: Cluster) -> Dtq:
    """The ``dtq-client`` command, pointed at the cluster."""

    def run(*args: str) -> Result:
        runner = CliRunner(env=CLEAN_ENV)
        return runner.invoke(cli, ["--address", cluster.address, *args])

    return run


def field(name: str, value: str) -> re.Pattern[str]:
    """A line of a key-value view: ``name``, spaces, ``value`` (and padding)."""
    return re.compile(rf"^{re.escape(name)} +{re.escape(value)} *$", re.MULTILINE)


# --- submit --------------------------------------------------------------------------------


def test_submit_takes_the_lifecycle_options(dtq: Dtq, client: Client, queue: str) -> None:
    before = datetime.now(UTC)
    result = dtq(
        *("submit", NOBODY, "-q", queue, "-o", "json", "--priority", "-3", "--delay", "30"),
        *("--timeout", "2.5", "--schedule-to-start-timeout", "600", "--result-ttl", "60"),
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["priority"], data["executionTimeout"]) == (-3, "2.500s")
    scheduled = datetime.fromisoformat(data["scheduledTime"])
    assert before + timedelta(seconds=30) <= scheduled <= datetime.now(UTC) + timedelta(seconds=30)
    task = client.get(data["id"])
    assert (task.priority, task.execution_timeout_s) == (-3, 2.5)
    # The table view shows the new fields too.
    table = dtq("get", task.id)
    assert table.exit_code == 0, table.stderr
    assert field("priority", "-3").search(table.stdout)
    assert field("execution timeout", "2.5 s").search(table.stdout)
    assert re.search(r"^scheduled +\d{4}-\d\d-\d\dT", table.stdout, re.MULTILINE)
    cancelled = dtq("cancel", task.id)
    assert re.search(r"^expires +\d{4}-\d\d-\d\dT", cancelled.stdout, re.MULTILINE)
    expires = client.get(task.id).expires_at
    finished = client.get(task.id).finished_at
    assert expires is not None and finished is not None
    assert (expires - finished).total_seconds() == pytest.approx(60, abs=0.01)


def test_submit_at_reads_a_naive_time_as_local(dtq: Dtq, client: Client, queue: str) -> None:
    local = datetime.now().replace(microsecond=0) + timedelta(hours=2)
    naive = dtq("-o", "json", "submit", NOBODY, "-q", queue, "--at", local.isoformat())
    assert naive.exit_code == 0, naive.stderr
    assert datetime.fromisoformat(json.loads(naive.stdout)["scheduledTime"]) == local.astimezone()
    aware = dtq("-o", "json", "submit", NOBODY, "-q", queue, "--at", "2099-01-01T00:00:00Z")
    assert aware.exit_code == 3  # more than a year ahead: the coordinator names the field
    assert "task.run_at" in aware.stderr


def test_submit_wait_timeout_is_the_wait_and_timeout_the_execution(
    dtq: Dtq,
    queue: str,
) -> None:
    result = dtq(
        "submit", NOBODY, "-q", queue, "--timeout", "60", "--wait", "--wait-timeout", "0.2"
    )
    assert result.exit_code == 4
    assert "timed out" in result.stderr
    assert result.stdout == ""


# --- wait --follow -------------------------------------------------------------------------


def test_wait_follow_prints_changes_on_stderr_and_the_task_on_stdout(
    dtq: Dtq,
    client: Client,
) -> None:
    task = client.submit("sleep", {"seconds": 0.3})
    result = dtq("-o", "json", "wait", task.id, "--follow")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "TASK_STATE_SUCCEEDED"
    states = [line.split()[1] for line in result.stderr.splitlines()]
    assert states[-1] == "succeeded"
    assert "running" in states
    assert len(states) == len(set(states))


def test_wait_follow_times_out_and_fails_like_wait(dtq: Dtq, client: Client, queue: str) -> None:
    waiting = client.submit(NOBODY, queue=queue)
    timed_out = dtq("wait", waiting.id, "--follow", "--timeout", "0.2")
    assert timed_out.exit_code == 4
    assert timed_out.stdout == ""
    assert timed_out.stderr.split()[1] == "queued"  # the change line came first
    client.cancel(waiting.id)
    cancelled = dtq("wait", "-f", waiting.id)
    assert cancelled.exit_code == 1
    assert field("state", "cancelled").search(cancelled.stdout)


# --- bulk cancel, retry, purge -------------------------------------------------------------


def test_bulk_cancel_prints_the_counts(dtq: Dtq, client: Client, queue: str) -> None:
    ids = [client.submit(NOBODY, queue=queue).id for _ in range(3)]
    other = client.submit("other", queue=queue)
    table = dtq("cancel", "--queue", queue, "--type", NOBODY, "--state", "QUEUED")
    assert table.exit_code == 0, table.stderr
    assert field("cancelled", "3").search(table.stdout)
    assert field("cancel requested", "0").search(table.stdout)
    assert {client.get(i).state for i in ids} == {TaskState.CANCELLED}
    as_json = dtq("-o", "json", "cancel", "-q", queue)
    assert json.loads(as_json.stdout) == {"cancelled": "1", "cancelRequested": "0"}
    assert client.get(other.id).state is TaskState.CANCELLED
    nothing = dtq("-o", "jsonl", "cancel", "--type", f"none-{queue}")
    assert nothing.stdout == '{"cancelled": "0", "cancelRequested": "0"}\n'


def test_retry_by_id_and_by_filter(dtq: Dtq, client: Client, queue: str) -> None:
    dropped = [client.cancel(client.submit(NOBODY, queue=queue).id) for _ in range(3)]
    by_id = dtq("retry", dropped[0].id, dropped[0].id)
    assert by_id.exit_code == 0, by_id.stderr
    assert field("retried", "1").search(by_id.stdout)
    assert client.get(dropped[0].id).state is TaskState.QUEUED
    # Not failed or cancelled (any more), or unknown: skipped, and listed on stderr.
    unknown = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"
    again = dtq("-o", "json", "retry", dropped[0].id, dropped[1].id, unknown)
    assert json.loads(again.stdout) == {
        "retried": "1",
        "skippedTaskIds": [dropped[0].id, unknown],
        "truncated": False,
    }
    assert f"skipped (not failed or cancelled, or unknown): {dropped[0].id} {unknown}" in (
        again.stderr
    )
    table = dtq("retry", dropped[0].id)
    assert field("retried", "0").search(table.stdout)
    assert field("skipped", "1").search(table.stdout)
    none_failed = dtq("-o", "json", "retry", "-q", queue)
    assert json.loads(none_failed.stdout) == {
        "retried": "0",
        "skippedTaskIds": [],
        "truncated": False,
    }
    by_filter = dtq("-o", "json", "retry", "-q", queue, "--type", NOBODY, "--state", "cancelled")
    assert json.loads(by_filter.stdout) == {
        "retried": "1",
        "skippedTaskIds": [],
        "truncated": False,
    }
    assert {client.get(t.id).state for t in dropped} == {TaskState.QUEUED}
    bad = dtq("retry", "abc")
    assert bad.exit_code == 3
    assert "task_ids[0]" in bad.stderr


def test_purge_refuses_without_yes_when_stdin_is_not_a_terminal(
    dtq: Dtq,
    client: Client,
    queue: str,
) -> None:
    task = client.cancel(client.submit(NOBODY, queue=queue).id)
    refused = dtq("purge", "--state", "cancelled", "-q", queue)
    assert refused.exit_code == 2
    assert "--yes" in refused.stderr
    assert client.get(task.id).state is TaskState.CANCELLED
    purged = dtq("-o", "json", "purge", "--state", "cancelled", "-q", queue, "--yes")
    assert purged.exit_code == 0, purged.stderr
    assert json.loads(purged.stdout) == {"deleted": "1"}
    table = dtq("purge", "--state", "cancelled", "-q", queue, "-y")
    assert field("deleted", "0").search(table.stdout)
    assert client.list_tasks(queue=queue) == []


@dataclass
class TerminalRun:
    """What a command run on a pseudo-terminal did."""

    exit_code: int
    stdout: str
    terminal: str
    """Everything written to the terminal (stderr, the prompt, the echoed answer)."""


def run_on_terminal(address: str, args: list[str], answer: str | None) -> TerminalRun:
    """Run ``dtq-client`` with stdin and stderr on a pseudo-terminal, stdout on a pipe.

    Once the ``[y/N]`` prompt appears, type ``answer`` (None: expect no prompt).
    """
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "dtq_client", "--address", address, *args]
    with subprocess.Popen(
        command, stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, env=python_env()
    ) as proc:
        os.close(terminal)
        seen = b""

        def read_some(timeout_s: float) -> bool:
            """Add what the terminal has to ``seen``; False once the child closed it."""
            nonlocal seen
            ready, _, _ = select.select([controller], [], [], timeout_s)
            if not ready:
                return True
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every process holding the terminal has exited
                return False
            seen += chunk
            return bool(chunk)

        try:
            if answer is not None:
                deadline = time.monotonic() + 30
                while b"[y/N]" not in seen:
                    assert time.monotonic() < deadline, f"no prompt: {seen!r}"
                    assert read_some(0.1), f"ended without a prompt: {seen!r}"
                os.write(controller, answer.encode() + b"\n")
            stdout, _ = proc.communicate(timeout=30)
            while read_some(0.1):
                pass
        finally:
            os.close(controller)
    return TerminalRun(proc.returncode, stdout.decode(), seen.decode(errors="replace"))


def test_purge_asks_first_showing_how_many_tasks_match(
    cluster: Cluster, client: Client, queue: str
) -> None:
    for _ in range(2):
        client.cancel(client.submit(NOBODY, queue=queue).id)
    args = ["purge", "--state", "cancelled", "--queue", queue, "-o", "json"]
    declined = run_on_terminal(cluster.address, args, "n")
    assert f"Delete 2 cancelled tasks in queue '{queue}'? [y/N]" in declined.terminal
    assert declined.exit_code == 5, declined.terminal
    assert "not confirmed: nothing deleted" in declined.terminal
    assert declined.stdout == ""
    assert len(client.list_tasks(queue=queue)) == 2
    confirmed = run_on_terminal(cluster.address, args, "y")
    assert confirmed.exit_code == 0, confirmed.terminal
    assert json.loads(confirmed.stdout) == {"deleted": "2"}
    assert client.list_tasks(queue=queue) == []
    # Nothing left to delete: no question asked.
    empty = run_on_terminal(cluster.address, args, None)
    assert empty.exit_code == 0, empty.terminal
    assert json.loads(empty.stdout) == {"deleted": "0"}
    assert "[y/N]" not in empty.terminal


# --- queues --------------------------------------------------------------------------------


def test_queues_pause_resume_and_limit(dtq: Dtq, client: Client, queue: str) -> None:
    client.submit(NOBODY, queue=queue)
    paused = dtq("queues", "pause", queue)
    assert paused.exit_code == 0, paused.stderr
    header, row = paused.stdout.splitlines()
    assert header.split()[-6:] == ["PAUSED", "MAX", "RUNNING", "RATE/S", "MAX", "DEPTH"]
    assert row.split() == [queue, "1", "0", "0", "0", "0", "yes", "-", "-", "-"]
    limited = dtq("-o", "json", "queues", "limit", queue, "3")
    assert limited.exit_code == 0, limited.stderr
    data = json.loads(limited.stdout)
    assert (data["name"], data["paused"], data["maxRunning"]) == (queue, True, 3)
    listed = dtq("queues", "-o", "jsonl")
    [mine] = [json.loads(line) for line in listed.stdout.splitlines() if queue in line]
    assert (mine["paused"], mine["maxRunning"], mine["queued"]) == (True, 3, "1")
    table = dtq("queues")
    assert [queue, "1", "0", "0", "0", "0", "yes", "3", "-", "-"] in [
        line.split() for line in table.stdout.splitlines()
    ]
    resumed = dtq("queues", "resume", queue, "-o", "json")
    assert json.loads(resumed.stdout)["paused"] is False
    unlimited = dtq("queues", "limit", queue, "0")
    assert unlimited.stdout.splitlines()[1].split()[-4:] == ["no", "-", "-", "-"]
    [stats] = [q for q in client.queues() if q.name == queue]
    assert (stats.paused, stats.max_running) == (False, 0)
    bad = dtq("queues", "pause", "bad queue")
    assert bad.exit_code == 3
    assert bad.stderr.startswith("error: INVALID_ARGUMENT")
