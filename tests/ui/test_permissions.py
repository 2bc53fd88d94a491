"""With a token whose role may not do everything, the UI shows the coordinator's refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from dtq_client import Client
from dtq_server.tokens import entry, new_token
from tests.harness import InProcessCoordinator
from tests.ui.conftest import fresh_queue, open_page, start_ui

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def submitter_client(
    make_coordinator: Callable[..., InProcessCoordinator], tmp_path: Path
) -> Iterator[Client]:
    """A client with a submitter token: it may submit, read and cancel its own tasks only."""
    token = new_token()
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(entry("ui-tester", "submitter", token))
    coordinator = make_coordinator(tokens_file=tokens_file)
    with Client(coordinator.address, token=token) as client:
        yield client


@pytest.fixture
def submitter_page(browser: Browser, submitter_client: Client) -> Iterator[Page]:
    server = start_ui(submitter_client)
    try:
        yield from open_page(browser, server)
    finally:
        server.stop()


def test_refusals_are_shown_as_readable_messages(
    submitter_page: Page, submitter_client: Client
) -> None:
    page = submitter_page
    page.goto("/")
    expect(page.locator("[data-field=health]")).to_have_text("SERVING")
    expect(page.locator("[data-section-error=queues]")).to_contain_text("PERMISSION_DENIED")
    expect(page.locator("[data-section-error=nodes]")).to_contain_text("PERMISSION_DENIED")

    task = submitter_client.submit("echo", {}, queue=fresh_queue())
    page.goto(f"/tasks/{task.id}")
    page.get_by_role("button", name="Cancel task").click()  # a submitter may cancel its own
    expect(page.locator("[data-field=state]")).to_have_text("cancelled")
    page.get_by_role("button", name="Retry task").click()  # retrying is for admins
    flash = page.locator("#flash")
    expect(flash).to_contain_text("PERMISSION_DENIED")
    expect(flash).to_have_attribute("data-kind", "error")
    expect(page.locator("body")).not_to_contain_text("Traceback")
