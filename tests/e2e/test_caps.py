"""Caps per identity (RELIABILITY R7), against a real coordinator process.

A tokens-file entry's ``max_streams`` bounds the streams one identity holds
open at once, and a worker entry's ``max_nodes`` the distinct nodes connected
with it; one over gets RESOURCE_EXHAUSTED, and the slot is usable again once
freed. A refused node keeps retrying, so it joins when a slot frees.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtq_client import Client, NodeState, ResourceExhausted, TaskState
from dtq_server.tokens import entry, new_token
from tests.harness import TokenServer, start_node, start_server_with_tokens, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    tokens = {name: new_token() for name in ("watcher", "other", "admin", "fleet")}
    server = start_server_with_tokens(
        tmp_path_factory.mktemp("caps"),
        entry("watcher", "submitter", tokens["watcher"]) + "max_streams = 2\n"
        + entry("other", "submitter", tokens["other"], own_tasks=False)
        + entry("admin", "admin", tokens["admin"])
        + entry("fleet", "worker", tokens["fleet"]) + "max_nodes = 1\n",
    )  # fmt: skip
    yield TokenServer(server, tokens)
    server.stop()


def test_an_identity_holds_at_most_max_streams_open(capped: TokenServer) -> None:
    with Client(capped.server.address, token=capped.tokens["watcher"]) as client:
        # Tasks no node runs stay queued, so their watches stay open.
        ids = [client.submit("nobody.runs.this", i, queue="idle").id for i in range(3)]
        first, second = (client.watch(task_id, timeout_s=60) for task_id in ids[:2])
        assert next(first).state is TaskState.QUEUED
        assert next(second).state is TaskState.QUEUED
        with pytest.raises(ResourceExhausted, match="watcher already has 2 streams open"):
            next(iter(client.watch(ids[2], timeout_s=60)))
        assert client.get(ids[2]).state is TaskState.QUEUED  # unary calls are not capped
        with Client(capped.server.address, token=capped.tokens["other"]) as other:
            assert next(iter(other.watch(ids[2], timeout_s=60))).id == ids[2]  # others unaffected
        first.close()  # frees a slot (the coordinator sees the stream end at once)

        def third_watch_opens() -> bool:
            try:
                return next(iter(client.watch(ids[2], timeout_s=60))).id == ids[2]
            except ResourceExhausted:
                return False

        wait_until(third_watch_opens, 10, what="the freed stream slot")
        second.close()


def test_a_worker_token_connects_at_most_max_nodes(capped: TokenServer, tmp_path: Path) -> None:
    env = {"DTQ_TOKEN": capped.tokens["fleet"]}
    admin = Client(capped.server.address, token=capped.tokens["admin"])

    def live() -> set[str]:
        return {n.node_id for n in admin.nodes() if n.state is NodeState.ACTIVE}

    first = start_node(capped.server.address, tmp_path, "fleet-1", env=env)
    second = None
    try:
        wait_until(lambda: live() == {"fleet-1"}, 30, what="fleet-1 to register")
        second = start_node(capped.server.address, tmp_path, "fleet-2", env=env)
        wait_until(lambda: "fleet already has 1 nodes open" in second.log(), 30, what="the refusal")
        assert live() == {"fleet-1"} and second.alive()  # refused, and still trying
        first.signal(signal.SIGTERM)  # leaves: its slot is free
        assert first.wait(30) == 0
        wait_until(lambda: live() == {"fleet-2"}, 30, what="fleet-2 to take the freed slot")
    finally:
        first.stop()
        if second is not None:
            second.stop()
        admin.close()
