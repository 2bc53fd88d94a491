"""The overview's and schedules page's actions in a real Chromium, checked in the coordinator.

Each test looks at the coordinator after the click (through the client), not
only at what the page says. No worker node runs here: the tasks stay queued
unless a test moves them, so the counts are exactly the test's own.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Dialog, Page, Request, expect

from dtq_client import Client, NodeState, TaskSpec, TaskState
from tests.harness import InProcessCoordinator, RawNode, wait_until
from tests.ui.conftest import fresh_queue

pytestmark = pytest.mark.timeout(30)


class Dialogs:
    """Answers the page's ``confirm()`` questions from a script, and counts its POSTs."""

    def __init__(self, page: Page, answers: list[bool]) -> None:
        self._answers = iter(answers)
        self.questions: list[str] = []
        self.posts: list[str] = []
        page.on("dialog", self._answer)
        page.on("request", self._record)

    def _answer(self, dialog: Dialog) -> None:
        self.questions.append(dialog.message)
        if next(self._answers):
            dialog.accept()
        else:
            dialog.dismiss()

    def _record(self, request: Request) -> None:
        if request.method == "POST":
            self.posts.append(request.url)


def _states(client: Client, task_ids: list[str]) -> set[TaskState]:
    return {client.get(task_id).state for task_id in task_ids}


def test_bulk_actions_on_a_queue_ask_first_and_touch_only_that_queue(
    page: Page, client: Client
) -> None:
    queue = fresh_queue()
    # No node starts them within 10 ms, so the coordinator fails them: failed tasks, no node.
    expiring = TaskSpec("echo", {}, queue=queue, schedule_to_start_timeout_s=0.01)
    failed = [r.task.id for r in client.submit_many([expiring, expiring])]
    queued = [r.task.id for r in client.submit_many([TaskSpec("echo", {}, queue=queue)] * 2)]
    bystander = client.submit("echo", {}, queue=fresh_queue())
    wait_until(lambda: _states(client, failed) == {TaskState.FAILED}, 10, what="failed tasks")
    dialogs = Dialogs(page, [False, True, True])
    page.goto("/")
    row = page.locator(f'tr[data-queue="{queue}"]')
    expect(row.locator("[data-field=failed]")).to_have_text("2")

    row.get_by_role("button", name="Retry failed").click()  # answered no: nothing is sent
    row.get_by_role("button", name="Retry failed").click()
    flash = page.locator("#flash")
    expect(flash).to_have_text(f"queue {queue}: 2 failed tasks sent back to the queue")
    assert len(dialogs.posts) == 1
    assert dialogs.questions[0] == dialogs.questions[1]
    assert f"failed task of queue {queue} (2 now)" in dialogs.questions[0]
    assert _states(client, failed) == {TaskState.QUEUED}
    expect(row.locator("[data-field=queued]")).to_have_text("4")
    expect(row.get_by_role("button", name="Retry failed")).to_have_count(0)  # none failed now

    row.get_by_role("button", name="Cancel queued").click()
    expect(flash).to_have_text(f"queue {queue}: 4 queued tasks cancelled")
    assert f"queued task of queue {queue} (4 now)" in dialogs.questions[2]
    assert _states(client, failed + queued) == {TaskState.CANCELLED}
    assert client.get(bystander.id).state is TaskState.QUEUED
    expect(row.locator("[data-field=cancelled]")).to_have_text("4")
    expect(row.get_by_role("button", name="Cancel queued")).to_have_count(0)


def test_draining_a_node_from_the_overview(
    page: Page, client: Client, ui_coordinator: InProcessCoordinator
) -> None:
    node_id = f"raw-{uuid.uuid4().hex[:8]}"
    # A node speaking the protocol by hand, serving a queue nobody submits to.
    node = RawNode(ui_coordinator.address, node_id, queues=(fresh_queue(),), auto_heartbeat=True)
    try:
        dialogs = Dialogs(page, [True])
        page.goto("/")
        row = page.locator(f'tr[data-node="{node_id}"]')
        expect(row.locator("[data-field=state]")).to_have_text("active")

        row.get_by_role("button", name="Drain").click()
        expect(page.locator("#flash")).to_contain_text(f"node {node_id} is draining")
        assert f"Drain node {node_id}?" in dialogs.questions[0]
        assert node.next("drain").HasField("drain")  # the coordinator told the node
        assert {n.state for n in client.nodes() if n.node_id == node_id} == {NodeState.DRAINING}
        expect(row.locator("[data-field=state]")).to_have_text("draining")
        expect(row.get_by_role("button", name="Drain")).to_have_count(0)
    finally:
        node.close()


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


def test_a_schedule_that_cannot_fire_is_marked_failing_with_the_reason(
    page: Page, client: Client
) -> None:
    name = f"ui-{uuid.uuid4().hex[:8]}-orphaned"
    spec = TaskSpec("echo", {}, queue=fresh_queue(), depends_on=[str(uuid.uuid4())])
    client.create_schedule(name, spec, interval_s=1)  # no such task: no tick can fire
    page.goto("/schedules")
    badge = page.locator(f'tr[data-schedule="{name}"] [data-field=error]')
    expect(badge).to_have_text("failing")  # live: the first tick fails a second later
    expect(badge).to_have_attribute("title", re.compile(r"no task with that id \(at 20"))
    client.delete_schedule(name)
