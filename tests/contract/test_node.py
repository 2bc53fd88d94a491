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
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dtq_client import Client, TaskState
from tests.harness import InProcessCoordinator

JS_DIR = Path(__file__).resolve().parent / "js"
CALL_LIMIT_S = 20.0
"""Bound on one run of the JS client (a watch included)."""


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
    if os.environ.get("CI"):
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
