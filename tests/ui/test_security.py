"""The UI's HTTP defences, with plain HTTP requests to a real UI server, and its --listen rule."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from dtq_client import Client, TaskState
from dtq_client.cli import cli
from dtq_client.ui import UiConfig, UiConfigError
from dtq_client.ui.guard import CONTENT_SECURITY_POLICY
from dtq_client.ui.serve import UiServer
from tests.ui.conftest import fresh_queue

pytestmark = pytest.mark.timeout(20)


def _request(
    server: UiServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to ``server``; its status, headers (lower-case names) and body."""
    netloc = urlsplit(server.url).netloc
    connection = http.client.HTTPConnection(netloc, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def _paused(client: Client, queue: str) -> bool:
    return next(q for q in client.queues() if q.name == queue).paused


def test_a_post_without_the_csrf_header_is_refused(client: Client, ui_server: UiServer) -> None:
    queue = fresh_queue()
    client.submit("echo", {}, queue=queue)

    status, _, body = _request(ui_server, "POST", f"/queues/{queue}/pause")
    assert status == 403
    assert "X-DTQ-UI" in json.loads(body)["error"]
    assert not _paused(client, queue)

    # What a cross-site page's fetch() would send if a preflight ever let it through.
    evil = {"X-DTQ-UI": "1", "Origin": "http://evil.example"}
    status, _, _ = _request(ui_server, "POST", f"/queues/{queue}/pause", evil)
    assert status == 403
    status, _, _ = _request(ui_server, "POST", f"/queues/{queue}/pause", {"X-DTQ-UI": "1"})
    assert status == 200
    assert _paused(client, queue)


def test_bulk_and_node_actions_need_the_csrf_header_too(
    client: Client, ui_server: UiServer
) -> None:
    """The page's confirm() is a convenience; the header is what the server checks."""
    queue = fresh_queue()
    task = client.submit("echo", {}, queue=queue)
    for path in (f"/queues/{queue}/cancel-queued", f"/queues/{queue}/retry-failed"):
        status, _, body = _request(ui_server, "POST", path)
        assert status == 403
        assert "X-DTQ-UI" in json.loads(body)["error"]
    for path in ("/nodes/ui-node/drain", "/schedules/some-schedule/pause"):
        assert _request(ui_server, "POST", path)[0] == 403
    assert client.get(task.id).state is TaskState.QUEUED


def test_a_foreign_host_header_is_refused(ui_server: UiServer) -> None:
    """DNS rebinding: evil.example re-pointed at 127.0.0.1 still says Host: evil.example."""
    status, _, body = _request(ui_server, "GET", "/", {"Host": "evil.example"})
    assert status == 421
    assert b"coordinator" not in body
    assert _request(ui_server, "GET", "/", {"Host": "localhost"})[0] == 200


def test_every_answer_carries_the_security_headers(ui_server: UiServer) -> None:
    for path in ("/", "/tasks", "/schedules", "/groups/none", "/static/app.js", "/nowhere"):
        _, headers, _ = _request(ui_server, "GET", path)
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path


def test_coordinator_errors_are_messages_not_tracebacks(ui_server: UiServer) -> None:
    status, _, body = _request(ui_server, "GET", "/tasks/0000")
    assert status in (400, 404)
    assert b"Traceback" not in body
    assert b'class="error"' in body

    status, _, body = _request(ui_server, "POST", "/tasks/0000/cancel", {"X-DTQ-UI": "1"})
    assert status in (400, 404)
    assert json.loads(body)["error"].startswith(("INVALID_ARGUMENT", "NOT_FOUND"))

    status, _, body = _request(ui_server, "GET", "/tasks?state=bogus")
    assert status == 400
    assert b"unknown state" in body

    status, _, body = _request(ui_server, "POST", "/schedules/none/pause", {"X-DTQ-UI": "1"})
    assert status == 404
    assert json.loads(body)["error"].startswith("NOT_FOUND")
    status, _, body = _request(ui_server, "POST", "/nodes/none/drain", {"X-DTQ-UI": "1"})
    assert status == 404
    assert json.loads(body)["error"].startswith("NOT_FOUND")


def test_a_non_loopback_listen_needs_insecure() -> None:
    result = CliRunner().invoke(cli, ["ui", "--listen", "0.0.0.0:8080"])
    assert result.exit_code == 2
    assert "--insecure" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(UiConfigError, match="--insecure"):
        UiConfig(listen="192.0.2.1:8080")
    assert not UiConfig(listen="0.0.0.0:8080", insecure=True).on_loopback
    assert UiConfig(listen="[::1]:0").on_loopback
    assert UiConfig(listen="localhost:8080").on_loopback
    with pytest.raises(UiConfigError, match="page_size"):
        UiConfig(page_size=1001)  # more than one ListTasks call returns
    with pytest.raises(UiConfigError, match="list_size"):
        UiConfig(list_size=1001)
    with pytest.raises(UiConfigError, match="list_size"):
        UiConfig(list_size=0)
