"""The client's calls against a real coordinator and a real worker node.

The module shares one in-process coordinator and one ``dtq-worker`` process
running ``dtq_worker.demo:registry`` on the ``default`` queue (see the
``cluster`` fixture); tasks that must stay queued go to a queue of the test's
own. The restart tests run the coordinator as a process, so that it can be
killed and started again on the same port.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from dtq_client import (
    AlreadyExists,
    Client,
    ClientConfig,
    InvalidArgument,
    NodeNotFound,
    NodeState,
    ResourceExhausted,
    RetryPolicy,
    SubmitAck,
    SubmitManyError,
    Task,
    TaskNotFound,
    TaskSpec,
    TaskState,
    TaskTerminal,
    Unavailable,
    WaitTimeout,
)
from tests.harness import InProcessCoordinator, ServerProcess, start_node, start_server, wait_until

from .conftest import DEMO_REGISTRY, NOBODY, NODE_THREADS, Cluster, wait_for_node

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=10.0)
# Rides out a coordinator restart: the process starts in well under a second, and
# gRPC's own reconnect backoff (1 s first) then adds up to about as much again.
RESTART_RETRY = RetryPolicy(attempts=200, initial_backoff_s=0.05, max_backoff_s=0.2, total_s=20.0)
# A watch sees the task in this order, skipping states it was too slow to catch.
LIFECYCLE = [TaskState.QUEUED, TaskState.LEASED, TaskState.RUNNING, TaskState.SUCCEEDED]


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    config = ClientConfig(address=cluster.address, timeout_s=5.0, retry=FAST_RETRY)
    with Client.from_config(config) as client:
        yield client


@pytest.fixture
def retries(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """The client's "retrying after ..." log records so far, from any thread."""
    caplog.set_level(logging.DEBUG, logger="dtq_client.retry")

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("retrying after")]

    return records


def state_of(client: Client, task_id: str, state: TaskState) -> Callable[[], bool]:
    return lambda: client.get(task_id).state is state


# --- submitting ----------------------------------------------------------------------------


def test_submit_stores_the_spec_under_a_generated_key(client: Client, queue: str) -> None:
    task = client.submit("echo", {"x": 1}, queue=queue, max_attempts=2, retry_backoff_s=0.5)
    assert (task.type, task.queue, task.max_attempts, task.state) == (
        "echo",
        queue,
        2,
        TaskState.QUEUED,
    )
    assert (task.payload, task.content_type) == (b'{"x":1}', "application/json")
    assert task.payload_value() == {"x": 1}
    assert re.fullmatch(r"[0-9a-f]{32}-[0-9a-f]{12}", task.idempotency_key or "")  # prefix-counter
    assert client.get(task.id) == task
    # What a retry after a lost response does: the same key finds the same task.
    again = client.submit(
        "echo",
        {"x": 1},
        queue=queue,
        max_attempts=2,
        retry_backoff_s=0.5,
        idempotency_key=task.idempotency_key,
    )
    assert again.id == task.id
    # The backoff is part of the stored spec, so changing it under the same key is refused.
    with pytest.raises(AlreadyExists):
        client.submit(
            "echo",
            {"x": 1},
            queue=queue,
            max_attempts=2,
            retry_backoff_s=0.6,
            idempotency_key=task.idempotency_key,
        )


def test_retry_backoff_reaches_the_coordinator(client: Client) -> None:
    task = client.submit("fail", {"message": "once"}, max_attempts=2, retry_backoff_s=60)
    wait_until(lambda: client.get(task.id).failures == 1, 10, what="the first failure")
    waiting = client.get(task.id)
    assert waiting.state is TaskState.QUEUED
    assert waiting.next_attempt_at is not None and waiting.updated_at is not None
    delay_s = (waiting.next_attempt_at - waiting.updated_at).total_seconds()
    assert 59 < delay_s < 76  # 60 s stretched by the coordinator's 0-25 % jitter
    assert client.cancel(task.id).state is TaskState.CANCELLED


def test_submit_keeps_a_given_key(client: Client, queue: str) -> None:
    key = f"order-{queue}"
    task = client.submit("echo", {"n": 1}, queue=queue, idempotency_key=key)
    assert task.idempotency_key == key
    assert client.submit("echo", {"n": 1}, queue=queue, idempotency_key=key).id == task.id
    with pytest.raises(AlreadyExists) as info:
        client.submit("echo", {"n": 2}, queue=queue, idempotency_key=key)
    assert info.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert key in info.value.message


