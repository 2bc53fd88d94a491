"""Rate limits (per key and per queue) and node prefetch through the client.

Against a real coordinator and worker nodes: a limit is checked by when the
node started each task (``started_at``, coordinator clock).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from dtq_client import (
    Client,
    ClientConfig,
    InvalidArgument,
    RateLimit,
    RetryPolicy,
    Task,
    TaskSpec,
    TaskState,
)
from dtq_worker.prefetch import CAP_PER_SLOT
from tests.harness import RawNode, wait_until

from .conftest import Cluster

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=10.0)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    config = ClientConfig(address=cluster.address, timeout_s=5.0, retry=FAST_RETRY)
    with Client.from_config(config) as client:
        yield client


@pytest.fixture
def key(client: Client) -> Iterator[str]:
    """A rate key of the test's own, whose limit is removed afterwards."""
    key = f"tenant-{uuid.uuid4().hex[:12]}"
    yield key
    client.delete_rate_limit(key)


def start_spread_s(tasks: list[Task]) -> float:
    """Seconds between the first and the last start of ``tasks``."""
    starts = [t.started_at for t in tasks]
    assert all(s is not None for s in starts)
    first, last = min(s for s in starts if s), max(s for s in starts if s)
    return (last - first).total_seconds()


def test_rate_limits_are_set_listed_replaced_and_deleted(client: Client, key: str) -> None:
    assert client.set_rate_limit(key, 2.5, burst=3) == RateLimit(key, 2.5, 3)
    other = f"{key}-b"
    try:
        # Without a burst: one second's worth of tokens, at least one.
        assert client.set_rate_limit(other, 10) == RateLimit(other, 10.0, 10)
        assert client.set_rate_limit(other, 0.5).burst == 1
        mine = [limit for limit in client.rate_limits() if limit.key.startswith(key)]
        assert mine == [RateLimit(key, 2.5, 3), RateLimit(other, 0.5, 1)]  # by key
    finally:
        client.delete_rate_limit(other)
    assert [limit.key for limit in client.rate_limits() if limit.key.startswith(key)] == [key]
    client.delete_rate_limit(other)  # nothing to delete: not an error


def test_rate_limits_are_validated(client: Client) -> None:
    with pytest.raises(ValueError, match="delete_rate_limit"):
        client.set_rate_limit("k", 0)
    with pytest.raises(InvalidArgument) as info:
        client.set_rate_limit("", -1)
    assert [field for field, _ in info.value.field_violations] == ["key", "per_second"]


def test_a_rate_key_limit_spaces_its_tasks_while_other_keys_run(client: Client, key: str) -> None:
    client.set_rate_limit(key, 4, burst=1)
    specs = [TaskSpec("echo", i, rate_key=key) for i in range(5)]
    specs += [TaskSpec("echo", i, rate_key=f"{key}-free") for i in range(5)]
    results = client.submit_many(specs)
    done = [client.wait(r.task.id, timeout_s=15) for r in results]
    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    limited, free = done[:5], done[5:]
    assert {t.rate_key for t in limited} == {key}
    # One token every 0.25 s. The coordinator lets burst + 1 tasks go at once after a
    # quiet period (a bucket keeps up to 0.999999 of a token beyond its burst), so at
    # least three waits of 0.25 s, less some start latency.
    assert start_spread_s(limited) >= 0.6
    # The other key is not held back behind the throttled one.
    assert start_spread_s(free) < 0.6
    last_free = max(t.started_at for t in free if t.started_at)
    assert last_free < max(t.started_at for t in limited if t.started_at)


def test_a_queue_rate_limit_spaces_the_queue_s_tasks(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    stats = client.set_queue_rate_limit(queue, 4)
    assert (stats.name, stats.rate_limit, stats.paused, stats.max_running) == (queue, 4.0, False, 0)
    [listed] = [q for q in client.queues() if q.name == queue]
    assert listed.rate_limit == 4.0
    served(4)
    ids = [client.submit("echo", i, queue=queue).id for i in range(8)]
    done = [client.wait(task_id, timeout_s=15) for task_id in ids]
    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    # A second's worth (4, plus one: see above) at once, then one every 0.25 s.
    assert start_spread_s(done) >= 0.6
    assert client.set_queue_rate_limit(queue, 0).rate_limit == 0
    with pytest.raises(InvalidArgument) as info:
        client.set_queue_rate_limit(queue, -1)
    assert [field for field, _ in info.value.field_violations] == ["rate_limit"]


def test_nodes_report_their_prefetch(client: Client, cluster: Cluster, queue: str) -> None:
    node_id = f"raw-{queue}"
    node = RawNode(
        cluster.address, node_id=node_id, slots=2, prefetch=3, queues=(queue,), auto_heartbeat=True
    )
    try:
        [listed] = [n for n in client.nodes() if n.node_id == node_id]
        assert (listed.slots, listed.prefetch, listed.busy_slots) == (2, 3, 0)
        # It is offered slots + prefetch tasks: five of the six are leased to it.
        for i in range(6):
            client.submit("echo", i, queue=queue)

        def leased() -> int:
            [again] = [n for n in client.nodes() if n.node_id == node_id]
            return again.busy_slots

        wait_until(lambda: leased() == 5, 10, what="five leases")
        assert len(client.list_tasks(queue=queue, state=TaskState.QUEUED)) == 1
        shared = next(n for n in client.nodes() if n.node_id == cluster.node_id)
        # The default, auto: sized to the tasks the node ran, within its cap per slot.
        assert 0 <= shared.prefetch <= CAP_PER_SLOT * shared.slots
    finally:
        node.close()
