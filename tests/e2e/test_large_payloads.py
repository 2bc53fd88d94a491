"""Payloads at the size limit, many at once: a real coordinator and a real node process.

Each message stays under gRPC's limits however many large tasks travel together:
a node taking ten 1 MiB tasks at once (its assignments), a listing of them (a page).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtq_client import Client, NodeState, TaskState
from tests.harness import ServerProcess, start_node, start_server, wait_until

NEAR_LIMIT = 1024 * 1024 - 4096
"""Characters of a JSON string payload just under the coordinator's 1 MiB payload limit."""
TASKS = 12


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "data")
    yield proc
    proc.stop()


def large(i: int) -> str:
    return f"{i}:" + "x" * NEAR_LIMIT


def submit_large(client: Client, count: int) -> list[str]:
    return [client.submit("echo", large(i)).id for i in range(count)]


@pytest.mark.timeout(90)
def test_a_node_takes_ten_large_tasks_at_once_and_runs_them_all(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Ten free threads, twelve ~1 MiB tasks waiting: one dispatch round leases ten
    (~10 MiB). In one message they were over both the coordinator's send limit and the
    node's receive limit: the stream broke on every resend and no task ever ran."""
    with Client(server.address) as client:
        ids = submit_large(client, TASKS)
        # No prefetch: the round leases exactly the ten free threads' worth, and no
        # auto-prefetch hand-back can make a second attempt.
        node = start_node(server.address, tmp_path, "big", "--prefetch", "0", threads=10)
        try:
            wait_until(
                lambda: all(client.get(i).state is TaskState.SUCCEEDED for i in ids),
                60,
                interval_s=0.2,
                what="every large task to succeed",
            )
            done = [client.get(i) for i in ids]
            assert [t.attempt for t in done] == [1] * TASKS  # no lease was lost on the way
            assert [t.result_value() for t in done] == [large(i) for i in range(TASKS)]
            assert [n.node_id for n in client.nodes() if n.state is NodeState.ACTIVE] == ["big"]
        finally:
            node.stop()
    assert "stream.broken" not in server.log()
    assert "larger than max" not in node.log()


@pytest.mark.timeout(60)
def test_listing_large_tasks_pages_them_under_the_message_limit(server: ServerProcess) -> None:
    """A page of twelve ~1 MiB tasks (~12 MiB) was over the 8 MiB send limit, so ListTasks
    failed RESOURCE_EXHAUSTED on every call. A page now ends early at ~4 MiB, and its token
    leads on to the rest."""
    with Client(server.address) as client:
        ids = submit_large(client, TASKS)
        first = client.list_tasks_page(page_size=100)
        assert 1 <= len(first.tasks) < TASKS and first.next_page_token
        assert [t.id for t in first.tasks] == ids[::-1][: len(first.tasks)]  # newest first
        listed = client.list_tasks(limit=100)  # follows the tokens
        assert [t.id for t in listed] == ids[::-1]
        assert [t.payload_value() for t in listed] == [large(i) for i in reversed(range(TASKS))]
