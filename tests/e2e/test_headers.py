"""Task headers, end to end: submitted by the client, stored, and handed to the handler.

A real coordinator process and a real ``dtq-worker`` process running the
``headers`` handler (tests/handlers.py), which returns ``dict(ctx.headers)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtq_client import AlreadyExists, Client, NodeState, TaskSpec, TaskState
from tests.harness import start_node, start_server, wait_until

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tenant": "acme",
}


@pytest.fixture(params=["thread", "process"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """A client of a coordinator process with one node running tests.handlers in that isolation."""
    isolation: str = request.param
    server = start_server(tmp_path / "data")
    node = start_node(server.address, tmp_path, "headers", "--isolation", isolation, threads=2)
    try:
        with Client(server.address) as client:
            wait_until(
                lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()),
                20,
                what="the node to register",
            )
            yield client
    finally:
        node.stop()
        server.stop()


@pytest.mark.timeout(90)
def test_the_handler_gets_the_headers_the_client_submitted(client: Client) -> None:
    task = client.submit("headers", headers=HEADERS)
    assert task.headers == HEADERS, "the stored task has them"
    done = client.wait(task.id, timeout_s=20)
    assert done.state is TaskState.SUCCEEDED, done.last_error
    assert done.result_value() == HEADERS
    assert client.get(task.id).headers == HEADERS
    # A task without headers: its handler gets an empty mapping.
    bare = client.submit("headers")
    assert bare.headers == {}
    assert client.wait(bare.id, timeout_s=20).result_value() == {}


@pytest.mark.timeout(90)
def test_every_attempt_gets_the_headers(client: Client) -> None:
    task = client.submit("headers", {"succeed_on": 2}, headers=HEADERS, retry_backoff_s=0.05)
    done = client.wait(task.id, timeout_s=20)
    assert (done.state, done.attempt) == (TaskState.SUCCEEDED, 2), done.last_error
    assert done.result_value() == HEADERS


@pytest.mark.timeout(90)
@pytest.mark.parametrize("client", ["thread"], indirect=True)
def test_every_way_to_submit_carries_headers(client: Client) -> None:
    def via(name: str) -> dict[str, str]:
        return {"via": name, **HEADERS}

    ids = [client.submit_many([TaskSpec("headers", headers=via("submit_many"))])[0].task.id]
    ids += [t.id for t in client.submit_group([TaskSpec("headers", headers=via("group"))]).tasks]
    with client.submitter() as submitter:
        ack = submitter.submit("headers", headers=via("submitter")).result(timeout=20)
        spec_ack = submitter.submit_spec(TaskSpec("headers", headers=via("submit_spec")))
        ids += [ack.task_id, spec_ack.result(timeout=20).task_id]
    waited = client.submit_and_wait(
        TaskSpec("headers", headers=via("submit_and_wait")), timeout_s=20
    )
    assert waited.result_value() == via("submit_and_wait")
    results = [client.wait(task_id, timeout_s=20).result_value() for task_id in ids]
    assert results == [via(name) for name in ("submit_many", "group", "submitter", "submit_spec")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("client", ["thread"], indirect=True)
def test_a_resubmit_with_other_headers_is_a_retry(client: Client) -> None:
    # Headers describe a submission (its trace): a retry from another trace is a retry.
    first = client.submit("headers", idempotency_key="order-42", headers=HEADERS)
    for other in (dict(HEADERS), {"tenant": "other"}, {}):
        again = client.submit("headers", idempotency_key="order-42", headers=other)
        assert (again.id, again.headers) == (first.id, HEADERS)
    with pytest.raises(AlreadyExists):  # the work itself is still guarded
        client.submit("headers", {"other": "payload"}, idempotency_key="order-42")