# --- errors from the coordinator -----------------------------------------------------------


def test_field_violations_travel_over_the_wire(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.submit("echo", queue="bad queue")
    error = info.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    [(field, description)] = error.field_violations
    assert field == "task.queue"
    assert "'bad queue'" in description
    with pytest.raises(InvalidArgument) as info:
        client.submit("bad type!", queue="bad queue", max_attempts=1000)
    fields = [field for field, _ in info.value.field_violations]
    assert fields == ["task.type", "task.queue", "task.max_attempts"]


def test_get_maps_not_found_and_malformed_ids(client: Client) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(TaskNotFound) as not_found:
        client.get(missing)
    assert not_found.value.code is grpc.StatusCode.NOT_FOUND
    assert not_found.value.reason == "TASK_NOT_FOUND"
    assert missing in str(not_found.value)
    with pytest.raises(InvalidArgument) as invalid:
        client.get("abc")
    assert [field for field, _ in invalid.value.field_violations] == ["task_id"]


def test_cancel_of_a_queued_task_and_of_a_finished_one(client: Client, queue: str) -> None:
    queued = client.submit(NOBODY, queue=queue)
    assert client.cancel(queued.id).state is TaskState.CANCELLED
    assert client.cancel(queued.id).state is TaskState.CANCELLED  # cancelling is idempotent
    done = client.wait(client.submit("echo", "hi").id, timeout_s=10)
    assert done.state is TaskState.SUCCEEDED
    with pytest.raises(TaskTerminal) as info:
        client.cancel(done.id)
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "TASK_TERMINAL"


# --- submit_many ---------------------------------------------------------------------------


def test_submit_many_lands_thousands_in_batches(client: Client, queue: str) -> None:
    specs = [TaskSpec(type=NOBODY, payload=i, queue=queue) for i in range(2_500)]
    results = client.submit_many(specs)  # 1,000 per SubmitTasks call by default
    assert [r.task.payload_value() for r in results] == list(range(2_500))
    assert all(r.created for r in results)
    assert len({r.task.id for r in results}) == 2_500
    stored = [t.id for t in client.iter_tasks(queue=queue, page_size=1_000)]
    assert stored == [r.task.id for r in reversed(results)]  # newest first
    # With the keys the first call generated, submitting again creates nothing.
    keyed = [
        replace(s, idempotency_key=r.task.idempotency_key)
        for s, r in zip(specs, results, strict=True)
    ]
    again = client.submit_many(keyed)
    assert not any(r.created for r in again)
    assert [r.task.id for r in again] == [r.task.id for r in results]
    [stats] = [q for q in client.queues() if q.name == queue]
    assert stats.queued == 2_500


def test_submit_many_splits_by_size(make_coordinator: Callable[..., InProcessCoordinator]) -> None:
    # The coordinator refuses any request over 1 MiB; five 400 kB payloads need three calls.
    small = make_coordinator(max_message_bytes=1024 * 1024, max_payload_bytes=512 * 1024)
    specs = [TaskSpec(type="blob", payload=bytes([i]) * 400_000) for i in range(5)]
    unbatched = ClientConfig(address=small.address, retry=FAST_RETRY)
    with Client.from_config(unbatched) as client, pytest.raises(ResourceExhausted):
        client.submit_many(specs)
    batched = replace(unbatched, submit_batch_bytes=1_000_000)
    with Client.from_config(batched) as client:
        results = client.submit_many(specs)
        assert [r.task.payload for r in results] == [s.payload for s in specs]
        assert len(client.list_tasks()) == 5


def test_submit_many_reports_a_partial_failure(cluster: Cluster, queue: str) -> None:
    specs = [TaskSpec(type=NOBODY, payload=i, queue=queue) for i in range(5)]
    specs[3] = replace(specs[3], queue="bad queue")
    config = ClientConfig(address=cluster.address, retry=FAST_RETRY, submit_batch_size=2)
    with Client.from_config(config) as client:
        with pytest.raises(SubmitManyError) as info:
            client.submit_many(specs)
        error = info.value
        assert [r.task.payload_value() for r in error.results] == [0, 1]
        assert error.offset == 2
        assert [s.payload for s in error.pending] == [2, 3, 4]
        assert all(s.idempotency_key for s in error.pending)
        assert isinstance(error.error, InvalidArgument)
        # The batch [2, 3] was refused as a whole: tasks[1] is input offset + 1 = 3.
        assert [f for f, _ in error.error.field_violations] == ["tasks[1].queue"]
        assert [t.payload_value() for t in client.list_tasks(queue=queue)] == [1, 0]
        fixed = [replace(s, queue=queue) for s in error.pending]
        assert all(r.created for r in client.submit_many(fixed))
        assert [t.payload_value() for t in client.list_tasks(queue=queue)] == [4, 3, 2, 1, 0]
        # The pending specs kept their keys: resubmitting them creates nothing more.
        assert not any(r.created for r in client.submit_many(fixed))


def test_a_failed_first_batch_is_raised_as_is(client: Client, queue: str) -> None:
    specs = [TaskSpec(type=NOBODY, queue="bad queue"), TaskSpec(type=NOBODY, queue=queue)]
    with pytest.raises(InvalidArgument) as info:
        client.submit_many(specs)
    assert [f for f, _ in info.value.field_violations] == ["tasks[0].queue"]
    assert client.list_tasks(queue=queue) == []  # a batch is stored atomically


def test_submit_many_can_answer_acks(cluster: Cluster, queue: str) -> None:
    specs = [TaskSpec(type=NOBODY, payload=i, queue=queue) for i in range(5)]
    config = ClientConfig(address=cluster.address, retry=FAST_RETRY, submit_batch_size=2)
    with Client.from_config(config) as client:
        acks = client.submit_many(specs, answer="ack")  # three SubmitTasks calls
        assert all(isinstance(a, SubmitAck) and a.created for a in acks)
        assert {a.state for a in acks} == {TaskState.QUEUED}
        stored = [client.get(a.task_id).payload_value() for a in acks]
        assert stored == [0, 1, 2, 3, 4]
        specs[3] = replace(specs[3], queue="bad queue")
        with pytest.raises(SubmitManyError) as info:
            client.submit_many(specs, answer="ack")
        assert [type(r) for r in info.value.acks] == [SubmitAck, SubmitAck]
        assert info.value.results == []
        with pytest.raises(ValueError, match="answer"):
            client.submit_many(specs, answer="ids")  # type: ignore[call-overload]


def test_submit_many_of_nothing_sends_nothing(client: Client) -> None:
    # The coordinator refuses an empty SubmitTasks, so this only passes if nothing is sent.
    assert client.submit_many([]) == []


# --- reads ---------------------------------------------------------------------------------


def test_iter_tasks_follows_page_tokens(client: Client, queue: str) -> None:
    jobs = [client.submit("job", i, queue=queue) for i in range(6)]
    other = client.submit("other", queue=queue)
    client.cancel(jobs[0].id)
    queued_jobs = [t.id for t in reversed(jobs[1:])]  # newest first
    found = client.iter_tasks(queue=queue, state="queued", type="job", page_size=2)
    assert [t.id for t in found] == queued_jobs
    everything = [t.id for t in client.iter_tasks(queue=queue, page_size=2)]
    assert everything == [other.id, *queued_jobs, jobs[0].id]
    assert [t.id for t in client.list_tasks(queue=queue, limit=3)] == everything[:3]
    cancelled = client.list_tasks(queue=queue, state=TaskState.CANCELLED)
    assert [t.id for t in cancelled] == [jobs[0].id]


def test_list_tasks_page_hands_out_tokens_that_hold_their_place(client: Client, queue: str) -> None:
    specs = [TaskSpec("job", i, queue=queue) for i in range(5)]
    ids = [r.task_id for r in client.submit_many(specs, answer="ack")]
    first = client.list_tasks_page(queue=queue, page_size=2)
    assert [t.id for t in first.tasks] == ids[:2:-1] and first.next_page_token
    client.submit("job", queue=queue)  # newer: not on the pages after the first
    second = client.list_tasks_page(queue=queue, page_size=2, page_token=first.next_page_token)
    assert [t.id for t in second.tasks] == ids[2:0:-1] and second.next_page_token
    last = client.list_tasks_page(queue=queue, page_size=2, page_token=second.next_page_token)
    assert ([t.id for t in last.tasks], last.next_page_token) == ([ids[0]], "")
    with pytest.raises(InvalidArgument) as info:  # a token belongs to its filters
        client.list_tasks_page(queue=queue, type="job", page_token=first.next_page_token)
    assert info.value.field_violations[0][0] == "page_token"


def test_unreachable_address_gives_up_as_unavailable(
    retries: Callable[[], list[logging.LogRecord]],
) -> None:
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.1, max_backoff_s=0.1, total_s=5.0)
    started = time.monotonic()
    with (
        Client("127.0.0.1:1", timeout_s=2.0, retry=policy) as client,
        pytest.raises(Unavailable) as info,
    ):
        client.get(str(uuid.uuid4()))
    elapsed_s = time.monotonic() - started
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(retries()) == policy.attempts - 1
    assert 0.2 <= elapsed_s < 3


