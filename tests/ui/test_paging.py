"""The overview's queues and nodes, and the schedules, a page at a time.

An open page fetches its data again every few seconds: read whole, a
coordinator with tens of thousands of queues made every refresh read them all
(~1.7 s of the coordinator's time at 80,000) and render them all. Each section
shows ``list_size`` rows (2 here) with links to its next and first pages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from dtq_client import Client, TaskSpec
from tests.harness import InProcessCoordinator, RawNode
from tests.ui.conftest import open_page, start_ui

pytestmark = pytest.mark.timeout(60)

QUEUES = [f"queue-{i}" for i in range(5)]
NODES = [f"node-{i}" for i in range(3)]


@pytest.fixture
def client(make_coordinator: Callable[..., InProcessCoordinator]) -> Iterator[Client]:
    """A client of a coordinator of its own: five queues, three nodes, nothing else."""
    coordinator = make_coordinator()
    nodes = [
        RawNode(coordinator.address, node_id, queues=tuple(QUEUES) + extra, auto_heartbeat=True)
        for node_id, extra in zip(
            NODES, [(), (), tuple(f"more-{i}" for i in range(20))], strict=True
        )
    ]
    try:
        with Client(coordinator.address) as running:
            running.submit_many([TaskSpec("echo", {}, queue=name) for name in QUEUES])
            yield running
    finally:
        for node in nodes:
            node.close()


@pytest.fixture
def page(browser: Browser, client: Client) -> Iterator[Page]:
    server = start_ui(client, list_size=2)
    try:
        yield from open_page(browser, server)
    finally:
        server.stop()


def _names(page: Page, attribute: str) -> list[str]:
    return [row.get_attribute(attribute) or "" for row in page.locator(f"tr[{attribute}]").all()]


def test_queues_and_nodes_are_shown_a_page_at_a_time(page: Page, client: Client) -> None:
    page.goto("/")
    queue_rows, node_rows = page.locator("tr[data-queue]"), page.locator("tr[data-node]")
    expect(queue_rows).to_have_count(2)
    assert _names(page, "data-queue") == QUEUES[:2]
    expect(node_rows).to_have_count(2)
    assert _names(page, "data-node") == NODES[:2]
    expect(page.get_by_role("link", name="« First queues")).to_have_count(0)

    page.get_by_role("link", name="More queues →").click()
    expect(page).to_have_url(re.compile(r"/\?queues="))
    expect(queue_rows.first).to_have_attribute("data-queue", QUEUES[2])
    assert _names(page, "data-queue") == QUEUES[2:4]
    # The page keeps its place as it refreshes, with live counts.
    client.submit("echo", {}, queue=QUEUES[3])
    expect(page.locator(f'tr[data-queue="{QUEUES[3]}"] [data-field=queued]')).to_have_text("2")

    # Paging the nodes keeps the queues' page.
    page.get_by_role("link", name="More nodes →").click()
    expect(node_rows).to_have_count(1)
    expect(node_rows.first).to_have_attribute("data-node", NODES[2])
    assert _names(page, "data-queue") == QUEUES[2:4]
    # A node serving 25 queues names 20 of them.
    expect(node_rows.first).to_contain_text("and 5 more")
    expect(page.get_by_role("link", name="More nodes →")).to_have_count(0)

    page.get_by_role("link", name="More queues →").click()
    expect(queue_rows).to_have_count(1)
    expect(queue_rows.first).to_have_attribute("data-queue", QUEUES[4])
    assert _names(page, "data-node") == NODES[2:]
    page.get_by_role("link", name="« First queues").click()
    expect(queue_rows.first).to_have_attribute("data-queue", QUEUES[0])
    assert _names(page, "data-node") == NODES[2:]


def test_a_made_up_token_fails_its_section_only(page: Page) -> None:
    page.goto("/?queues=not-a-token")
    expect(page.locator("[data-section-error=queues]")).to_contain_text("INVALID_ARGUMENT")
    expect(page.locator("tr[data-node]")).to_have_count(2)
    page.get_by_role("link", name="« First queues").click()
    expect(page.locator("tr[data-queue]")).to_have_count(2)


def test_schedules_are_shown_a_page_at_a_time(page: Page, client: Client) -> None:
    for name in QUEUES:
        client.create_schedule(name, TaskSpec("echo", {}), interval_s=3600, paused=True)
    page.goto("/schedules")
    rows = page.locator("tr[data-schedule]")
    expect(rows).to_have_count(2)
    page.get_by_role("link", name="More schedules →").click()
    expect(rows.first).to_have_attribute("data-schedule", QUEUES[2])
    page.get_by_role("link", name="More schedules →").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-schedule", QUEUES[4])
    expect(page.get_by_role("link", name="More schedules →")).to_have_count(0)
    page.get_by_role("link", name="« First").click()
    expect(rows.first).to_have_attribute("data-schedule", QUEUES[0])

    page.goto("/schedules?page_token=not-a-token")
    expect(page.locator("[data-error]")).to_contain_text("INVALID_ARGUMENT")
    page.get_by_role("link", name="First schedules").click()
    expect(rows).to_have_count(2)
