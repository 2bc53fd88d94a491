"""The dashboard in a real headless Chromium, against a real coordinator and node."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Dialog, Page, expect

from dtq_client import Client, TaskSpec, TaskState
from dtq_server.store import listing
from tests.harness import Proc, wait_until
from tests.ui.conftest import NODE_ID, SERVED_QUEUE, fresh_queue

pytestmark = pytest.mark.timeout(30)


def _updates(page: Page) -> int:
    return int(page.locator("#status").get_attribute("data-updates") or 0)


def _wait_for_refreshes(page: Page, count: int) -> None:
    """Wait until the page's script has swapped in ``count`` more live updates."""
    target = _updates(page) + count
    wait_until(lambda: _updates(page) >= target, 10, what=f"{count} refreshes of the page")


def test_overview_shows_queues_and_nodes_and_updates_without_reload(
    page: Page, client: Client, node: Proc
) -> None:
    queue = fresh_queue()
    client.submit("echo", {}, queue=queue)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto("/")
    navigations.clear()

    expect(page.locator("[data-field=health]")).to_have_text("SERVING")
    row = page.locator(f'tr[data-queue="{queue}"]')
    expect(row.locator("[data-field=queued]")).to_have_text("1")
    expect(row.locator("[data-field=paused]")).to_have_text("no")
    node_row = page.locator(f'tr[data-node="{NODE_ID}"]')
    expect(node_row.locator("[data-field=state]")).to_have_text("active")
    expect(node_row).to_contain_text(SERVED_QUEUE)
    expect(node_row).to_contain_text("echo")

    client.submit("echo", {}, queue=queue)
    client.submit("echo", {}, queue=queue)
    expect(row.locator("[data-field=queued]")).to_have_text("3")
    assert navigations == [], "the page reloaded instead of updating in place"


def test_task_list_filters_by_state_and_links_to_the_result(
    page: Page, client: Client, node: Proc
) -> None:
    good = client.submit("echo", {"answer": 42}, queue=SERVED_QUEUE)
    bad = client.submit("fail", {}, queue=SERVED_QUEUE, max_attempts=1)
    assert client.wait(good.id, timeout_s=10).state is TaskState.SUCCEEDED
    assert client.wait(bad.id, timeout_s=10).state is TaskState.FAILED

    page.goto(f"/tasks?queue={SERVED_QUEUE}")
    expect(page.locator(f'tr[data-task="{bad.id}"]')).to_be_visible()
    page.locator("select[name=state]").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"state=succeeded"))
    expect(page.locator(f'tr[data-task="{good.id}"]')).to_be_visible()
    expect(page.locator(f'tr[data-task="{bad.id}"]')).to_have_count(0)
    for state in page.locator("tr[data-task] [data-field=state]").all_inner_texts():
        assert state.strip() == "succeeded"

    page.locator(f'tr[data-task="{good.id}"] a').click()
    expect(page.locator("h1")).to_have_text(f"Task {good.id}")
    expect(page.locator("[data-field=state]")).to_have_text("succeeded")
    expect(page.locator("pre[data-value=result]")).to_contain_text('"answer": 42')
    expect(page.locator("pre[data-value=payload]")).to_contain_text('"answer": 42')

    page.goto(f"/tasks/{bad.id}")
    expect(page.locator("[data-field=error-type]")).to_have_text("ValueError")
    expect(page.locator("pre[data-value=traceback]")).to_contain_text("Traceback")
    expect(page.get_by_role("button", name="Retry task")).to_be_visible()


def test_task_list_pages_by_token_and_keeps_its_place(page: Page, client: Client) -> None:
    queue = fresh_queue()
    specs = [TaskSpec("echo", {"i": i}, queue=queue) for i in range(55)]
    ids = [result.task.id for result in client.submit_many(specs)]
    page.goto(f"/tasks?queue={queue}")
    rows = page.locator("tr[data-task]")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-task", ids[-1])  # newest first
    expect(page.get_by_role("link", name="Newest")).to_have_count(0)

    page.get_by_role("link", name="Older →").click()
    expect(page).to_have_url(re.compile(r"page_token="))
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_attribute("data-task", ids[4])
    expect(rows.last).to_have_attribute("data-task", ids[0])
    expect(page.get_by_role("link", name="Older →")).to_have_count(0)

    # The token marks a place, not an offset: a newer task does not shift this page.
    newest = client.submit("echo", {}, queue=queue).id
    _wait_for_refreshes(page, 2)
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_attribute("data-task", ids[4])

    page.get_by_role("link", name="Newest").click()
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-task", newest)