# --- the cluster ---------------------------------------------------------------------------


def test_nodes_queues_and_health(cluster: Cluster, client: Client, queue: str) -> None:
    [node] = [n for n in client.nodes() if n.node_id == cluster.node_id]
    assert node.state is NodeState.ACTIVE
    assert node.task_types == ("add", "echo", "fail", "sleep")
    assert node.queues == ("default",)
    assert node.slots == NODE_THREADS
    assert node.pid == cluster.node.pid
    kept, dropped = client.submit(NOBODY, queue=queue), client.submit(NOBODY, queue=queue)
    client.cancel(dropped.id)
    [stats] = [q for q in client.queues() if q.name == queue]
    assert (stats.queued, stats.running, stats.cancelled) == (1, 0, 1)
    assert client.get(kept.id).state is TaskState.QUEUED
    with pytest.raises(NodeNotFound) as info:
        client.drain("ghost")
    assert info.value.reason == "NODE_NOT_FOUND"
    assert client.health() == "SERVING"


def test_drain_lets_a_node_finish_and_leave(
    cluster: Cluster, client: Client, queue: str, tmp_path: Path
) -> None:
    node_id = f"drain-{queue}"
    node = start_node(cluster.address, tmp_path, node_id, "--queues", queue, module=DEMO_REGISTRY)
    try:
        wait_for_node(cluster.address, node, node_id)
        task = client.submit("sleep", {"seconds": 0.5}, queue=queue)
        wait_until(state_of(client, task.id, TaskState.RUNNING), 10, what="the task to run")
        assert client.drain(node_id).state is NodeState.DRAINING
        assert client.wait(task.id, timeout_s=10).state is TaskState.SUCCEEDED
        assert node.wait(10) == 0, node.log()
        assert node_id not in [n.node_id for n in client.nodes()]
        [gone] = [n for n in client.nodes(include_gone=True) if n.node_id == node_id]
        assert gone.state is NodeState.LEFT
    finally:
        node.stop()


