"""AsyncClient.submitter(): pipelined asyncio submits against real coordinators.

The scenarios mirror test_submitter.py's for the blocking submitter. Most run
on an in-process coordinator; those that pause (SIGSTOP), kill or restart the
coordinator run a ``dtq-server`` process. Each runs on a fresh event loop,
bounded in time, and waits for conditions (``eventually``), never for a time.

Callers are tasks that count themselves in (``Callers``): once all have, each
has run as far as it can without an answer (its submit queued, or waiting for
room in the window), since a submit does not yield before it waits.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import grpc
import pytest
from opentelemetry import trace

from dtq_client import (
    AlreadyExists,
    AsyncClient,
    AsyncSubmitter,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    PayloadError,
    RetryPolicy,
    RpcError,
    SubmitAck,
    TaskSpec,
    TaskState,
    Unauthenticated,
)
from dtq_client.aio_submitter import _Room
from dtq_server.tokens import new_token
from tests.harness import InProcessCoordinator, ServerProcess, start_server

from .conftest import NOBODY
from .test_aio import PARENT_SPAN, TRACEPARENT, connect, described, run
from .test_aio_calls import eventually

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")
P = ParamSpec("P")

# Rides out a coordinator restart (as in test_submitter.py).
RESTART_RETRY = RetryPolicy(attempts=200, initial_backoff_s=0.05, max_backoff_s=0.2, total_s=30.0)
MISSING = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"


def now(predicate: Callable[[], object]) -> Callable[[], Awaitable[bool]]:
    """A probe for :func:`eventually` from a plain predicate."""

    async def probe() -> bool:
        return bool(predicate())

    return probe


class Callers:
    """Concurrent callers of a submitter, each a task, counting themselves in."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []
        self.started = 0
        self._counted = asyncio.Event()

    def start(
        self, submit: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Task[T]:
        """Start ``submit(*args, **kwargs)`` in a task of its own."""

        async def call() -> T:
            self.started += 1
            self._counted.set()
            return await submit(*args, **kwargs)

        task = asyncio.create_task(call())
        self.tasks.append(task)
        return task

    async def submit_each(
        self, submitter: AsyncSubmitter, queue: str, payloads: Iterable[object]
    ) -> None:
        """A caller per payload, submitting it to ``queue``; returns once each waits."""
        for payload in payloads:
            self.start(submitter.submit, NOBODY, payload, queue=queue)
        await self.all_waiting()

    async def all_waiting(self) -> None:
        """Wait until every caller has run up to its first wait (see the module docstring).

        Resumes on the loop's turn after the last caller ran: too soon for any answer.
        """
        while self.started < len(self.tasks):
            self._counted.clear()
            await asyncio.wait_for(self._counted.wait(), 10)


@asynccontextmanager
async def stream_up(
    server: ServerProcess, queue: str, window: int, **config: Any
) -> AsyncIterator[tuple[AsyncClient, AsyncSubmitter]]:
    """A client of ``server`` and a submitter whose stream is up (a first submit answered)."""
    async with connect(server.address, **config) as client:
        submitter = client.submitter(window=window)
        assert (await submitter.submit(NOBODY, queue=queue)).created
        yield client, submitter


async def queued(client: AsyncClient, queue: str) -> int:
    """How many tasks the queue holds, counted by the coordinator."""
    return next((q.queued for q in await client.queues() if q.name == queue), 0)


async def stored_payloads(client: AsyncClient, queue: str) -> dict[str, object]:
    """Every task of the queue: its payload by task id."""
    tasks = client.iter_tasks(queue=queue, page_size=1_000)
    return {task.id: task.payload_value() async for task in tasks}


def process_state(server: ServerProcess) -> str:
    """The server's process state letter (``T``: stopped), from /proc."""
    stat = Path(f"/proc/{server.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


@asynccontextmanager
async def paused(server: ServerProcess) -> AsyncIterator[None]:
    """The coordinator stopped (SIGSTOP) inside the block: it answers nothing."""
    server.signal(signal.SIGSTOP)
    try:
        await eventually(now(lambda: process_state(server) == "T"), 5, "the server to stop")
        yield
    finally:
        server.signal(signal.SIGCONT)


# --- against an in-process coordinator -------------------------------------------------------


def test_concurrent_submits_each_get_their_own_ack_and_are_stored(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    total = 3_000

    async def scenario() -> None:
        async with connect(coordinator.address) as client:
            async with client.submitter(window=500) as submitter:
                acks = await asyncio.gather(
                    *(submitter.submit(NOBODY, {"i": i}, queue=queue) for i in range(total))
                )
                assert submitter.unanswered == 0
            assert all(a.created and a.state is TaskState.QUEUED for a in acks)
            # Answers come a frame at a time, callers resume in any order: each ack is
            # still its own submit's, and each submit one stored task.
            mine = {ack.task_id: {"i": i} for i, ack in enumerate(acks)}
            assert await stored_payloads(client, queue) == mine
            assert await queued(client, queue) == total

    run(scenario())


def test_a_refused_submit_fails_alone_with_the_unary_error(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    async def scenario() -> None:
        async with connect(coordinator.address) as client:
            await client.submit(NOBODY, {"v": 1}, queue=queue, idempotency_key="taken")
            refused: list[dict[str, Any]] = [
                {"type": "not a type", "queue": queue},
                {"type": NOBODY, "payload": {"v": 2}, "queue": queue, "idempotency_key": "taken"},
                {"type": NOBODY, "queue": queue, "depends_on": [MISSING]},
            ]
            async with client.submitter() as submitter:
                ok, *errors, also_ok = await asyncio.gather(
                    submitter.submit(NOBODY, queue=queue),
                    *(submitter.submit(**kwargs) for kwargs in refused),
                    submitter.submit_spec(TaskSpec(NOBODY, queue=queue)),
                    return_exceptions=True,
                )
            assert isinstance(ok, SubmitAck) and ok.created
            assert isinstance(also_ok, SubmitAck) and also_ok.created
            bad_type, clash, dangling = errors
            assert isinstance(bad_type, InvalidArgument)
            assert [field for field, _ in bad_type.field_violations] == ["task.type"]
            assert isinstance(clash, AlreadyExists) and clash.reason == "IDEMPOTENCY_KEY_REUSED"
            assert isinstance(dangling, InvalidArgument)
            assert [field for field, _ in dangling.field_violations] == ["task.depends_on[0]"]
            for kwargs, error in zip(refused, errors, strict=True):
                assert isinstance(error, RpcError)
                with pytest.raises(RpcError) as unary:
                    await client.submit(**kwargs)
                assert described(error) == described(unary.value)
            assert await queued(client, queue) == 3

    run(scenario())


def test_keys_options_trace_and_bad_payloads(coordinator: InProcessCoordinator, queue: str) -> None:
    async def scenario() -> None:
        async with connect(coordinator.address, propagate_trace=True) as client:
            async with client.submitter() as submitter:
                with trace.use_span(PARENT_SPAN):  # the caller's context
                    first = await submitter.submit(
                        NOBODY, {"x": 1}, queue=queue, priority=5, idempotency_key="k1"
                    )
                spec = TaskSpec(NOBODY, {"x": 1}, queue=queue, priority=5, idempotency_key="k1")
                again = await submitter.submit_spec(spec)
                assert again == SubmitAck(first.task_id, created=False, state=TaskState.QUEUED)
                with pytest.raises(PayloadError):  # raised in the caller, nothing queued
                    await submitter.submit(NOBODY, object(), queue=queue)
                with pytest.raises(TypeError):
                    await submitter.submit(NOBODY, depends_on="one-id")
                assert submitter.unanswered == 0
            task = await client.get(first.task_id)
            assert (task.priority, task.idempotency_key) == (5, "k1")
            assert task.headers["traceparent"] == TRACEPARENT
            with pytest.raises(ValueError, match="window"):
                client.submitter(window=0)

    run(scenario())
    ours = list(inspect.signature(AsyncSubmitter.submit).parameters.values())
    assert ours == list(inspect.signature(Client.submit).parameters.values())


def test_leaving_async_with_waits_for_every_answer(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    async def scenario() -> None:
        async with connect(coordinator.address) as client:
            callers = Callers()
            async with client.submitter() as submitter:
                await callers.submit_each(submitter, queue, range(300))
                assert submitter.unanswered > 0  # nothing answered yet: it all waits on the exit
            assert all(task.done() for task in callers.tasks)
            acks = [task.result() for task in callers.tasks]
            assert all(ack.created for ack in acks) and len({a.task_id for a in acks}) == 300
            await submitter.close()  # twice is fine
            with pytest.raises(RuntimeError, match="closed"):
                await submitter.submit(NOBODY, queue=queue)

    run(scenario())


def test_a_stream_refused_for_good_fails_every_pending_and_later_submit(
    token_coordinator: tuple[InProcessCoordinator, str],
) -> None:
    coordinator, token = token_coordinator

    async def scenario() -> None:
        async with connect(coordinator.address, token=token) as client:
            async with client.submitter() as submitter:  # the stream carries the token
                ack = await submitter.submit(NOBODY)
            assert (await client.get(ack.task_id)).submitted_by == "web-app"
        async with connect(coordinator.address, token=new_token()) as client:
            submitter = client.submitter()
            outcomes = await asyncio.gather(
                *(submitter.submit(NOBODY, i) for i in range(20)), return_exceptions=True
            )
            assert all(isinstance(outcome, Unauthenticated) for outcome in outcomes), outcomes
            with pytest.raises(Unauthenticated):  # UNAUTHENTICATED is not retried: given up
                await submitter.submit(NOBODY)
            assert submitter.unanswered == 0
            await submitter.close()  # nothing is left to wait for

    run(scenario())


def test_closing_the_client_under_a_submitter_fails_its_submits(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    async def scenario() -> None:
        client = connect(coordinator.address)
        submitter = client.submitter()
        assert (await submitter.submit(NOBODY, queue=queue)).created
        await client.close()
        with pytest.raises(RpcError) as info:  # not a hang
            await submitter.submit(NOBODY, queue=queue)
        assert info.value.code is grpc.StatusCode.CANCELLED
        await submitter.close()

    run(scenario())


def test_room_granted_to_a_cancelled_waiter_passes_to_the_next() -> None:
    """The window's own race, which no coordinator can time: room is handed to a
    waiter that is cancelled before it runs on."""

    async def scenario() -> None:
        room = _Room(1)
        await room.take()
        callers = Callers()
        first = callers.start(room.take)
        second = callers.start(room.take)
        await callers.all_waiting()
        room.give()  # to the first waiter, which is cancelled before it resumes
        first.cancel()
        await asyncio.wait_for(second, 5)  # the room went on to the second
        assert first.cancelled()
        third = callers.start(room.take)
        await callers.all_waiting()
        third.cancel()  # cancelled while waiting: it takes nothing
        room.give()
        await asyncio.wait_for(room.take(), 5)
        room.shut(RuntimeError("shut"))
        with pytest.raises(RuntimeError, match="shut"):
            await room.take()

    run(scenario())


# --- a coordinator process: paused, killed, restarted ----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A ``dtq-server`` process the tests of this module pause and resume in turn."""
    running = start_server(tmp_path_factory.mktemp("aio-submitter") / "data")
    try:
        yield running
    finally:
        running.stop()


def test_the_window_bounds_unanswered_submits(server: ServerProcess, queue: str) -> None:
    async def scenario() -> None:
        async with stream_up(server, queue, window=3) as (client, submitter):
            callers = Callers()
            peaks: list[int] = []

            async def submit(i: int) -> SubmitAck:
                ack = await submitter.submit(NOBODY, i, queue=queue)
                peaks.append(submitter.unanswered)
                return ack

            async with paused(server):
                for i in range(10):
                    callers.start(submit, i)
                await callers.all_waiting()
                assert submitter.unanswered == 3  # three sent, seven waiting for room
                assert not any(task.done() for task in callers.tasks)
            acks = await asyncio.gather(*callers.tasks)
            await submitter.close()
            assert all(ack.created for ack in acks) and max(peaks) <= 3
            assert await queued(client, queue) == 11

    run(scenario())


def test_a_cancelled_caller_leaves_its_submit_going_and_no_room_taken(
    server: ServerProcess, queue: str
) -> None:
    async def scenario() -> None:
        async with stream_up(server, queue, window=2) as (client, submitter):
            callers = Callers()
            async with paused(server):
                sent = callers.start(
                    submitter.submit, NOBODY, "sent", queue=queue, idempotency_key="sent"
                )
                kept = callers.start(submitter.submit, NOBODY, "kept", queue=queue)
                waiting = callers.start(submitter.submit, NOBODY, "never", queue=queue)
                await callers.all_waiting()
                sent.cancel()  # its submit is on the wire
                waiting.cancel()  # it was waiting for room: nothing was queued
                await asyncio.wait([sent, waiting])
                assert sent.cancelled() and waiting.cancelled()
                assert submitter.unanswered == 2  # the cancelled caller's submit still counts
            assert (await kept).created
            await eventually(now(lambda: submitter.unanswered == 0), 10, "the dropped answer")
            # The whole window is free again: two submits go out at once.
            async with paused(server):
                await callers.submit_each(submitter, queue, range(2))
                assert submitter.unanswered == 2
            assert all(ack.created for ack in await asyncio.gather(*callers.tasks[3:]))
            await submitter.close()
            # The cancelled caller's task was committed; the waiting one's never sent.
            again = await client.submit(NOBODY, "sent", queue=queue, idempotency_key="sent")
            assert again.payload_value() == "sent"
            payloads = (await stored_payloads(client, queue)).values()
            assert sorted(map(str, payloads)) == ["0", "1", "None", "kept", "sent"]

    run(scenario())


def test_close_turns_away_callers_waiting_for_room_and_waits_for_the_rest(
    server: ServerProcess, queue: str
) -> None:
    async def scenario() -> None:
        async with stream_up(server, queue, window=2) as (_, submitter):
            callers = Callers()
            async with paused(server):
                await callers.submit_each(submitter, queue, range(4))
                closing = asyncio.create_task(submitter.close())
                turned_away = await asyncio.gather(*callers.tasks[2:], return_exceptions=True)
                assert all(isinstance(e, RuntimeError) for e in turned_away), turned_away
                assert not closing.done() and submitter.unanswered == 2
            await asyncio.wait_for(closing, 10)
            assert all(task.result().created for task in callers.tasks[:2])

    run(scenario())


def test_a_coordinator_that_stops_answering_fails_the_submits(
    server: ServerProcess, queue: str
) -> None:
    silent = RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.1, total_s=1.5)

    async def scenario() -> None:
        up = stream_up(server, queue, 10, timeout_s=0.5, retry=silent)
        async with up as (_, submitter), paused(server):
            with pytest.raises(DeadlineExceeded):
                await submitter.submit(NOBODY, queue=queue)
            with pytest.raises(DeadlineExceeded):
                await submitter.submit(NOBODY, queue=queue)  # the submitter gave up for good
            await submitter.close()  # nothing is left to wait for

    run(scenario())


class Restartable:
    """A coordinator process, and those restarted over its data dir where it listened."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None) -> None:
        self.servers = [start_server(data_dir, env=env)]
        self.first = self.servers[0]

    async def restart(self) -> None:
        """Start the coordinator again (the last one must be dead)."""
        first = self.first
        restarted = await asyncio.to_thread(
            start_server, first.data_dir, name="restarted", listen=first.address
        )
        self.servers.append(restarted)


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Callable[..., Restartable]]:
    """Start a :class:`Restartable` coordinator (``env``: its environment); all are
    stopped at the end."""
    started: list[Restartable] = []

    def start(env: dict[str, str] | None = None) -> Restartable:
        started.append(Restartable(tmp_path / "data", env))
        return started[-1]

    yield start
    for coordinator in started:
        for server in coordinator.servers:
            server.stop()


@pytest.mark.timeout(120)
def test_submits_survive_a_coordinator_kill_9_and_restart(
    restartable: Callable[..., Restartable], queue: str
) -> None:
    total = 3_000
    coordinator = restartable()

    async def scenario() -> None:
        async with connect(coordinator.first.address, retry=RESTART_RETRY) as client:
            callers = Callers()
            async with client.submitter(window=200) as submitter:
                for i in range(total):
                    callers.start(submitter.submit, NOBODY, {"i": i}, queue=queue)
                done = now(lambda: sum(task.done() for task in callers.tasks) >= 500)
                await eventually(done, 30, "500 acknowledged")
                # With submits in flight: some committed, some not, none answered.
                await asyncio.to_thread(coordinator.first.kill9)
                await coordinator.restart()
                acks = await asyncio.gather(*callers.tasks)  # none failed
            mine = {ack.task_id: {"i": i} for i, ack in enumerate(acks)}
            assert len(mine) == total, "each submit is exactly one task"
            assert await stored_payloads(client, queue) == mine, "none lost, none duplicated"

    run(scenario(), timeout_s=90)


@pytest.mark.timeout(120)
def test_a_commit_whose_answers_were_lost_is_found_again_on_resend(
    restartable: Callable[..., Restartable], queue: str
) -> None:
    # The coordinator dies right after its first submit commit, before answering it.
    coordinator = restartable({"DTQ_FAILPOINT": "submit.after_commit_before_reply"})

    async def scenario() -> None:
        async with connect(coordinator.first.address, retry=RESTART_RETRY) as client:
            callers = Callers()
            async with client.submitter(window=100) as submitter:
                for i in range(50):
                    callers.start(submitter.submit, NOBODY, i, queue=queue)
                assert await asyncio.to_thread(coordinator.first.wait, 30) == 137
                assert not any(task.done() for task in callers.tasks)
                await coordinator.restart()
                acks = await asyncio.gather(*callers.tasks)
            assert any(not ack.created for ack in acks), "resent, committed ones were found"
            mine = {ack.task_id: i for i, ack in enumerate(acks)}
            assert await stored_payloads(client, queue) == mine

    run(scenario(), timeout_s=90)
