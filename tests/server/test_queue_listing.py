"""ListQueues and ListRateLimits a page at a time, read from the store page by page.

Both answered everything in one message: 42,000 rate limits on 200-character
keys (9,114,000 bytes) passed the 8 MiB a message may hold and
``dtq-client rate-limits`` failed for good; so would ~75,000 queues with long
names. In the PostgreSQL pass too (the pages follow the database's order).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from psycopg import sql

from dtq.v1 import admin_service_pb2 as pb
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq_client import AsyncClient, Client, Node, Page, QueueStats, Schedule, TaskSpec
from tests.harness import InProcessCoordinator, RawNode, server_config, wait_until
from tests.postgres import PostgresServer


@pytest.fixture
def stub(coordinator: InProcessCoordinator) -> Iterator[AdminServiceStub]:
    with grpc.insecure_channel(coordinator.address) as channel:
        yield AdminServiceStub(channel)


def queue_pages(stub: AdminServiceStub, page_size: int) -> list[list[pb.QueueStats]]:
    pages, token = [], ""
    while True:
        response = stub.ListQueues(
            pb.ListQueuesRequest(page_size=page_size, page_token=token), timeout=10
        )
        pages.append(list(response.queues))
        token = response.next_page_token
        if not token:
            return pages


def limit_pages(stub: AdminServiceStub, page_size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        response = stub.ListRateLimits(
            pb.ListRateLimitsRequest(page_size=page_size, page_token=token), timeout=10
        )
        pages.append([limit.key for limit in response.rate_limits])
        token = response.next_page_token
        if not token:
            return pages


def test_queues_with_tasks_or_settings_page_by_name_with_their_counts(
    coordinator: InProcessCoordinator, stub: AdminServiceStub
) -> None:
    with Client(coordinator.address) as client:
        # q00..q19 hold tasks (q00-q04 three each, cancelled below, so finished ones);
        # s05, s15 have settings alone; q07 has settings and tasks.
        tasks = client.submit_many([TaskSpec("echo", i, queue=f"q{i % 20:02d}") for i in range(45)])
        for name in ("s05", "s15", "q07"):
            client.pause_queue(name)
        client.set_queue_limit("q07", 3)
        for submitted in tasks:
            if submitted.task.queue < "q05":
                client.cancel(submitted.task.id)
    pages = queue_pages(stub, page_size=6)
    names = sorted([f"q{i:02d}" for i in range(20)] + ["s05", "s15"])
    assert [[q.name for q in page] for page in pages] == [
        names[i : i + 6] for i in range(0, len(names), 6)
    ]
    listed = {q.name: q for page in pages for q in page}
    assert [(q.queued, q.cancelled) for n, q in listed.items() if n < "q05"] == [(0, 3)] * 5
    assert [q.queued for n, q in listed.items() if "q05" <= n < "q20"] == [2] * 15
    assert (listed["q07"].paused, listed["q07"].max_running, listed["q07"].queued) == (True, 3, 2)
    assert listed["s05"].paused and listed["s15"].paused and listed["s05"].queued == 0
    assert queue_pages(stub, page_size=0) == [[q for page in pages for q in page]]


def test_a_queue_added_below_the_token_is_not_listed_twice(
    coordinator: InProcessCoordinator, stub: AdminServiceStub
) -> None:
    with Client(coordinator.address) as client:
        client.submit_many([TaskSpec("echo", 1, queue=name) for name in ("b", "d", "f")])
        first = stub.ListQueues(pb.ListQueuesRequest(page_size=2), timeout=10)
        assert [q.name for q in first.queues] == ["b", "d"]
        client.submit_many([TaskSpec("echo", 1, queue=name) for name in ("a", "c", "e")])
        rest = stub.ListQueues(
            pb.ListQueuesRequest(page_size=2, page_token=first.next_page_token), timeout=10
        )
        assert [q.name for q in rest.queues] == ["e", "f"]
        assert [q.name for q in client.queues()] == ["a", "b", "c", "d", "e", "f"]


def test_rate_limits_page_by_key_and_the_client_reads_every_page(
    coordinator: InProcessCoordinator, stub: AdminServiceStub
) -> None:
    keys = [f"k{i:04d}" + "x" * 150 for i in range(1_100)]
    with Client(coordinator.address) as client:
        for key in reversed(keys):
            client.set_rate_limit(key, 5.0)
        assert limit_pages(stub, page_size=400) == [keys[:400], keys[400:800], keys[800:]]
        assert limit_pages(stub, page_size=0) == [keys[:1_000], keys[1_000:]]
        client.delete_rate_limit(keys[0])
        assert [limit.key for limit in client.rate_limits()] == keys[1:]


def test_the_client_reads_every_page_of_queues(coordinator: InProcessCoordinator) -> None:
    names = [f"queue-{i:04d}" for i in range(2_100)]
    with Client(coordinator.address) as client:
        client.submit_many([TaskSpec("echo", 1, queue=name) for name in names], answer="ack")
        wait_until(lambda: len(client.queues()) == len(names), 10)
        assert [q.name for q in client.queues()] == names
        assert all(q.queued == 1 for q in client.queues())


def test_the_clients_page_queues_nodes_and_schedules_for_callers_that_page_themselves(
    coordinator: InProcessCoordinator,
) -> None:
    """``queues_page``, ``nodes_page`` and ``schedules_page``: what a dashboard reads,
    a page at a time, from both clients."""
    names = [f"own-{i}" for i in range(5)]
    nodes = [RawNode(coordinator.address, f"page-node-{i}", auto_heartbeat=True) for i in range(3)]
    try:
        with Client(coordinator.address) as client:
            client.submit_many([TaskSpec("echo", 1, queue=name) for name in names], answer="ack")
            for name in names:
                client.create_schedule(name, TaskSpec("echo", 1), interval_s=3600, paused=True)

            def every(read: Callable[[str], Page[Any]]) -> list[list[str]]:
                pages, token = [], ""
                while True:
                    page = read(token)
                    pages.append(
                        [getattr(item, "name", None) or item.node_id for item in page.items]
                    )
                    token = page.next_page_token
                    if not token:
                        return pages

            assert every(lambda token: client.queues_page(token, 2)) == [
                names[:2],
                names[2:4],
                names[4:],
            ]
            assert every(lambda token: client.schedules_page(token, 3)) == [names[:3], names[3:]]
            node_ids = [f"page-node-{i}" for i in range(3)]
            assert every(lambda token: client.nodes_page(token, 2)) == [node_ids[:2], node_ids[2:]]
            assert client.queues_page().items == tuple(client.queues())

        async def read_async() -> tuple[Page[QueueStats], Page[Node], Page[Schedule]]:
            async with AsyncClient(coordinator.address) as aio:
                queues = await aio.queues_page(page_size=4)
                return (
                    await aio.queues_page(queues.next_page_token, 4),
                    await aio.nodes_page(page_size=1),
                    await aio.schedules_page(page_size=5),
                )

        queues, first_node, schedules = asyncio.run(asyncio.wait_for(read_async(), 30))
        assert [q.name for q in queues.items] == names[4:] and not queues.next_page_token
        assert [n.node_id for n in first_node.items] == node_ids[:1] and first_node.next_page_token
        assert [s.name for s in schedules.items] == names and not schedules.next_page_token
    finally:
        for node in nodes:
            node.close()


@pytest.mark.parametrize("method", ["ListQueues", "ListRateLimits"])
def test_bad_tokens_and_sizes_are_refused(stub: AdminServiceStub, method: str) -> None:
    request_type = getattr(pb, f"{method}Request")
    call = getattr(stub, method)
    foreign = json.dumps({"listing": "ListNodes", "after": ["n1"]}).encode()
    not_a_name = json.dumps({"listing": method, "after": [3]}).encode()
    too_deep = b"[" * 100_000  # json.loads raised RecursionError: INTERNAL
    for token in ("garbage", base64.urlsafe_b64encode(foreign).decode(),
                  base64.urlsafe_b64encode(not_a_name).decode(),
                  base64.urlsafe_b64encode(too_deep).decode()):  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            call(request_type(page_token=token), timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        call(request_type(page_size=1_001), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (refused.value.details() or "")


@pytest.mark.postgres
def test_pages_follow_a_locale_ordered_database_without_skipping_or_repeating(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """In a database ordering text by an ICU locale ('a' < 'B', '-' nearly ignored),
    Python's order is not the database's: pages cut in one and read on in the other
    skipped and repeated queues."""
    name = f"t_icu_{uuid.uuid4().hex[:8]}"
    with postgres_server.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' "
                "LOCALE 'C'"
            ).format(sql.Identifier(name))
        )
    names = ["a-c", "ab", "B", "a", "A-1", "ac", "b", "Ab", "a.b", "a_b", "Z", "z"]
    try:
        config = server_config(tmp_path, database_url=postgres_server.dsn(name))
        coordinator = InProcessCoordinator(config).start()
        try:
            with (
                Client(coordinator.address) as client,
                grpc.insecure_channel(coordinator.address) as channel,
            ):
                client.submit_many([TaskSpec("echo", 1, queue=n) for n in names[:6]])
                for n in names[6:]:
                    client.pause_queue(n)  # settings alone
                with postgres_server.connect(name) as conn:
                    rows = conn.execute(
                        "SELECT n FROM unnest(%s::text[]) AS n ORDER BY n", (names,)
                    )
                    in_db_order = [n for (n,) in rows]
                assert in_db_order != sorted(names)  # the point of this database
                pages = queue_pages(AdminServiceStub(channel), page_size=2)
                assert [q.name for page in pages for q in page] == in_db_order
                for n in names[:4]:
                    client.set_rate_limit(n, 1.0)
                limits = limit_pages(AdminServiceStub(channel), page_size=1)
                assert [k for page in limits for k in page] == [
                    n for n in in_db_order if n in names[:4]
                ]
        finally:
            coordinator.stop()
    finally:
        postgres_server.drop_database(name)