# --- waiting -------------------------------------------------------------------------------


def test_wait_returns_the_succeeded_task(cluster: Cluster, client: Client) -> None:
    task = client.submit("echo", {"x": 1})
    done = client.wait(task.id, timeout_s=10)
    assert done.state is TaskState.SUCCEEDED
    assert done.result_value() == {"x": 1}
    assert (done.node_id, done.attempt, done.last_error) == (cluster.node_id, 1, None)
    assert done.finished_at is not None


def test_watch_yields_each_change_until_terminal(client: Client) -> None:
    task = client.submit("sleep", {"seconds": 0.3})
    seen = [t.state for t in client.watch(task.id, timeout_s=10)]
    assert seen[-1] is TaskState.SUCCEEDED
    assert TaskState.RUNNING in seen
    assert seen == sorted(set(seen), key=LIFECYCLE.index)  # in order, no state twice


def test_a_failing_task_ends_failed_with_its_last_error(client: Client) -> None:
    task = client.submit("fail", {"message": "boom"}, max_attempts=2)
    done = client.wait(task.id, timeout_s=10)
    assert done.state is TaskState.FAILED
    assert (done.attempt, done.failures, done.result) == (2, 2, None)
    error = done.last_error
    assert error is not None
    assert (error.type, error.message, error.retryable) == ("ValueError", "boom", True)
    assert "ValueError: boom" in error.traceback