def test_a_rare_type_is_looked_for_through_empty_windows(
    page: Page, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A type filter's page looks at a window of the tasks kept: the view reads past
    empty windows before it shows none, and then says older ones are still to look at."""
    monkeypatch.setattr(listing, "SCAN_ROWS", 30)  # the coordinator runs in this process
    queue, rare, near = fresh_queue(), f"rare-{fresh_queue()}", f"near-{fresh_queue()}"
    far_id = client.submit(rare, {}, queue=queue).id
    client.submit_many([TaskSpec("echo", {}, queue=queue)] * 400)  # > 10 windows of 30
    near_id = client.submit(near, {}, queue=queue).id
    client.submit_many([TaskSpec("echo", {}, queue=queue)] * 100)  # < 10 windows
    rows = page.locator("tr[data-task]")

    page.goto(f"/tasks?type={near}")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task", near_id)

    page.goto(f"/tasks?type={rare}")
    expect(page.get_by_text("No match among the newest tasks looked at")).to_be_visible()
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task", far_id)


def test_a_token_from_other_filters_is_a_clear_400(page: Page, client: Client) -> None:
    other, queue = fresh_queue(), fresh_queue()
    client.submit_many([TaskSpec("echo", {}, queue=other) for _ in range(2)])
    task = client.submit("echo", {}, queue=queue)
    foreign = client.list_tasks_page(queue=other, page_size=1).next_page_token
    assert foreign

    response = page.goto(f"/tasks?queue={queue}&page_token={foreign}")
    assert response is not None
    assert response.status == 400
    expect(page.locator("[data-error]")).to_contain_text("start again from the newest tasks")
    expect(page.locator("input[name=queue]")).to_have_value(queue)  # the filters are kept

    page.get_by_role("link", name="Newest tasks").click()
    expect(page.locator(f'tr[data-task="{task.id}"]')).to_be_visible()

    response = page.goto(f"/tasks?queue={queue}&page_token=not%20a%20token")
    assert response is not None
    assert response.status == 400
    expect(page.locator("[data-error]")).to_contain_text("not one the coordinator gave")


def test_task_list_filters_by_a_header(page: Page, client: Client) -> None:
    queue = fresh_queue()
    mine = client.submit("echo", {}, queue=queue, headers={"tenant": "acme", "run": "1"})
    theirs = client.submit("echo", {}, queue=queue, headers={"tenant": "other"})
    page.goto(f"/tasks?queue={queue}")
    expect(page.locator("tr[data-task]")).to_have_count(2)

    page.locator("input[name=header]").fill("tenant=acme")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"header=tenant%3Dacme"))
    expect(page.locator(f'tr[data-task="{mine.id}"]')).to_be_visible()
    expect(page.locator(f'tr[data-task="{theirs.id}"]')).to_have_count(0)
    expect(page.locator("tr[data-task]")).to_have_count(1)

    for bad, says in (("tenant", "KEY=VALUE"), ("bad key=x", "INVALID_ARGUMENT")):
        page.locator("input[name=header]").fill(bad)
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("[data-error]")).to_contain_text(says)
        expect(page.locator("tr[data-task]")).to_have_count(0)


def test_a_group_page_counts_its_members_and_follows_them(page: Page, client: Client) -> None:
    queue = fresh_queue()  # no node serves it: the members stay queued until cancelled
    group = client.submit_group([TaskSpec("echo", {"i": i}, queue=queue) for i in range(3)])
    first, *others = group.tasks
    page.goto(f"/tasks/{first.id}")
    page.locator("[data-field=group] a").click()

    expect(page.locator("h1")).to_have_text(f"Group {group.group_id}")
    expect(page.locator("[data-field=state]")).to_have_text("running")
    expect(page.locator("[data-field=total]")).to_have_text("3")
    expect(page.locator("[data-field=pending]")).to_have_text("3")
    expect(page.locator("[data-member]")).to_have_count(3)

    for task in group.tasks:
        client.cancel(task.id)
    expect(page.locator("[data-field=state]")).to_have_text("cancelled")  # updated in place
    expect(page.locator("[data-field=cancelled]")).to_have_text("3")
    expect(page.locator("[data-field=pending]")).to_have_text("0")
    assert client.get_group(group.group_id).cancelled == 3

    page.locator(f'[data-member="{others[0].id}"]').click()
    expect(page.locator("h1")).to_have_text(f"Task {others[0].id}")

    response = page.goto("/groups/no-such-group")
    assert response is not None
    assert response.status == 404
    expect(page.locator("[data-error]")).to_contain_text("NOT_FOUND")


def test_cancelling_a_queued_task_from_its_page(page: Page, client: Client) -> None:
    task = client.submit("echo", {}, queue=fresh_queue())  # no node serves it: stays queued
    page.goto(f"/tasks/{task.id}")
    expect(page.locator("[data-field=state]")).to_have_text("queued")

    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator("#flash")).to_have_text(f"task {task.id} cancelled")
    expect(page.locator("[data-field=state]")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    assert client.get(task.id).state is TaskState.CANCELLED

    page.get_by_role("button", name="Retry task").click()
    expect(page.locator("#flash")).to_have_text(f"task {task.id} sent back to its queue")
    expect(page.locator("[data-field=state]")).to_have_text("queued")
    assert client.get(task.id).state is TaskState.QUEUED


def test_pausing_and_resuming_a_queue(page: Page, client: Client) -> None:
    queue = fresh_queue()
    client.submit("echo", {}, queue=queue)
    page.goto("/")
    row = page.locator(f'tr[data-queue="{queue}"]')

    row.get_by_role("button", name="Pause").click()
    expect(page.locator("#flash")).to_have_text(f"queue {queue} paused")
    expect(row.locator("[data-field=paused]")).to_have_text("paused")
    assert next(q for q in client.queues() if q.name == queue).paused

    row.get_by_role("button", name="Resume").click()
    expect(row.locator("[data-field=paused]")).to_have_text("no")
    assert not next(q for q in client.queues() if q.name == queue).paused


def test_task_data_is_shown_as_text_never_run(page: Page, client: Client) -> None:
    script = "<script>alert(1)</script>"
    image = '<img src=x onerror="alert(2)">'
    task = client.submit(
        "echo", {"html": script, "img": image}, queue=fresh_queue(), headers={"note": image}
    )
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    page.goto(f"/tasks/{task.id}")
    payload = page.locator("pre[data-value=payload]")
    expect(payload).to_contain_text(script)
    expect(payload).to_contain_text(image.replace('"', '\\"'))  # JSON-escaped quotes
    expect(page.locator('td[data-header="note"]')).to_have_text(image)
    _wait_for_refreshes(page, 2)  # the swapped-in fragments are text too
    expect(page.locator("#live script, #live img")).to_have_count(0)
    assert dialogs == []
