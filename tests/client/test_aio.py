"""The asyncio client against a real coordinator and a real worker node.

Each test runs one scenario on a fresh event loop (``asyncio.run``), bounded
by a timeout. Most share the module's in-process coordinator and its
``dtq-worker`` process running the demo handlers on the ``default`` queue
(the ``cluster`` fixture); tasks that must stay queued go to a queue of the
test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from dtq.tls import TlsConfigError
from dtq_client import (
    AlreadyExists,
    AsyncClient,
    Client,
    ClientConfig,
    DeadlineExceeded,
    GroupNotFound,
    GroupState,
    InvalidArgument,
    RetryPolicy,
    RpcError,
    SubmitAck,
    SubmitManyError,
    SubmitResult,
    Task,
    TaskNotFound,
    TaskSpec,
    TaskState,
    TaskTerminal,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from dtq_client.retry import READ_CODES, SUBMIT_CODES, async_retrying
from dtq_server.tokens import new_token
from tests.harness import InProcessCoordinator, ServerProcess, start_server, wait_until

from .conftest import NOBODY, Cluster

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=10.0)
# Rides out a coordinator restart (see test_client_rpc.py).
RESTART_RETRY = RetryPolicy(attempts=200, initial_backoff_s=0.05, max_backoff_s=0.2, total_s=20.0)
# A watch sees the task in this order, skipping states it was too slow to catch.
LIFECYCLE = [TaskState.QUEUED, TaskState.LEASED, TaskState.RUNNING, TaskState.SUCCEEDED]
# A caller's span, and the traceparent header a submit under it carries.
PARENT_SPAN = NonRecordingSpan(
    SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def run(scenario: Coroutine[Any, Any, T], timeout_s: float = 15.0) -> T:
    """Run ``scenario`` on a fresh event loop; fail if it takes longer than ``timeout_s``."""
    return asyncio.run(asyncio.wait_for(scenario, timeout_s))


def connect(address: str, **overrides: Any) -> AsyncClient:
    """An asyncio client with a short deadline and quick retries (call it in a coroutine)."""
    values: dict[str, Any] = {"timeout_s": 5.0, "retry": FAST_RETRY, **overrides}
    return AsyncClient.from_config(ClientConfig(address=address, **values))


def described(error: BaseException) -> tuple[object, ...]:
    """What a caller can branch on in an error from either client."""
    assert isinstance(error, RpcError), error
    return (type(error), error.code, error.reason, error.field_violations, error.message)


# --- submitting and reading ----------------------------------------------------------------


def test_submit_get_list_and_cancel(cluster: Cluster, queue: str) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            task = await client.submit(
                NOBODY, {"x": 1}, queue=queue, priority=5, headers={"tenant": "acme"}
            )
            assert (task.type, task.queue, task.state, task.priority) == (
                NOBODY,
                queue,
                TaskState.QUEUED,
                5,
            )
            assert (task.payload_value(), task.headers) == ({"x": 1}, {"tenant": "acme"})
            assert re.fullmatch(r"[0-9a-f]{32}-[0-9a-f]{12}", task.idempotency_key or "")
            assert await client.get(task.id) == task
            key = task.idempotency_key
            again = await client.submit(
                NOBODY, {"x": 1}, queue=queue, priority=5, idempotency_key=key
            )
            assert again.id == task.id
            other = await client.submit(NOBODY, queue=queue)
            listed = await client.list_tasks(queue=queue)
            assert [t.id for t in listed] == [other.id, task.id]  # newest first
            assert [t.id for t in await client.list_tasks(queue=queue, limit=1)] == [other.id]
            paged = [t.id async for t in client.iter_tasks(queue=queue, page_size=1)]
            assert paged == [other.id, task.id]
            page = await client.list_tasks_page(queue=queue, page_size=1)
            assert ([t.id for t in page.tasks], bool(page.next_page_token)) == ([other.id], True)
            page = await client.list_tasks_page(
                queue=queue, page_size=1, page_token=page.next_page_token
            )
            assert ([t.id for t in page.tasks], page.next_page_token) == ([task.id], "")
            by_header = await client.list_tasks(queue=queue, headers={"tenant": "acme"})
            assert [t.id for t in by_header] == [task.id]
            assert (await client.cancel(task.id)).state is TaskState.CANCELLED
            assert (await client.cancel(task.id)).state is TaskState.CANCELLED  # idempotent
            cancelled = await client.list_tasks(queue=queue, state="cancelled")
            assert [t.id for t in cancelled] == [task.id]
            assert await client.health() == "SERVING"

    run(scenario())


def test_concurrent_submits_are_each_stored_once(cluster: Cluster, queue: str) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            tasks = await asyncio.gather(
                *(client.submit(NOBODY, i, queue=queue) for i in range(200))
            )
            assert [t.payload_value() for t in tasks] == list(range(200))
            assert len({t.id for t in tasks}) == 200
            # Submitting them all again under their keys finds the same tasks.
            resubmits = [
                client.submit(
                    NOBODY, t.payload_value(), queue=queue, idempotency_key=t.idempotency_key
                )
                for t in tasks
            ]
            again = await asyncio.gather(*resubmits)
            assert [t.id for t in again] == [t.id for t in tasks]
            stored = await client.list_tasks(queue=queue, limit=1_000)
            assert sorted(t.id for t in stored) == sorted(t.id for t in tasks)

    run(scenario())


def test_thousands_of_concurrent_calls_on_one_client_all_get_through(
    cluster: Cluster, queue: str
) -> None:
    """More calls at once than the coordinator's 256 streams per connection: the
    client holds back the surplus (grpc.aio does not, and a few hundred of 2,000 were
    refused with RST_STREAM REFUSED_STREAM, too many for the retries to absorb)."""
    count = 2_000

    async def scenario() -> None:
        async with connect(cluster.address) as client:
            tasks = await asyncio.gather(
                *(client.submit(NOBODY, i, queue=queue) for i in range(count))
            )
            assert len({t.id for t in tasks}) == count
            stored = [t async for t in client.iter_tasks(queue=queue)]
            assert len(stored) == count

    run(scenario(), timeout_s=45)


def test_submit_many_in_batches_answering_tasks_or_acks(cluster: Cluster, queue: str) -> None:
    specs = [TaskSpec(type=NOBODY, payload=i, queue=queue) for i in range(5)]

    async def scenario() -> None:
        # Batches of two: five specs take three SubmitTasks calls.
        async with connect(cluster.address, submit_batch_size=2) as client:
            assert await client.submit_many([]) == []  # sends nothing (an empty call is refused)
            results = await client.submit_many(specs)
            assert all(isinstance(r, SubmitResult) and r.created for r in results)
            assert [r.task.payload_value() for r in results] == [0, 1, 2, 3, 4]
            keys = [r.task.idempotency_key for r in results]
            keyed = [replace(s, idempotency_key=k) for s, k in zip(specs, keys, strict=True)]
            acks = await client.submit_many(keyed, answer="ack")
            assert all(isinstance(a, SubmitAck) and not a.created for a in acks)
            assert [a.task_id for a in acks] == [r.task.id for r in results]
            assert {a.state for a in acks} == {TaskState.QUEUED}
            assert len(await client.list_tasks(queue=queue)) == 5

            # A later batch failing: the first two specs are stored, the rest pending.
            for answer in ("task", "ack"):
                fresh = [replace(s, queue=f"{queue}-{answer}") for s in specs]
                fresh[3] = replace(fresh[3], queue="bad queue")
                with pytest.raises(SubmitManyError) as info:
                    await client.submit_many(fresh, answer=answer)
                error = info.value
                stored = error.acks if answer == "ack" else error.results
                assert (len(stored), error.offset) == (2, 2)
                assert [s.payload for s in error.pending] == [2, 3, 4]
                assert all(s.idempotency_key for s in error.pending)
                assert isinstance(error.error, InvalidArgument)
                assert [f for f, _ in error.error.field_violations] == ["tasks[1].queue"]
                fixed = [replace(s, queue=f"{queue}-{answer}") for s in error.pending]
                assert all(r.created for r in await client.submit_many(fixed))
                assert not any(r.created for r in await client.submit_many(fixed))
                assert len(await client.list_tasks(queue=f"{queue}-{answer}")) == 5

            # A failed first batch is raised as is: nothing was stored.
            first = [replace(specs[0], queue="bad queue"), replace(specs[1], queue=f"{queue}-1st")]
            with pytest.raises(InvalidArgument):
                await client.submit_many(first)
            assert await client.list_tasks(queue=f"{queue}-1st") == []
            with pytest.raises(ValueError, match="answer"):
                await client.submit_many(specs, answer="ids")  # type: ignore[call-overload]

    run(scenario())


def test_submit_group_and_get_group(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            batch = await client.submit_group([TaskSpec("echo", i) for i in range(3)])
            assert len(batch.results) == 3 and all(r.created for r in batch.results)
            assert {r.task.group_id for r in batch.results} == {batch.group_id}
            done = await asyncio.gather(*(client.wait(r.task.id, 10) for r in batch.results))
            assert [t.result_value() for t in done] == [0, 1, 2]
            group = await client.get_group(batch.group_id)
            assert (group.state, group.total, group.succeeded) == (GroupState.SUCCEEDED, 3, 3)
            assert group.task_ids == tuple(r.task.id for r in batch.results)
            with pytest.raises(GroupNotFound):
                await client.get_group(uuid.uuid4().hex)

    run(scenario())


# --- errors --------------------------------------------------------------------------------


def test_errors_are_the_blocking_clients(cluster: Cluster, queue: str) -> None:
    """Each refusal raises what Client raises, with its reason and field violations."""
    missing = str(uuid.uuid4())
    key = f"order-{queue}"
    refused: list[Callable[[Any], Any]] = [
        lambda c: c.submit("bad type!", queue="bad queue", max_attempts=1000),
        lambda c: c.get(missing),
        lambda c: c.get("abc"),
        lambda c: c.cancel(missing),
        lambda c: c.submit(NOBODY, {"n": 2}, queue=queue, idempotency_key=key),  # key reused
    ]

    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        async with connect(cluster.address) as client:
            await client.submit(NOBODY, {"n": 1}, queue=queue, idempotency_key=key)
            for call in refused:
                with pytest.raises(RpcError) as info:
                    await call(client)
                assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)  # chained
                errors.append(info.value)
            with pytest.raises(TypeError):
                await client.submit(NOBODY, depends_on="one-id")
            with pytest.raises(ValueError, match="limit"):
                await client.list_tasks(limit=0)
        return errors

    errors = run(scenario())
    invalid, not_found, malformed, cancel_missing, reused = errors
    assert isinstance(invalid, InvalidArgument) and invalid.reason == "INVALID_FIELD"
    assert [f for f, _ in invalid.field_violations] == [
        "task.type",
        "task.queue",
        "task.max_attempts",
    ]
    assert isinstance(not_found, TaskNotFound) and not_found.reason == "TASK_NOT_FOUND"
    assert missing in str(not_found)
    assert isinstance(malformed, InvalidArgument)
    assert [f for f, _ in malformed.field_violations] == ["task_id"]
    assert isinstance(cancel_missing, TaskNotFound)
    assert isinstance(reused, AlreadyExists) and reused.reason == "IDEMPOTENCY_KEY_REUSED"
    with Client(cluster.address, timeout_s=5.0, retry=FAST_RETRY) as client:
        for call, error in zip(refused, errors, strict=True):
            with pytest.raises(RpcError) as info:
                call(client)
            assert described(info.value) == described(error)


def test_an_unreachable_coordinator_gives_up_as_unavailable() -> None:
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01, total_s=5.0)

    async def scenario() -> None:
        async with AsyncClient("127.0.0.1:1", timeout_s=2.0, retry=policy) as client:
            with pytest.raises(Unavailable) as info:
                await client.get(str(uuid.uuid4()))
            assert info.value.code is grpc.StatusCode.UNAVAILABLE

    run(scenario())


def test_async_retrying_follows_the_blocking_policy() -> None:
    fast = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002, total_s=5.0)
    calls: list[RpcError | None] = []

    def failing(*errors: RpcError) -> Callable[[], Coroutine[Any, Any, str]]:
        """A coroutine function that raises ``errors`` in turn, then returns "ok"."""
        pending = list(errors)
        calls.clear()

        async def attempt() -> str:
            calls.append(pending[0] if pending else None)
            if pending:
                raise pending.pop(0)
            return "ok"

        return attempt

    down = Unavailable(grpc.StatusCode.UNAVAILABLE, "down")
    slow = DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "slow")
    bad = InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "bad")

    async def scenario() -> None:
        assert await async_retrying(fast, READ_CODES)(failing(down, down)) == "ok"
        assert calls == [down, down, None]
        with pytest.raises(Unavailable):
            await async_retrying(fast, READ_CODES)(failing(*[down] * 10))
        assert len(calls) == fast.attempts
        # DEADLINE_EXCEEDED is retried for submits only; other codes never.
        assert await async_retrying(fast, SUBMIT_CODES)(failing(slow)) == "ok"
        with pytest.raises(DeadlineExceeded):
            await async_retrying(fast, READ_CODES)(failing(slow))
        with pytest.raises(InvalidArgument):
            await async_retrying(fast, SUBMIT_CODES)(failing(bad))
        assert calls == [bad]

    run(scenario())


# --- waiting -------------------------------------------------------------------------------


def test_wait_and_submit_and_wait_on_a_real_node(cluster: Cluster, queue: str) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            added, echoed = await asyncio.gather(
                client.submit("add", {"a": 2, "b": 3}), client.submit("echo", "hi")
            )
            done = await asyncio.gather(client.wait(added.id, 10), client.wait(echoed.id, 10))
            assert [t.state for t in done] == [TaskState.SUCCEEDED] * 2
            assert [t.result_value() for t in done] == [5, "hi"]
            finished = await client.submit_and_wait(TaskSpec("echo", {"x": 1}), timeout_s=10)
            assert (finished.state, finished.result_value()) == (TaskState.SUCCEEDED, {"x": 1})
            failing = TaskSpec("fail", {"message": "boom"}, max_attempts=1)
            failed = await client.submit_and_wait(failing, timeout_s=10)
            assert failed.state is TaskState.FAILED  # returned, not raised
            assert failed.last_error is not None and "boom" in failed.last_error.message
            with pytest.raises(TaskTerminal):
                await client.cancel(finished.id)
            # Nobody serves this queue: both waits time out with the task as last seen.
            with pytest.raises(WaitTimeout) as info:
                await client.submit_and_wait(TaskSpec(NOBODY, queue=queue), timeout_s=0.3)
            assert info.value.last is not None and info.value.last.state is TaskState.QUEUED
            waited = info.value.task_id
            with pytest.raises(WaitTimeout):
                await client.wait(waited, timeout_s=0.2)
            with pytest.raises(TaskNotFound):
                await client.wait(str(uuid.uuid4()), timeout_s=5)

    run(scenario())


def test_watch_yields_states_to_a_terminal_one(cluster: Cluster, queue: str) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            task = await client.submit("sleep", {"seconds": 0.2})
            seen = [t async for t in client.watch(task.id, timeout_s=10)]
            states = [t.state for t in seen]
            assert states[-1] is TaskState.SUCCEEDED and seen[-1].result_value() == {"slept": 0.2}
            assert states == [s for s in LIFECYCLE if s in states]  # in order, none repeated
            # A consumer that stops early ends the call.
            queued = await client.submit(NOBODY, queue=queue)
            async with contextlib.aclosing(client.watch(queued.id)) as changes:
                assert (await anext(changes)).state is TaskState.QUEUED
                assert await asyncio.to_thread(cluster.watching, queued.id)
            await asyncio.to_thread(
                wait_until, lambda: not cluster.watching(queued.id), 5, what="the watch to end"
            )

    run(scenario())


def test_a_watch_reopens_after_the_coordinator_restarts(tmp_path: Path, queue: str) -> None:
    servers = [start_server(tmp_path / "data")]

    async def scenario(server: ServerProcess) -> list[TaskState]:
        async with connect(server.address) as client:
            task = await client.submit(NOBODY, queue=queue)
            seen: list[TaskState] = []
            started = asyncio.Event()

            async def follow() -> None:
                async for change in client.watch(task.id, timeout_s=20):
                    seen.append(change.state)
                    started.set()

            watching = asyncio.create_task(follow())
            await started.wait()
            await asyncio.to_thread(server.kill9)
            servers.append(
                await asyncio.to_thread(
                    start_server, server.data_dir, name="restarted", listen=server.address
                )
            )
            # A fresh channel: this client's own may still be in gRPC's reconnect backoff.
            async with connect(server.address, retry=RESTART_RETRY) as other:
                assert (await other.cancel(task.id)).state is TaskState.CANCELLED
            await watching
            return seen

    try:
        seen = run(scenario(servers[0]), timeout_s=30)
    finally:
        for server in servers:
            server.stop()
    # The reopened stream's first state (still queued) is not repeated.
    assert seen == [TaskState.QUEUED, TaskState.CANCELLED]


# --- configuration -------------------------------------------------------------------------


def test_a_token_is_sent_with_every_call(
    token_coordinator: tuple[InProcessCoordinator, str],
) -> None:
    coordinator, token = token_coordinator

    async def scenario() -> None:
        async with connect(coordinator.address, token=token) as client:
            task = await client.submit(NOBODY, {"n": 1})
            assert (await client.get(task.id)).submitted_by == "web-app"
            [stored] = await client.submit_many([TaskSpec(NOBODY)], answer="ack")
            assert stored.created
            # The watch stream carries the token too: it times out rather than being refused.
            with pytest.raises(WaitTimeout):
                await client.wait(task.id, timeout_s=0.2)
        for other in (None, new_token()):
            async with connect(coordinator.address, token=other) as client:
                with pytest.raises(Unauthenticated):
                    await client.get(task.id)
                with pytest.raises(Unauthenticated):
                    await client.submit(NOBODY)
                with pytest.raises(Unauthenticated):
                    await client.wait(task.id, timeout_s=5)
        # As with Client: no token in plaintext beyond loopback.
        with pytest.raises(TlsConfigError, match="plaintext"):
            AsyncClient("10.1.2.3:50051", token=token)

    run(scenario())


def test_propagate_trace_stamps_every_submit(coordinator: InProcessCoordinator) -> None:
    async def scenario() -> None:
        async with connect(coordinator.address, propagate_trace=True) as client:
            with trace.use_span(PARENT_SPAN):
                tasks = [await client.submit(NOBODY)]
                tasks += [r.task for r in await client.submit_many([TaskSpec(NOBODY)])]
                tasks += [r.task for r in (await client.submit_group([TaskSpec(NOBODY)])).results]
                own = await client.submit(NOBODY, headers={"traceparent": "mine"})
            assert [t.headers["traceparent"] for t in tasks] == [TRACEPARENT] * 3
            assert own.headers["traceparent"] == "mine"  # the spec's own header wins
            assert "traceparent" not in (await client.submit(NOBODY)).headers  # no span
        async with connect(coordinator.address) as client:
            with trace.use_span(PARENT_SPAN):
                assert "traceparent" not in (await client.submit(NOBODY)).headers  # not asked

    run(scenario())


def test_lifecycle_of_the_client(coordinator: InProcessCoordinator) -> None:
    with pytest.raises(RuntimeError, match="coroutine"):
        AsyncClient(coordinator.address)  # no running loop to bind the channel to

    async def scenario() -> Task:
        client = AsyncClient(coordinator.address, timeout_s=5.0)
        task = await client.submit(NOBODY)
        await client.close()
        await client.close()  # closing twice is fine
        # A channel the caller supplies stays open when the client closes.
        channel = grpc.aio.insecure_channel(coordinator.address)
        async with AsyncClient.from_config(client.config, channel=channel) as borrowed:
            assert (await borrowed.get(task.id)).id == task.id
        async with AsyncClient.from_config(client.config, channel=channel) as again:
            assert (await again.get(task.id)).id == task.id
        await channel.close(None)
        return task

    task = run(scenario())
    assert task.state is TaskState.QUEUED
