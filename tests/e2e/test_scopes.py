"""Own tasks and queue scopes on tokens (RELIABILITY section 3.1), against a real
coordinator process.

A submitter sees the tasks it submitted only, unless its entry says
``own_tasks = false``. A token with ``queues = [...]`` submits to, reads,
cancels and serves those queues only. Anything out of reach answers NOT_FOUND
as if it did not exist, and a refused submit stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtq_client import (
    AlreadyExists,
    Client,
    GroupNotFound,
    PermissionDenied,
    TaskNotFound,
    TaskSpec,
    TaskState,
)
from dtq_server.tokens import entry, new_token
from tests.harness import TokenServer, start_node, start_server_with_tokens

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    names = ("billing", "admin", "billing-node", "any-node", "app-a", "app-b", "follower")
    tokens = {name: new_token() for name in names}
    server = start_server_with_tokens(
        tmp_path_factory.mktemp("scopes"),
        entry("billing", "submitter", tokens["billing"], queues=["billing", "billing.slow"])
        + entry("app-a", "submitter", tokens["app-a"])
        + entry("app-b", "submitter", tokens["app-b"])
        + entry("follower", "submitter", tokens["follower"], own_tasks=False)
        + entry("admin", "admin", tokens["admin"])
        + entry("billing-node", "worker", tokens["billing-node"], queues=["billing"])
        + entry("any-node", "worker", tokens["any-node"]),
    )
    yield TokenServer(server, tokens)
    server.stop()


def _client(scoped: TokenServer, name: str) -> Client:
    return Client(scoped.server.address, token=scoped.tokens[name])


def _assert_out_of_reach(client: Client, task_id: str, group_id: str) -> None:
    """Get, cancel and watch of the task, and get of the group, answer NOT_FOUND."""
    with pytest.raises(TaskNotFound):
        client.get(task_id)
    with pytest.raises(TaskNotFound):
        client.cancel(task_id)
    with pytest.raises(TaskNotFound):
        next(iter(client.watch(task_id, timeout_s=5)))
    with pytest.raises(GroupNotFound):
        client.get_group(group_id)


def _stored(scoped: TokenServer, queue: str) -> int:
    with _client(scoped, "admin") as admin:
        return len(admin.list_tasks(queue=queue, limit=1000))


def test_a_scoped_submitter_submits_to_its_queues_only(scoped: TokenServer) -> None:
    with _client(scoped, "billing") as client:
        submitted = client.submit("echo", 1, queue="billing")
        assert client.get(submitted.id).queue == "billing"
        with pytest.raises(PermissionDenied, match="may not use queue 'default'"):
            client.submit("echo", 2)  # no queue named: the default queue, outside the scope
        with pytest.raises(PermissionDenied, match="'payroll'"):
            client.submit_many(
                [TaskSpec("echo", 3, queue="billing"), TaskSpec("echo", 4, queue="payroll")]
            )
    assert _stored(scoped, "default") == 0
    assert _stored(scoped, "payroll") == 0  # the batch's billing task was not stored either


def test_a_refused_submit_on_a_stream_refuses_that_task_alone(scoped: TokenServer) -> None:
    with _client(scoped, "billing") as client:
        with client.submitter() as submitter:
            before = submitter.submit("echo", "before", queue="billing.slow")
            refused = submitter.submit("echo", "refused", queue="payroll")
            after = submitter.submit("echo", "after", queue="billing.slow")
        assert before.result().created and after.result().created
        with pytest.raises(PermissionDenied, match="'payroll'"):
            refused.result()
    assert _stored(scoped, "payroll") == 0


def test_tasks_on_other_queues_do_not_exist_for_a_scoped_submitter(scoped: TokenServer) -> None:
    with _client(scoped, "admin") as admin:
        foreign = admin.submit("echo", "not yours", queue="payroll")
        group = admin.submit_group([TaskSpec("echo", i, queue="payroll") for i in range(2)])
    with _client(scoped, "billing") as client:
        own = client.submit_group([TaskSpec("echo", i, queue="billing") for i in range(2)])
        assert client.get_group(own.group_id).total == 2
        _assert_out_of_reach(client, foreign.id, group.group_id)
    with _client(scoped, "admin") as admin:
        assert admin.get(foreign.id).state is TaskState.QUEUED  # the cancel changed nothing


def test_a_scoped_worker_token_serves_its_queues_only(scoped: TokenServer, tmp_path: Path) -> None:
    token = {"DTQ_TOKEN": scoped.tokens["billing-node"]}
    outside = start_node(scoped.server.address, tmp_path, "outside", env=token)
    try:
        assert outside.wait(30) == 1  # the default queue: refused, and the node stops
    finally:
        outside.stop()
    assert "may not use queue 'default'" in outside.log()
    inside = start_node(scoped.server.address, tmp_path, "inside", "--queues", "billing", env=token)
    try:
        with _client(scoped, "billing") as client:
            done = client.submit_and_wait(TaskSpec("echo", "served", queue="billing"), 30)
        assert done.state is TaskState.SUCCEEDED and done.node_id == "inside"
    finally:
        inside.stop()


def test_a_submitter_sees_only_the_tasks_it_submitted(scoped: TokenServer) -> None:
    with _client(scoped, "app-a") as a:
        task = a.submit("echo", "a's", queue="shared", idempotency_key="shared-key")
        group = a.submit_group([TaskSpec("echo", i, queue="shared") for i in range(2)])
        assert a.get(task.id).submitted_by == "app-a"
        assert a.get_group(group.group_id).total == 2
    with _client(scoped, "app-b") as b:
        _assert_out_of_reach(b, task.id, group.group_id)
        # The same spec under the same key is not a retry of a's submit: it would
        # answer with a's task.
        with pytest.raises(AlreadyExists):
            b.submit("echo", "a's", queue="shared", idempotency_key="shared-key")
    with _client(scoped, "follower") as follower:  # own_tasks = false
        assert follower.get(task.id).submitted_by == "app-a"
        assert follower.get_group(group.group_id).total == 2
    with _client(scoped, "admin") as admin:
        seen = admin.get(task.id)
        assert seen.state is TaskState.QUEUED and seen.submitted_by == "app-a"
