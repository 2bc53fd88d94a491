"""Fixtures of the web UI's tests: a real coordinator, a real node, the UI, and Chromium.

One coordinator, one node and one UI server per test module (each test uses
queues of its own, so they do not see each other's counts), one headless
Chromium per session (Debian's, at /usr/bin/chromium: ``make browser-bin``),
and a fresh browser context per test. Pages refresh every 0.25 s here, so a
test waiting on the page waits about that long, not the 2 s default.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from dtq_client import Client
from dtq_client.ui import UiConfig
from dtq_client.ui.app import create_app
from dtq_client.ui.serve import UiServer
from tests.harness import InProcessCoordinator, Proc, server_config, start_node, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NODE_ID = "ui-node"
SERVED_QUEUE = "ui-run"
"""The one queue the node serves; tasks in other queues stay queued."""
REFRESH_S = 0.25

expect.set_options(timeout=10_000)


def fresh_queue() -> str:
    """A queue name no other test uses."""
    return f"q-{uuid.uuid4().hex[:8]}"


def start_ui(client: Client, **settings: Any) -> UiServer:
    """The UI for ``client`` on 127.0.0.1:0 (with ``settings`` of :class:`UiConfig`),
    serving on a thread."""
    config = UiConfig(listen="127.0.0.1:0", refresh_s=REFRESH_S, **settings)
    return UiServer(create_app(client, config), config).start()


@pytest.fixture(scope="module")
def ui_coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessCoordinator]:
    running = InProcessCoordinator(server_config(tmp_path_factory.mktemp("ui") / "data")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(ui_coordinator: InProcessCoordinator) -> Iterator[Client]:
    with Client(ui_coordinator.address) as running:
        yield running


@pytest.fixture(scope="module")
def node(
    ui_coordinator: InProcessCoordinator, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """A real ``dtq-worker`` serving SERVED_QUEUE with tests.handlers."""
    log_dir = tmp_path_factory.mktemp("ui-node")
    proc = start_node(ui_coordinator.address, log_dir, NODE_ID, "--queues", SERVED_QUEUE, threads=2)
    try:
        wait_until(lambda: any(n.node_id == NODE_ID for n in client.nodes()), 15, what="the node")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ui_server(client: Client) -> Iterator[UiServer]:
    server = start_ui(client)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run 'make browser-bin'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: Browser, server: UiServer) -> Iterator[Page]:
    """A page of a fresh browser context, its relative URLs on ``server``.

    Fails the test if the page's script threw or the browser reported a
    Content-Security-Policy violation (the UI's own script and styles must fit it).
    """
    context = browser.new_context(base_url=server.url)
    context.set_default_timeout(10_000)
    problems: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture
def page(browser: Browser, ui_server: UiServer) -> Iterator[Page]:
    yield from open_page(browser, ui_server)
