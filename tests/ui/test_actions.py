"""The schedules page's actions in a real Chromium, checked in the coordinator.

Each test looks at the coordinator after the click (through the client), not
only at what the page says. No worker node runs here: the tasks stay queued
unless a test moves them, so the counts are exactly the test's own.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from dtq_client import Client, TaskSpec
from tests.ui.conftest import fresh_queue

pytestmark = pytest.mark.timeout(30)


def test_schedules_page_updates_live_and_pauses_and_resumes(page: Page, client: Client) -> None:
    prefix = f"ui-{uuid.uuid4().hex[:8]}"
    ticker, nightly = f"{prefix}-ticker", f"{prefix}-nightly"
    spec = TaskSpec("echo", {}, queue=fresh_queue())
    client.create_schedule(ticker, spec, interval_s=1)
    client.create_schedule(nightly, spec, cron="0 3 * * *", paused=True)
    page.goto("/schedules")
    ticking = page.locator(f'tr[data-schedule="{ticker}"]')
    paused = page.locator(f'tr[data-schedule="{nightly}"]')
    expect(ticking.locator("[data-field=timing]")).to_have_text("every 1 s")
    expect(paused.locator("[data-field=timing]")).to_have_text("cron 0 3 * * *")
    expect(paused.locator("[data-field=paused]")).to_have_text("paused")
    expect(ticking.locator("[data-field=fired]")).to_have_text(re.compile(r"^[1-9]"))  # live

    ticking.get_by_role("button", name="Pause").click()
    flash = page.locator("#flash")
    expect(flash).to_have_text(f"schedule {ticker} paused")
    expect(ticking.locator("[data-field=paused]")).to_have_text("paused")
    assert client.get_schedule(ticker).paused

    paused.get_by_role("button", name="Resume").click()
    expect(flash).to_have_text(f"schedule {nightly} resumed")
    expect(paused.locator("[data-field=paused]")).to_have_text("no")
    assert not client.get_schedule(nightly).paused
