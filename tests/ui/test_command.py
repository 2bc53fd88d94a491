"""``dtq-client ui`` as a real process, and a UI whose coordinator is not there."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dtq_client import Client, RetryPolicy
from tests.harness import (
    ROOT,
    InProcessCoordinator,
    Proc,
    free_loopback_port,
    python_env,
    wait_until,
)
from tests.ui.conftest import start_ui

pytestmark = pytest.mark.timeout(30)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def test_the_command_serves_until_sigterm(
    ui_coordinator: InProcessCoordinator, tmp_path: Path
) -> None:
    log_path = tmp_path / "ui.log"
    args = [
        sys.executable, "-m", "dtq_client", "--address", ui_coordinator.address,
        "ui", "--listen", "127.0.0.1:0",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(args, stdout=log, stderr=log, env=python_env(), cwd=ROOT)
    proc = Proc(popen, log_path)
    try:
        found = wait_until(
            lambda: re.search(r"DTQ web UI on (http://127\.0\.0\.1:\d+)", proc.log()),
            15,
            what="the UI's address on stderr",
        )
        assert found is not None
        page = _get(found.group(1) + "/")
        assert "SERVING" in page
        assert ui_coordinator.address in page
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.stop()


def test_an_unreachable_coordinator_is_a_message_on_the_page() -> None:
    address = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    with Client(address, retry=RetryPolicy(attempts=1), timeout_s=2) as client:
        server = start_ui(client)
        try:
            page = _get(server.url + "/")
            tasks = urllib.request.Request(server.url + "/tasks")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(tasks, timeout=10)
        finally:
            server.stop()
    assert page.count("UNAVAILABLE") == 3  # health, queues and nodes each say so
    assert refused.value.code == 503
    assert "UNAVAILABLE" in refused.value.read().decode()
