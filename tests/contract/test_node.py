"""The contract proof: a Node.js client and worker node written from protos/ alone.

``tests/contract/js`` loads ``protos/dtq/v1/*.proto`` at run time with
``@grpc/proto-loader``; nothing there comes from the Python packages. These tests
drive it against a real coordinator and check what it did through the Python
client, so both sides must agree on the wire contract alone.

Node.js and the packages come from ``make node-deps``. Without them the tests skip
with the reason, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dtq_client import Client, NodeState, TaskState
from tests.harness import InProcessCoordinator, Proc, wait_until

JS_DIR = Path(__file__).resolve().parent / "js"
CALL_LIMIT_S = 20.0
"""Bound on one run of the JS client (a watch included)."""
FAST_TIMING: dict[str, Any] = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.0}
"""Coordinator timing for the crash test: a dead node's task is redelivered within ~2 s."""


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` binary, with tests/contract/js's packages installed."""
    binary = shutil.which("node")
    if binary is None:
        missing = "node is not on PATH"
    elif not (JS_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing = f"{JS_DIR / 'node_modules'} is not installed"
    else:
        return binary
    reason = f"{missing}: run `make node-deps` (Node.js, then npm ci in tests/contract/js)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason)
    pytest.skip(reason)


def js_client(node: str, address: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run ``client.js`` once; its exit code and the JSON lines it printed."""
    done = subprocess.run(
        [node, str(JS_DIR / "client.js"), "--address", address, *args],
        capture_output=True,
        timeout=CALL_LIMIT_S,
        check=False,
    )
    assert not done.stderr, done.stderr.decode(errors="replace")
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def js_ok(node: str, address: str, *args: str) -> dict[str, Any]:
    """The one answer of a ``client.js`` call that must succeed."""
    code, lines = js_client(node, address, *args)
    assert code == 0 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.timeout(60)
def test_js_client_round_trip(node: str, coordinator: InProcessCoordinator) -> None:
    """Submit (idempotent), get, list, watch until CANCELLED, cancel, and a bad request's
    google.rpc details, all from Node.js; the coordinator's state read back in Python."""
    address = coordinator.address
    submit = ("submit", "--type", "js.nobody", "--queue", "contract", "--key", "key-1")
    first = js_ok(node, address, *submit, "--payload", '{"x": 1}')
    again = js_ok(node, address, *submit, "--payload", '{"x": 1}')
    task_id = first["task"]["id"]
    assert first["created"] is True and again["created"] is False
    assert again["task"]["id"] == task_id
    assert first["task"]["state"] == "TASK_STATE_QUEUED"
    assert first["task"]["payload"] == {"x": 1}

    with Client(address) as client:
        stored = client.get(task_id)
        assert stored.idempotency_key == "key-1" and stored.queue == "contract"
        assert stored.payload_value() == {"x": 1}
        other = client.submit("js.nobody", {"y": 2}, queue="contract")

        got = js_ok(node, address, "get", task_id)["task"]
        assert (got["id"], got["type"], got["max_attempts"]) == (task_id, "js.nobody", 3)

        code, pages = js_client(node, address, "list", "--queue", "contract", "--page-size", "1")
        assert code == 0 and len(pages) == 2, pages  # one task a page: the token was followed
        assert [p["tasks"][0]["id"] for p in pages] == [other.id, task_id]  # newest first
        assert pages[-1]["next_page_token"] == ""

        watch = subprocess.Popen(
            [node, str(JS_DIR / "client.js"), "--address", address, "watch", task_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert watch.stdout is not None
            # The watch's first answer is the current state: then it is subscribed.
            first_seen = json.loads(watch.stdout.readline())
            assert first_seen["task"]["state"] == "TASK_STATE_QUEUED"
            cancelled = js_ok(node, address, "cancel", task_id)["task"]
            assert cancelled["state"] == "TASK_STATE_CANCELLED"
            out, err = watch.communicate(timeout=CALL_LIMIT_S)
        finally:
            watch.kill()
            watch.wait()
        assert watch.returncode == 0, err
        states = [json.loads(line)["task"]["state"] for line in out.splitlines()]
        assert states[-1] == "TASK_STATE_CANCELLED"  # and the stream ended there
        assert client.get(task_id).state is TaskState.CANCELLED
        assert client.get(other.id).state is TaskState.QUEUED

        code, lines = js_client(node, address, "submit", "--type", "not a type!")
        assert code == 1, lines
        error = lines[0]["error"]
        assert (error["code"], error["status"]) == (3, "INVALID_ARGUMENT")
        details = {d["@type"]: d for d in error["details"]}
        assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_FIELD"
        assert details["google.rpc.ErrorInfo"]["domain"] == "dtq.dev"
        fields = [v["field"] for v in details["google.rpc.BadRequest"]["fieldViolations"]]
        assert fields == ["task.type"]
        assert len(client.list_tasks()) == 2  # the bad submit stored nothing


def start_js_worker(node: str, address: str, log_dir: Path, node_id: str) -> Proc:
    """Start ``worker.js`` as ``node_id``; it is registered when this returns."""
    log_path = log_dir / f"{node_id}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [node, str(JS_DIR / "worker.js"), "--address", address, "--node-id", node_id],
            stdout=log,
            stderr=log,
        )
    worker = Proc(popen, log_path)
    wait_until(
        lambda: events(worker, "registered") or not worker.alive(),
        CALL_LIMIT_S,
        what=f"{node_id} registered",
    )
    assert worker.alive(), worker.log()
    return worker


def events(worker: Proc, name: str) -> list[dict[str, Any]]:
    """The worker's ``name`` events so far (its stdout is one JSON object a line)."""
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == name]


def wait_task(client: Client, task_id: str, done: Callable[[Any], bool], what: str) -> Any:
    """Poll the task through the Python client until ``done(task)``; return it."""

    def reached() -> Any:
        task = client.get(task_id)
        return task if done(task) else None

    return wait_until(reached, CALL_LIMIT_S, what=what)


@pytest.mark.timeout(60)
def test_js_worker_runs_python_submitted_tasks(
    node: str, coordinator: InProcessCoordinator, processes: list[Proc], tmp_path: Path
) -> None:
    """Results, failures and a cancel reported by Node.js read back in Python; SIGTERM
    hands back the task it held and leaves."""
    worker = start_js_worker(node, coordinator.address, tmp_path, "js-1")
    processes.append(worker)
    with Client(coordinator.address) as client:
        reverse = client.submit("js.reverse", "hello, wörld")
        failing = client.submit("js.fail", {"message": "boom from js"}, max_attempts=2)

        done = client.wait(reverse.id, timeout_s=CALL_LIMIT_S)
        assert done.state is TaskState.SUCCEEDED, done.last_error
        assert done.result_value() == "dlröw ,olleh"
        assert done.result_content_type == "application/json"
        assert (done.attempt, done.node_id) == (1, "js-1")
        assert done.started_at is not None and done.finished_at is not None

        failed = client.wait(failing.id, timeout_s=CALL_LIMIT_S)
        assert failed.state is TaskState.FAILED
        assert (failed.attempt, failed.failures, failed.max_attempts) == (2, 2, 2)
        assert failed.last_error is not None
        assert (failed.last_error.type, failed.last_error.message) == ("Error", "boom from js")
        assert failed.last_error.retryable and "handlers.js" in failed.last_error.traceback

        cancelled = client.submit("js.block", {"release_file": str(tmp_path / "never")})
        wait_task(client, cancelled.id, lambda t: t.state is TaskState.RUNNING, "js.block running")
        client.cancel(cancelled.id)  # the coordinator asks js-1 to stop it; js-1 reports
        stopped = wait_task(client, cancelled.id, lambda t: t.is_terminal, "cancel reported")
        assert stopped.state is TaskState.CANCELLED and stopped.node_id == "js-1"

        held = client.submit("js.block", {"release_file": str(tmp_path / "never")})
        wait_task(client, held.id, lambda t: t.state is TaskState.RUNNING, "js.block running")
        worker.signal(signal.SIGTERM)
        assert worker.wait(CALL_LIMIT_S) == 0, worker.log()
        handed_back = client.get(held.id)
        # Released, not lost: neither a failure nor a lease expiry is counted. Until Leave
        # the coordinator may offer it again (attempt 2); the worker holds it for Leave.
        assert handed_back.state is TaskState.QUEUED and handed_back.attempt in (1, 2)
        assert (handed_back.lease_expiries, handed_back.failures) == (0, 0)
        assert [n.state for n in client.nodes(include_gone=True)] == [NodeState.LEFT]
    assert events(worker, "closed") == [
        {"event": "closed", "node_id": "js-1", "code": 0, "details": "", "left": True}
    ]


@pytest.mark.timeout(60)
def test_kill_9_of_a_js_worker_redelivers_its_task_once(
    node: str,
    make_coordinator: Callable[..., InProcessCoordinator],
    processes: list[Proc],
    tmp_path: Path,
) -> None:
    """Fencing across languages: the task a killed Node.js node held goes, after the
    heartbeat timeout, to another node as attempt 2, and succeeds there once."""
    coordinator = make_coordinator(**FAST_TIMING)
    witness, release = tmp_path / "witness.log", tmp_path / "release"
    first = start_js_worker(node, coordinator.address, tmp_path, "js-a")
    processes.append(first)
    with Client(coordinator.address) as client:
        payload = {"witness_file": str(witness), "release_file": str(release)}
        task = client.submit("js.block", payload)
        wait_task(client, task.id, lambda t: t.state is TaskState.RUNNING, "js-a running it")
        second = start_js_worker(node, coordinator.address, tmp_path, "js-b")
        processes.append(second)

        first.kill9()
        killed_at = time.monotonic()
        redelivered = wait_task(client, task.id, lambda t: t.attempt == 2, "attempt 2")
        waited_s = time.monotonic() - killed_at
        # Not before the coordinator declared js-a dead: silent for the heartbeat timeout
        # (its last heartbeat went at most one interval before the kill).
        assert waited_s >= FAST_TIMING["heartbeat_timeout_s"] - FAST_TIMING["heartbeat_interval_s"]
        assert redelivered.node_id == "js-b" and redelivered.lease_expiries == 1
        wait_task(client, task.id, lambda t: t.state is TaskState.RUNNING, "js-b running it")

        release.touch()
        done = client.wait(task.id, timeout_s=CALL_LIMIT_S)
        assert done.state is TaskState.SUCCEEDED, done.last_error
        assert done.result_value() == {"node_id": "js-b", "attempt": 2}
        runs = [json.loads(line) for line in witness.read_text().splitlines()]
        assert [(r["event"], r["node_id"], r["attempt"]) for r in runs] == [
            ("start", "js-a", 1),
            ("start", "js-b", 2),
            ("finish", "js-b", 2),
        ]
        gone = {n.node_id: n.state for n in client.nodes(include_gone=True)}
        assert gone["js-a"] is NodeState.DEAD

        client.drain("js-b")  # finish what runs (nothing), then Leave
        assert second.wait(CALL_LIMIT_S) == 0, second.log()
        assert events(second, "closed")[0]["left"] is True
