"""Client.submitter(): pipelined submits against real coordinators (in-process and processes)."""

from __future__ import annotations

import inspect
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from dtq_client import (
    AlreadyExists,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    PayloadError,
    RetryPolicy,
    SubmitAck,
    Submitter,
    TaskSpec,
    TaskState,
)
from tests.harness import InProcessCoordinator, ServerProcess, start_server, wait_until

NOBODY = "nobody.handles.this"
RESTART_RETRY = RetryPolicy(attempts=200, initial_backoff_s=0.05, max_backoff_s=0.2, total_s=30.0)


def queued(client: Client, queue: str) -> int:
    """How many tasks the queue holds, counted by the coordinator."""
    return next((q.queued for q in client.queues() if q.name == queue), 0)


@pytest.mark.timeout(120)
def test_ten_thousand_submits_are_all_acknowledged_and_stored(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    with Client(coordinator.address) as client:
        with client.submitter() as submitter:
            futures = [submitter.submit(NOBODY, {"i": i}, queue=queue) for i in range(10_000)]
        assert all(f.done() for f in futures)  # leaving the block waited for every answer
        acks = [f.result() for f in futures]
        assert all(a.created and a.state is TaskState.QUEUED for a in acks)
        assert len({a.task_id for a in acks}) == 10_000
        assert queued(client, queue) == 10_000
        for i in (0, 4_999, 9_999):
            task = client.get(acks[i].task_id)
            assert (task.queue, task.payload_value()) == (queue, {"i": i})


def test_a_refused_submit_fails_its_own_future_with_the_unary_error(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    with Client(coordinator.address) as client:
        client.submit(NOBODY, {"v": 1}, queue=queue, idempotency_key="taken")
        with client.submitter() as submitter:
            ok = submitter.submit(NOBODY, queue=queue)
            bad_type = submitter.submit("not a type", queue=queue)
            clash = submitter.submit(NOBODY, {"v": 2}, queue=queue, idempotency_key="taken")
            missing = submitter.submit(
                NOBODY, queue=queue, depends_on=["0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"]
            )
            also_ok = submitter.submit_spec(TaskSpec(NOBODY, queue=queue))
        error = bad_type.exception()
        assert isinstance(error, InvalidArgument)
        assert [field for field, _ in error.field_violations] == ["task.type"]
        assert isinstance(clash.exception(), AlreadyExists)
        assert clash.exception().reason == "IDEMPOTENCY_KEY_REUSED"  # type: ignore[union-attr]
        error = missing.exception()
        assert isinstance(error, InvalidArgument)
        assert [field for field, _ in error.field_violations] == ["task.depends_on[0]"]
        assert ok.result().created and also_ok.result().created
        assert queued(client, queue) == 3


def test_the_same_key_again_is_answered_with_the_stored_task(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    with Client(coordinator.address) as client, client.submitter() as submitter:
        first = submitter.submit(NOBODY, {"x": 1}, queue=queue, idempotency_key="k1").result(10)
        spec = TaskSpec(NOBODY, {"x": 1}, queue=queue, idempotency_key="k1")
        again = submitter.submit_spec(spec).result(10)
        assert again == SubmitAck(first.task_id, created=False, state=TaskState.QUEUED)


def test_an_unencodable_payload_raises_in_the_caller(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    with Client(coordinator.address) as client, client.submitter() as submitter:
        with pytest.raises(PayloadError):
            submitter.submit(NOBODY, object(), queue=queue)
        assert submitter.unanswered == 0


def test_the_window_bounds_unanswered_submits(
    coordinator: InProcessCoordinator, queue: str
) -> None:
    with Client(coordinator.address) as client, client.submitter(window=3) as submitter:
        for i in range(60):
            submitter.submit(NOBODY, i, queue=queue)
            assert submitter.unanswered <= 3
    with pytest.raises(ValueError, match="window"):
        Client(coordinator.address).submitter(window=0)


def test_close_waits_then_refuses_more(coordinator: InProcessCoordinator, queue: str) -> None:
    with Client(coordinator.address) as client:
        submitter = client.submitter()
        future = submitter.submit(NOBODY, queue=queue)
        submitter.close()
        assert future.done() and future.result().created
        submitter.close()  # twice is fine
        with pytest.raises(RuntimeError, match="closed"):
            submitter.submit(NOBODY, queue=queue)


def test_submit_takes_the_same_options_as_client_submit() -> None:
    ours = list(inspect.signature(Submitter.submit).parameters.values())
    theirs = list(inspect.signature(Client.submit).parameters.values())
    assert ours == theirs


# --- a coordinator that dies or stops answering ----------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(tmp_path / "data")
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.timeout(120)
def test_submits_survive_a_coordinator_kill_9_and_restart(
    server: ServerProcess, queue: str
) -> None:
    total = 3_000
    futures: list[Future[SubmitAck]] = []
    with Client(server.address, retry=RESTART_RETRY) as client:
        submitter = client.submitter(window=200)

        def submit_all() -> None:
            for i in range(total):
                futures.append(submitter.submit(NOBODY, i, queue=queue))

        feeder = threading.Thread(target=submit_all, daemon=True)
        feeder.start()
        wait_until(lambda: sum(f.done() for f in list(futures)) >= 500, 30, what="500 acknowledged")
        server.kill9()  # with submits in flight: some committed, some not, none answered
        restarted = start_server(server.data_dir, name="restarted", listen=server.address)
        try:
            feeder.join(60)
            assert not feeder.is_alive()
            submitter.close()
            acks = [f.result(0) for f in futures]  # every one resolved, none failed
            ids = {a.task_id for a in acks}
            assert len(ids) == total, "each submit is exactly one task"
            assert queued(client, queue) == total, "no task lost, none duplicated"
            assert {t.id for t in client.iter_tasks(queue=queue, page_size=1000)} == ids
        finally:
            restarted.stop()


@pytest.mark.timeout(120)
def test_a_commit_whose_answers_were_lost_is_found_again_on_resend(
    tmp_path: Path, queue: str
) -> None:
    # The coordinator dies right after its first submit commit, before answering it.
    crash = {"DTQ_FAILPOINT": "submit.after_commit_before_reply"}
    server = start_server(tmp_path / "data", env=crash)
    restarted = None
    try:
        with Client(server.address, retry=RESTART_RETRY) as client:
            submitter = client.submitter(window=100)
            futures = [submitter.submit(NOBODY, i, queue=queue) for i in range(50)]
            assert server.wait(30) == 137
            assert not any(f.done() for f in futures)
            restarted = start_server(server.data_dir, name="restarted", listen=server.address)
            submitter.close()
            acks = [f.result(0) for f in futures]
            found = [a for a in acks if not a.created]
            assert found, "the committed, unanswered submits were resent and found"
            assert len({a.task_id for a in acks}) == 50
            assert queued(client, queue) == 50
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.timeout(60)
def test_a_coordinator_that_stops_answering_fails_the_futures(
    server: ServerProcess, queue: str
) -> None:
    silent = RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.1, total_s=1.5)
    with Client(server.address, timeout_s=0.5, retry=silent) as client:
        submitter = client.submitter()
        assert submitter.submit(NOBODY, queue=queue).result(10).created  # the stream works
        server.signal(signal.SIGSTOP)
        try:
            stuck = submitter.submit(NOBODY, queue=queue)
            assert isinstance(stuck.exception(20), DeadlineExceeded)
            with pytest.raises(DeadlineExceeded):
                submitter.submit(NOBODY, queue=queue)  # the submitter gave up for good
            submitter.close()  # nothing is left to wait for
        finally:
            server.signal(signal.SIGCONT)
