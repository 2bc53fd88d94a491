"""A registry's lifespan: set up once per process that runs handlers, torn down after."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtq_client import Client, NodeState, TaskState
from dtq_worker import ConfigError, LifespanFailed, Registry
from dtq_worker.lifespan import Lifespan
from tests.harness import start_node, start_server, wait_until
from tests.lifespan_handlers import FAIL_ENV, LOG_ENV, SETUP_ERROR, events

# --- the decorator and Lifespan, on their own ----------------------------------------------


def test_a_registry_takes_one_plain_lifespan() -> None:
    registry = Registry()

    async def async_gen() -> AsyncIterator[int]:
        yield 1

    async def coroutine() -> int:
        return 1

    for wrong in (async_gen, coroutine):
        with pytest.raises(TypeError, match="plain"):
            registry.lifespan(wrong)
    with pytest.raises(TypeError, match="callable"):
        registry.lifespan(42)  # type: ignore[type-var]

    def first() -> Iterator[int]:
        yield 1

    assert registry.lifespan(first) is first  # returned unchanged, still importable
    with pytest.raises(ConfigError, match="already has a lifespan"):
        registry.lifespan(contextlib.nullcontext)
    assert registry.lifespan_factory is first


def test_setup_yields_the_resources_and_teardown_runs_once() -> None:
    steps: list[str] = []

    def generator() -> Iterator[dict[str, str]]:
        steps.append("setup")
        yield {"db": "pool"}
        steps.append("teardown")

    @contextlib.contextmanager
    def manager() -> Iterator[str]:
        steps.append("enter")
        yield "session"
        steps.append("exit")

    lifespan = Lifespan(generator)
    assert lifespan.start() == {"db": "pool"}
    assert steps == ["setup"]
    assert lifespan.stop() and lifespan.stop()
    assert steps == ["setup", "teardown"]
    other = Lifespan(manager)  # any callable that returns a context manager
    assert other.start() == "session"
    assert other.stop()
    assert steps[2:] == ["enter", "exit"]
    assert Lifespan(generator).stop(), "nothing to tear down before a setup"


def test_a_setup_that_raises_is_lifespan_failed_with_its_traceback() -> None:
    torn_down: list[bool] = []

    def broken() -> Iterator[None]:
        try:
            raise OSError("database refused the connection")
        finally:
            torn_down.append(True)
        yield

    with pytest.raises(LifespanFailed, match="OSError: database refused") as raised:
        Lifespan(broken).start()
    assert isinstance(raised.value.__cause__, OSError)
    assert 'raise OSError("database refused the connection")' in raised.value.traceback_text
    with pytest.raises(LifespanFailed, match="not a context manager"):
        Lifespan(lambda: 42).start()


def test_a_teardown_that_raises_is_reported_not_raised() -> None:
    def leaky() -> Iterator[None]:
        yield
        raise RuntimeError("could not flush")

    lifespan = Lifespan(leaky)
    lifespan.start()
    assert lifespan.stop() is False


# --- in real dtq-worker processes ----------------------------------------------------------


def _run_whoami(client: Client, count: int, sleep_s: float) -> list[dict[str, Any]]:
    tasks = [client.submit("whoami", {"sleep": sleep_s}) for _ in range(count)]
    results = []
    for task in tasks:
        done = client.wait(task.id, timeout_s=30)
        assert done.state is TaskState.SUCCEEDED, done.last_error
        value = done.result_value()
        assert isinstance(value, dict)
        results.append(value)
    return results


@pytest.mark.timeout(90)
@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_handlers_share_what_the_lifespan_made_in_their_own_process(
    tmp_path: Path, isolation: str
) -> None:
    """Thread isolation: one setup in the node process, before it connects. Process
    isolation: one in each handler process, none in the node. Each torn down when the
    node shuts down. (The registry's middleware runs where its handlers run, too.)"""
    log = tmp_path / "lifespan.log"
    server = start_server(tmp_path / "data")
    node = start_node(
        server.address, tmp_path, "shared", "--isolation", isolation,
        module="tests.lifespan_handlers:registry", threads=2, env={LOG_ENV: str(log)},
    )  # fmt: skip
    try:
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            # Two at a time keep both threads (and, isolated, both processes) busy.
            results = _run_whoami(client, 2, 0.5) + _run_whoami(client, 4, 0.0)
        for result in results:  # made in the process that ran the task
            assert result["resources"] == {"made_in": result["pid"]}
        # The registry's middleware ran around each task, in the process that ran it.
        wrapped = [pid for event, pid in events(log) if event == "task"]
        assert sorted(wrapped) == sorted(r["pid"] for r in results)
        setups = [pid for event, pid in events(log) if event == "setup"]
        assert len(setups) == len(set(setups)), "one setup per process"
        if isolation == "thread":
            assert setups == [node.pid]
        else:
            assert node.pid not in setups
            assert {r["pid"] for r in results} == set(setups)
            assert len(setups) == 2
        assert not [pid for event, pid in events(log) if event == "teardown"]
        node.signal(signal.SIGTERM)
        assert node.wait(30) == 0
        teardowns = [pid for event, pid in events(log) if event == "teardown"]
        assert sorted(teardowns) == sorted(setups)
    finally:
        node.stop()
        server.stop()


@pytest.mark.timeout(90)
def test_a_node_whose_lifespan_fails_exits_before_it_connects(tmp_path: Path) -> None:
    log = tmp_path / "lifespan.log"
    server = start_server(tmp_path / "data")
    node = start_node(
        server.address, tmp_path, "broken", module="tests.lifespan_handlers:registry",
        env={LOG_ENV: str(log), FAIL_ENV: "1"},
    )  # fmt: skip
    try:
        assert node.wait(30) == 1
        assert SETUP_ERROR in node.log()
        assert events(log) == [("setup", node.pid)]  # no teardown of a failed setup
        with Client(server.address) as client:
            assert client.nodes(include_gone=True) == []
    finally:
        node.stop()
        server.stop()


@pytest.mark.timeout(90)
def test_a_handler_process_whose_lifespan_fails_hands_the_task_back(tmp_path: Path) -> None:
    """As a crash of its worker thread (the restart intensity bounds the retries), but
    not the task's fault: it goes back to its queue with no failure and no lost lease."""
    log = tmp_path / "lifespan.log"
    server = start_server(tmp_path / "data")
    node = start_node(
        server.address, tmp_path, "broken", "--isolation", "process", "--max-restarts", "0",
        module="tests.lifespan_handlers:registry", threads=1,
        env={LOG_ENV: str(log), FAIL_ENV: "1"},
    )  # fmt: skip
    try:
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            task = client.submit("whoami", {})
            assert node.wait(30) == 70  # one dead thread is over --max-restarts 0
            wait_until(lambda: client.get(task.id).state is TaskState.QUEUED, 10)
            back = client.get(task.id)
            assert (back.failures, back.lease_expiries) == (0, 0)
        assert SETUP_ERROR in node.log()
        [(event, pid)] = events(log)
        assert event == "setup" and pid != node.pid
    finally:
        node.stop()
        server.stop()