def test_a_sleeping_task_times_out_a_wait_then_is_cancelled(client: Client) -> None:
    task = client.submit("sleep", {"seconds": 30})
    wait_until(state_of(client, task.id, TaskState.RUNNING), 10, what="the task to run")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.wait(task.id, timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 3
    assert info.value.last is not None and info.value.last.state is TaskState.RUNNING
    assert info.value.task_id == task.id
    asked = client.cancel(task.id)
    assert asked.cancel_requested
    done = client.wait(task.id, timeout_s=10)
    assert done.state is TaskState.CANCELLED
    assert done.last_error is not None and done.last_error.type == "TaskCancelled"


def test_a_wait_on_a_task_nobody_runs_times_out_queued(client: Client, queue: str) -> None:
    task = client.submit(NOBODY, queue=queue)
    with pytest.raises(WaitTimeout) as info:
        client.wait(task.id, timeout_s=0.2)
    assert info.value.last == task


def test_a_watch_is_read_on_the_callers_thread(client: Client, queue: str) -> None:
    # Without SingleThreadedUnaryStream grpc starts a "channel_spin" thread for a
    # streaming call on an idle channel and hands every message over from it.
    task = client.submit(NOBODY, queue=queue)
    before = set(threading.enumerate())
    changes = client.watch(task.id, timeout_s=5)
    assert next(changes) == task  # the call is open and has delivered a message
    # The in-process coordinator's own threads ("dtq-...", e.g. a store reader) may start.
    started = [t.name for t in set(threading.enumerate()) - before]
    changes.close()
    assert [name for name in started if not name.startswith("dtq-")] == []


def test_long_watches_are_renewed(cluster: Cluster) -> None:
    config = ClientConfig(address=cluster.address, retry=FAST_RETRY, watch_renew_s=0.2)
    with Client.from_config(config) as client:
        task = client.submit("sleep", {"seconds": 1})
        started = time.monotonic()
        # Each 0.2 s watch call ends with DEADLINE_EXCEEDED; the wait must reopen it.
        assert client.wait(task.id).state is TaskState.SUCCEEDED
        assert time.monotonic() - started > 0.8


# --- submit and wait in one call ------------------------------------------------------------


def test_submit_and_wait_returns_the_finished_task(cluster: Cluster, client: Client) -> None:
    done = client.submit_and_wait(TaskSpec("echo", {"x": 2}), timeout_s=10)
    assert done.state is TaskState.SUCCEEDED
    assert done.result_value() == {"x": 2}
    assert (done.node_id, done.attempt) == (cluster.node_id, 1)
    assert client.get(done.id) == done


def test_submit_and_wait_returns_a_failed_task(client: Client) -> None:
    done = client.submit_and_wait(TaskSpec("fail", {"message": "no"}, max_attempts=1), 10)
    assert done.state is TaskState.FAILED
    assert done.last_error is not None and done.last_error.message == "no"


def test_submit_and_wait_refuses_a_bad_spec_before_storing_it(client: Client, queue: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.submit_and_wait(TaskSpec("echo", queue=queue, priority=5000), timeout_s=5)
    assert [f for f, _ in info.value.field_violations] == ["task.priority"]
    assert client.list_tasks(queue=queue) == []


def test_submit_and_wait_times_out_with_the_stored_task(client: Client, queue: str) -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.submit_and_wait(TaskSpec(NOBODY, queue=queue), timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 3
    last = info.value.last
    assert last is not None and last.state is TaskState.QUEUED
    assert [t.id for t in client.list_tasks(queue=queue)] == [info.value.task_id] == [last.id]


def test_submit_and_wait_with_a_known_key_returns_that_task(client: Client) -> None:
    key = f"saw-{uuid.uuid4().hex}"
    first = client.submit_and_wait(TaskSpec("echo", 7, idempotency_key=key), timeout_s=10)
    again = client.submit_and_wait(TaskSpec("echo", 7, idempotency_key=key), timeout_s=10)
    assert again == first and first.state is TaskState.SUCCEEDED
    with pytest.raises(AlreadyExists):
        client.submit_and_wait(TaskSpec("echo", 8, idempotency_key=key), timeout_s=10)


def test_submit_and_wait_follows_a_task_longer_than_one_call(cluster: Cluster) -> None:
    # The call lasts at most timeout_s (0.3 s); the task runs 1 s, so wait() finishes it.
    config = ClientConfig(address=cluster.address, retry=FAST_RETRY, timeout_s=0.3)
    with Client.from_config(config) as client:
        started = time.monotonic()
        done = client.submit_and_wait(TaskSpec("sleep", {"seconds": 1}), timeout_s=20)
        assert done.state is TaskState.SUCCEEDED
        assert done.result_value() == {"slept": 1.0}
        assert time.monotonic() - started > 0.9
        assert client.get(done.id) == done


def test_wait_on_a_missing_task_raises(client: Client) -> None:
    with pytest.raises(TaskNotFound):
        client.wait(str(uuid.uuid4()), timeout_s=5)
    with pytest.raises(InvalidArgument):
        client.wait("nope", timeout_s=5)


def test_close_is_idempotent(cluster: Cluster) -> None:
    client = Client(cluster.address)
    assert client.health() == "SERVING"
    client.close()
    client.close()


def test_stopping_a_watch_early_ends_the_call(cluster: Cluster, client: Client, queue: str) -> None:
    task = client.submit(NOBODY, queue=queue)
    changes = client.watch(task.id)
    assert next(changes).state is TaskState.QUEUED
    assert cluster.watching(task.id)
    changes.close()
    wait_until(lambda: not cluster.watching(task.id), 5, what="the server to end the stream")


# --- a coordinator restart -----------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A coordinator process; start it again with :func:`restart`."""
    running = start_server(tmp_path / "data")
    try:
        yield running
    finally:
        running.stop()


def restart(server: ServerProcess) -> ServerProcess:
    """Start a coordinator on ``server``'s data and address (``server`` must be dead)."""
    return start_server(server.data_dir, name="restarted", listen=server.address)


class Background(threading.Thread):
    """Runs ``fn`` in a daemon thread, keeping its result or exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self._value: object = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout_s: float) -> object:
        """``fn``'s return value, or its exception re-raised."""
        self.join(timeout_s)
        assert not self.is_alive(), f"still running after {timeout_s} s"
        if self._error is not None:
            raise self._error
        return self._value


def test_calls_during_an_outage_retry_until_the_coordinator_is_back(
    server: ServerProcess, queue: str, retries: Callable[[], list[logging.LogRecord]]
) -> None:
    with Client(server.address, timeout_s=5.0, retry=RESTART_RETRY) as client:
        before = client.submit(NOBODY, queue=queue)
        server.kill9()
        get = Background(lambda: client.get(before.id))
        submit = Background(lambda: client.submit(NOBODY, queue=queue))
        wait_until(lambda: len({r.thread for r in retries()}) == 2, 10, what="both calls to retry")
        restarted = restart(server)
        try:
            assert get.result(15) == before
            new = submit.result(15)
            assert isinstance(new, Task)
            # The retried submit created its task exactly once.
            assert [t.id for t in client.list_tasks(queue=queue)] == [new.id, before.id]
            assert client.health() == "SERVING"
        finally:
            restarted.stop()


def test_a_watch_rides_out_a_restart(
    server: ServerProcess, queue: str, retries: Callable[[], list[logging.LogRecord]]
) -> None:
    with Client(server.address, timeout_s=5.0, retry=FAST_RETRY) as client:
        task = client.submit(NOBODY, queue=queue)
        seen: list[TaskState] = []
        watch = Background(lambda: seen.extend(t.state for t in client.watch(task.id, 20)))
        wait_until(lambda: seen, 10, what="the watch to start")
        server.kill9()
        # The watch keeps reconnecting for longer than FAST_RETRY's attempt budget.
        wait_until(lambda: len(retries()) > FAST_RETRY.attempts, 10, what="watch reconnects")
        restarted = restart(server)
        try:
            # A fresh channel: this client's own is still in gRPC's reconnect backoff.
            with Client(restarted.address, retry=RESTART_RETRY) as other:
                assert other.cancel(task.id).state is TaskState.CANCELLED
            watch.result(15)
            # The reopened stream's first state (still queued) is not repeated.
            assert seen == [TaskState.QUEUED, TaskState.CANCELLED]
        finally:
            restarted.stop()


def test_submit_and_wait_rides_out_a_restart_after_the_submit(
    server: ServerProcess, queue: str, retries: Callable[[], list[logging.LogRecord]]
) -> None:
    with Client(server.address, timeout_s=5.0, retry=RESTART_RETRY) as client:
        spec = TaskSpec(NOBODY, queue=queue)
        waited = Background(lambda: client.submit_and_wait(spec, timeout_s=20))
        wait_until(lambda: client.list_tasks(queue=queue), 10, what="the task to be stored")
        [stored] = client.list_tasks(queue=queue)
        server.kill9()
        # The broken call is followed by wait() (or, if the answer was lost, resubmitted).
        wait_until(retries, 10, what="the call to reconnect")
        restarted = restart(server)
        try:
            with Client(restarted.address, retry=RESTART_RETRY) as other:
                assert other.cancel(stored.id).state is TaskState.CANCELLED
            done = waited.result(15)
            assert isinstance(done, Task)
            assert (done.id, done.state) == (stored.id, TaskState.CANCELLED)
        finally:
            restarted.stop()
