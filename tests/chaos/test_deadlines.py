"""RELIABILITY.md 2.7 C5: a client deadline shorter than the coordinator's work.

The coordinator pauses at a submit failpoint (``DTQ_FAILPOINT=NAME:sleep=S``, once)
for longer than the client's deadline. The client must get DEADLINE_EXCEEDED on
time, and the outcome must stay consistent whichever way the race went, as
gRPC's deadline guide warns it can ("for operations that change state,
DEADLINE_EXCEEDED may be returned even if the operation completed"):

- a batch (``SubmitTasks``) paused before its commit: the cancellation stops the
  work, nothing is stored, and the retry under the same keys creates the tasks;
- a single submit paused before its commit: it stays in its pile, which is
  stored for every caller in it (``dtq_server.piles``), so the call's work goes
  on; the retry is answered with the one task the key has;
- a single submit paused after its commit: the work must finish (the task is on
  disk and must be queued in memory too), and the retry finds it by its key.

Every time the task runs exactly once.
"""

from __future__ import annotations

import time

import grpc
import pytest

from dtq.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from dtq_client import TaskState
from tests.chaos.checker import Expect
from tests.chaos.conftest import Scenarios, Size
from tests.chaos.ledger import Entry
from tests.harness import wait_until

pytestmark = pytest.mark.chaos

LATE_S = 1.0
"""How much later than its deadline the client may hear DEADLINE_EXCEEDED."""
BEFORE, AFTER = "submit.before_commit", "submit.after_commit_before_reply"


def submit(address: str, key: str, timeout_s: float, batch: bool) -> tuple[str, bool]:
    """A raw SubmitTask (or a one-task SubmitTasks) of a witness task under ``key``, as any
    gRPC client makes it; (task id, created)."""
    spec = task_pb2.TaskSpec(
        type="witness",
        payload=task_pb2.Payload(data=b"{}", content_type="application/json"),
        idempotency_key=key,
    )
    with grpc.insecure_channel(address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        if batch:
            request = task_service_pb2.SubmitTasksRequest(tasks=[spec])
            answer = stub.SubmitTasks(request, timeout=timeout_s).results[0]
        else:
            answer = stub.SubmitTask(
                task_service_pb2.SubmitTaskRequest(task=spec), timeout=timeout_s
            )
        return answer.task.id, answer.created


@pytest.mark.scenario_id("C5")
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("rpc", "point"),
    [("SubmitTasks", BEFORE), ("SubmitTask", BEFORE), ("SubmitTask", AFTER)],
    ids=["batch-before-commit", "single-before-commit", "single-after-commit"],
)
def test_c5_client_deadline_shorter_than_the_coordinator(
    scenarios: Scenarios, size: Size, rpc: str, point: str
) -> None:
    deadline_s, pause_s = size.pick((1.0, 3.0), (2.0, 5.0))  # RELIABILITY: 2 s against 5 s
    run = scenarios.new(f"{rpc} {point}")
    cluster = run.start(env={"DTQ_FAILPOINT": f"{point}:sleep={pause_s:g}"})
    cluster.add_node("a")
    cluster.wait_nodes("a")
    key, batch = f"c5-{rpc}-{point}", rpc == "SubmitTasks"
    log = cluster.server.log

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        submit(cluster.address, key, deadline_s, batch)
    waited_s = time.monotonic() - started
    assert refused.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, refused.value
    assert deadline_s <= waited_s < deadline_s + LATE_S, f"DEADLINE_EXCEEDED after {waited_s:.2f} s"
    assert f"failpoint {point} pausing" in log(), "the coordinator paused"
    stopped = batch  # only a batch's own call runs its store; a single submit's pile goes on
    if stopped:
        wait_until(
            lambda: f"failpoint {point} pause cancelled" in log(),
            LATE_S,
            what="the cancellation to stop the batch before its commit",
        )
    # The client's retry, at once and under the same key, as dtq_client's own retry makes it.
    task_id, created = submit(cluster.address, key, 10.0, batch)
    run.ledger.record(Entry(key, task_id, True))
    if point == AFTER:
        assert not created, "the committed task is found by its key"
    elif stopped:
        assert created, "nothing was stored before the cancellation"
    if not stopped:
        wait_until(
            lambda: f"failpoint {point} pause over" in log(),
            pause_s + 5,
            what="the paused call to finish its work",
        )
    with cluster.client() as client:
        wait_until(
            lambda: client.get(task_id).state is TaskState.SUCCEEDED,
            pause_s + 10,
            what="the task to run",
        )
        stored = client.list_tasks(limit=10)
    assert [t.id for t in stored] == [task_id], "one task for the key"
    if stopped:
        assert f"failpoint {point} pause over" not in log()
    run.note(
        f"DEADLINE_EXCEEDED after {waited_s:.2f} s (deadline {deadline_s:g} s, pause "
        f"{pause_s:g} s); work {'stopped' if stopped else 'finished'}; retry created={created}"
    )
    run.finish(Expect(dup_bound=0))
