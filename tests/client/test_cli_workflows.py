"""The dtq-client commands for dependencies, groups, schedules, rate limits and prefetch.

Against a real coordinator process and worker node (``submit --depends-on``,
``group``, ``schedules ...``, ``rate-limits ...``, ``queues rate`` and the
PREFETCH column of ``nodes``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from dtq_client import Client, QueueFull, TaskSpec, TaskState
from dtq_client.cli import cli
from tests.harness import RawNode, wait_until

from .conftest import NOBODY, Cluster

CLEAN_ENV: dict[str, str | None] = {
    "DTQ_ADDRESS": None,
    "DTQ_OUTPUT": None,
    "DTQ_TIMEOUT": None,
    "DTQ_RETRIES": None,
}
UNKNOWN_ID = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"


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
        return CliRunner(env=CLEAN_ENV).invoke(cli, ["--address", cluster.address, *args])

    return run


def field(name: str, value: str) -> re.Pattern[str]:
    """A line of a key-value view: ``name``, spaces, ``value`` (and padding)."""
    return re.compile(rf"^{re.escape(name)} +{re.escape(value)} *$", re.MULTILINE)


def rows(result: Result) -> list[list[str]]:
    """The lines of a table, split on whitespace."""
    assert result.exit_code == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


# --- dependencies and groups ---------------------------------------------------------------


def test_submit_depends_on(dtq: Dtq, client: Client, queue: str) -> None:
    parents = [client.submit(NOBODY, queue=queue).id for _ in range(2)]
    result = dtq(
        *("-o", "json", "submit", "echo", "-q", queue, "--rate-key", "tenant-7"),
        *("--depends-on", parents[0], "--depends-on", parents[1]),
        *("--on-dependency-failure", "cancel"),
    )
    assert result.exit_code == 0, result.stderr
    child = json.loads(result.stdout)
    assert (child["state"], child["dependsOn"], child["rateKey"]) == (
        "TASK_STATE_WAITING",
        parents,
        "tenant-7",
    )
    table = dtq("get", child["id"])
    assert field("state", "waiting").search(table.stdout)
    assert re.search(rf"^depends on +{parents[0]} *\n +{parents[1]} *$", table.stdout, re.M)
    assert field("rate key", "tenant-7").search(table.stdout)
    waiting = dtq("list", "-q", queue, "--state", "waiting", "-o", "jsonl")
    assert [json.loads(line)["id"] for line in waiting.stdout.splitlines()] == [child["id"]]
    # Its policy is cancel: cancelling a parent cancels it.
    client.cancel(parents[0])
    assert client.wait(child["id"], timeout_s=5).state is TaskState.CANCELLED
    # The default policy is fail.
    orphan = dtq("-o", "json", "submit", "echo", "-q", queue, "--depends-on", parents[0])
    assert json.loads(orphan.stdout)["state"] == "TASK_STATE_FAILED"
    bad = dtq("submit", "echo", "-q", queue, "--depends-on", UNKNOWN_ID)
    assert bad.exit_code == 3
    assert "task.depends_on[0]" in bad.stderr
    usage = dtq("submit", "echo", "--on-dependency-failure", "cancel")
    assert usage.exit_code == 2
    assert "--depends-on" in usage.stderr


def test_group_shows_state_counts_and_members(dtq: Dtq, client: Client, queue: str) -> None:
    submitted = client.submit_group([TaskSpec(NOBODY, i, queue=queue) for i in range(2)])
    ids = [t.id for t in submitted.tasks]
    table = dtq("group", submitted.group_id)
    assert table.exit_code == 0, table.stderr
    assert field("state", "running").search(table.stdout)
    assert field("total", "2").search(table.stdout)
    assert field("pending", "2").search(table.stdout)
    assert re.search(rf"^tasks +{ids[0]} *\n +{ids[1]} *$", table.stdout, re.MULTILINE)
    assert client.cancel_tasks(queue=queue) == (2, 0)
    data = json.loads(dtq("-o", "json", "group", submitted.group_id).stdout)
    assert (data["groupId"], data["state"], data["taskIds"]) == (
        submitted.group_id,
        "GROUP_STATE_CANCELLED",
        ids,
    )
    assert (data["total"], data["cancelled"], data["pending"]) == (2, 2, 0)
    missing = dtq("group", uuid.uuid4().hex)
    assert missing.exit_code == 3
    assert "NOT_FOUND (GROUP_NOT_FOUND)" in missing.stderr


# --- headers -------------------------------------------------------------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_submit_with_headers(dtq: Dtq, client: Client, queue: str) -> None:
    result = dtq(
        *("-o", "json", "submit", NOBODY, "-q", queue),
        *("--header", "a=1", "--header", "b=x=y"),
    )
    assert result.exit_code == 0, result.stderr
    task_id = json.loads(result.stdout)["id"]
    shown = dtq("-o", "json", "get", task_id)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["headers"] == {"a": "1", "b": "x=y"}
    assert client.get(task_id).headers == {"a": "1", "b": "x=y"}
    table = dtq("get", task_id)
    assert re.search(r"^headers +a=1 *\n +b=x=y *$", table.stdout, re.MULTILINE), table.stdout
    bare = dtq("-o", "json", "submit", NOBODY, "-q", queue)
    assert json.loads(bare.stdout)["headers"] == {}
    bad = dtq("submit", NOBODY, "-q", queue, "--header", "bad key=1")
    assert bad.exit_code == 3
    assert 'task.headers["bad key"]' in bad.stderr
    # Listing by header: every one given must match.
    found = dtq("-o", "json", "list", "-q", queue, "--header", "a=1", "--header", "b=x=y")
    assert [t["id"] for t in json.loads(found.stdout)] == [task_id]
    assert json.loads(dtq("-o", "json", "list", "-q", queue, "--header", "a=2").stdout) == []
    assert [t.id for t in client.list_tasks(queue=queue, headers={"a": "1"})] == [task_id]


def test_schedules_create_with_headers(dtq: Dtq, client: Client, queue: str) -> None:
    name = f"h-{queue}"
    created = dtq(
        *("schedules", "create", name, NOBODY, "--every", "3600", "-q", queue, "--paused"),
        *("--header", "tenant=acme", "--header", f"traceparent={TRACEPARENT}"),
    )
    try:
        assert created.exit_code == 0, created.stderr
        assert re.search(
            rf"^headers +tenant=acme *\n +traceparent={TRACEPARENT} *$", created.stdout, re.M
        ), created.stdout
        expected = {"tenant": "acme", "traceparent": TRACEPARENT}
        assert client.get_schedule(name).task.headers == expected
        data = json.loads(dtq("-o", "json", "schedules", "get", name).stdout)
        assert data["task"]["headers"] == expected
    finally:
        client.delete_schedule(name)


# --- schedules -----------------------------------------------------------------------------


def test_schedules_create_list_pause_resume_and_delete(
    dtq: Dtq, client: Client, queue: str
) -> None:
    name = f"s-{queue}"
    created = dtq(
        *("schedules", "create", name, NOBODY, "--cron", "* * * * * *", "-q", queue),
        *("--payload", '{"n": 1}', "--missed", "run-all", "--priority", "5", "-o", "json"),
    )
    assert created.exit_code == 0, created.stderr
    data = json.loads(created.stdout)
    assert (data["name"], data["cron"], data["missedTicksPolicy"]) == (
        name,
        "* * * * * *",
        "MISSED_TICKS_POLICY_RUN_ALL",
    )
    assert (data["task"]["queue"], data["task"]["priority"]) == (queue, 5)
    assert data["task"]["payload"]["json"] == {"n": 1}
    try:
        wait_until(lambda: client.list_tasks(queue=queue), 5, what="a tick")
        [row] = [r for r in rows(dtq("schedules")) if r[0] == name]
        # NAME TIMING(cron * * * * * *) ZONE TYPE QUEUE PAUSED MISSED FIRED NEXT LAST
        assert row[1:8] == ["cron", "*", "*", "*", "*", "*", "*"]
        assert row[8:13] == ["UTC", NOBODY, queue, "no", "run-all"]
        assert int(row[13]) >= 1
        listed = dtq("schedules", "list", "-o", "jsonl")
        assert name in [json.loads(line)["name"] for line in listed.stdout.splitlines()]
        paused = dtq("schedules", "pause", name)
        assert field("paused", "yes").search(paused.stdout)
        view = dtq("schedules", "get", name)
        assert field("timing", "cron * * * * * *").search(view.stdout)
        assert field("payload", '{"n":1}').search(view.stdout)
        assert field("missed ticks", "run-all").search(view.stdout)
        resumed = dtq("-o", "json", "schedules", "resume", name)
        assert json.loads(resumed.stdout)["paused"] is False
    finally:
        deleted = dtq("-o", "json", "schedules", "delete", name)
    assert deleted.exit_code == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {}
    assert f"schedule '{name}' deleted" in deleted.stderr
    gone = dtq("schedules", "get", name)
    assert gone.exit_code == 3
    assert "NOT_FOUND (SCHEDULE_NOT_FOUND)" in gone.stderr


def test_a_schedule_that_cannot_fire_shows_failing_and_why(
    dtq: Dtq, client: Client, queue: str
) -> None:
    name = f"orphaned-{queue}"
    spec = TaskSpec(NOBODY, queue=queue, depends_on=[str(uuid.uuid4())])  # no such task
    client.create_schedule(name, spec, cron="* * * * * *")
    try:
        wait_until(lambda: client.get_schedule(name).last_error, 5, what="a failed tick")
        [row] = [r for r in rows(dtq("schedules")) if r[0] == name]
        assert row[-2:] == ["failing", "-"]  # NEXT (a time, then "failing") and LAST
        view = dtq("schedules", "get", name)
        reason = r"^last error +task\.depends_on\[0\]: no task with that id \(at 20"
        assert re.search(reason, view.stdout, re.M), view.stdout
        data = json.loads(dtq("-o", "json", "schedules", "get", name).stdout)
        assert "no task with that id" in data["lastError"] and data["lastErrorTime"]
    finally:
        client.delete_schedule(name)


def test_schedules_create_with_an_interval_and_its_errors(
    dtq: Dtq, client: Client, queue: str
) -> None:
    name = f"i-{queue}"
    args = (
        *("schedules", "create", name, NOBODY, "--every", "3600", "-q", queue, "--paused"),
        *("--timeout", "30", "--rate-key", "tenant-7"),
    )
    created = dtq(*args)
    try:
        assert field("timing", "every 3600 s").search(created.stdout), created.stderr
        assert field("paused", "yes").search(created.stdout)
        assert field("missed ticks", "run-once").search(created.stdout)
        assert field("execution timeout", "30 s").search(created.stdout)
        schedule = client.get_schedule(name)
        assert (schedule.interval_s, schedule.task.rate_key) == (3600.0, "tenant-7")
        # The same again is fine; something else under the name is not.
        assert dtq(*args).exit_code == 0
        taken = dtq("schedules", "create", name, NOBODY, "--every", "60")
        assert taken.exit_code == 3
        assert "ALREADY_EXISTS (SCHEDULE_EXISTS)" in taken.stderr
    finally:
        client.delete_schedule(name)
    bad_cron = dtq("schedules", "create", name, NOBODY, "--cron", "every tuesday")
    assert bad_cron.exit_code == 3
    assert "schedule.cron" in bad_cron.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("schedules", "create", "s", "echo"),
        ("schedules", "create", "s", "echo", "--cron", "* * * * *", "--every", "60"),
        ("schedules", "create", "s", "echo", "--every", "60", "--tz", "Europe/Paris"),
        ("schedules", "create", "s", "echo", "--every", "0.5"),
        ("schedules", "create", "s", "echo", "--cron", "* * * * *", "--missed", "never"),
        ("schedules", "create", "s", "--cron", "* * * * *"),
        ("schedules", "pause"),
        ("rate-limits", "set", "k", "0"),
        ("rate-limits", "set", "k", "1", "--burst", "0"),
        ("rate-limits", "delete"),
        ("queues", "rate", "q", "-1"),
        ("submit", "echo", "--on-dependency-failure", "retry", "--depends-on", UNKNOWN_ID),
    ],
)
def test_usage_errors_exit_2(dtq: Dtq, args: tuple[str, ...]) -> None:
    result = dtq(*args)
    assert result.exit_code == 2, result.output


# --- rate limits, queue rate, prefetch -----------------------------------------------------


def test_rate_limits_set_list_and_delete(dtq: Dtq, client: Client) -> None:
    key = f"tenant-{uuid.uuid4().hex[:12]}"
    table = rows(dtq("rate-limits", "set", key, "2.5", "--burst", "3"))
    assert table == [["KEY", "PER", "SECOND", "BURST"], [key, "2.5", "3"]]
    assert [key, "2.5", "3"] in rows(dtq("rate-limits"))
    data = json.loads(dtq("-o", "json", "rate-limits", "set", key, "10").stdout)
    assert data == {"key": key, "perSecond": 10.0, "burst": 10}
    listed = dtq("rate-limits", "list", "-o", "jsonl")
    assert {"key": key, "perSecond": 10.0, "burst": 10} in [
        json.loads(line) for line in listed.stdout.splitlines()
    ]
    deleted = dtq("-o", "json", "rate-limits", "delete", key)
    assert deleted.exit_code == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {}
    assert f"rate limit of '{key}' removed" in deleted.stderr
    assert key not in [limit.key for limit in client.rate_limits()]
    quiet = dtq("rate-limits", "delete", key)
    assert (quiet.exit_code, quiet.stdout) == (0, "")


def test_queues_rate(dtq: Dtq, client: Client, queue: str) -> None:
    limited = rows(dtq("queues", "rate", queue, "2.5"))
    assert limited[0][-3:] == ["RATE/S", "MAX", "DEPTH"]
    assert limited[1] == [queue, "0", "0", "0", "0", "0", "no", "-", "2.5", "-"]
    assert [queue, "0", "0", "0", "0", "0", "no", "-", "2.5", "-"] in rows(dtq("queues"))
    data = json.loads(dtq("-o", "json", "queues", "rate", queue, "40").stdout)
    assert (data["name"], data["rateLimit"]) == (queue, 40.0)
    removed = rows(dtq("queues", "rate", queue, "0"))
    assert removed[1][-2] == "-"
    [stats] = [q for q in client.queues() if q.name == queue]
    assert stats.rate_limit == 0


def test_queues_depth(dtq: Dtq, client: Client, queue: str) -> None:
    capped = rows(dtq("queues", "depth", queue, "2"))
    assert capped[0][-2:] == ["MAX", "DEPTH"]
    assert capped[1] == [queue, "0", "0", "0", "0", "0", "no", "-", "-", "2"]
    first = client.submit(NOBODY, queue=queue, idempotency_key=f"{queue}-1")
    client.submit(NOBODY, queue=queue)
    with pytest.raises(QueueFull) as full:
        client.submit(NOBODY, queue=queue)
    assert f"queue '{queue}' is full" in str(full.value)
    # The same spec again adds nothing: answered, not refused.
    assert client.submit(NOBODY, queue=queue, idempotency_key=f"{queue}-1").id == first.id
    refused = dtq("submit", NOBODY, "--queue", queue)
    assert refused.exit_code == 3
    assert refused.stderr.startswith("error: RESOURCE_EXHAUSTED (QUEUE_FULL)"), refused.stderr
    data = json.loads(dtq("-o", "json", "queues", "depth", queue, "0").stdout)
    assert (data["name"], data.get("maxDepth", 0), data["queued"]) == (queue, 0, "2")
    client.submit(NOBODY, queue=queue)
    [stats] = [q for q in client.queues() if q.name == queue]
    assert (stats.max_depth, stats.queued) == (0, 3)


def test_nodes_show_prefetch(dtq: Dtq, cluster: Cluster, queue: str) -> None:
    node_id = f"raw-{queue}"
    node = RawNode(cluster.address, node_id=node_id, prefetch=7, queues=(queue,))
    try:
        table = rows(dtq("nodes"))
        prefetch = table[0].index("PREFETCH")
        [row] = [r for r in table if r[0] == node_id]
        assert (row[prefetch - 1], row[prefetch]) == ("0/1", "7")
        listed = json.loads(dtq("-o", "json", "nodes").stdout)
        [mine] = [n for n in listed if n["nodeId"] == node_id]
        assert (mine["slots"], mine["prefetch"]) == (1, 7)
    finally:
        node.close()
