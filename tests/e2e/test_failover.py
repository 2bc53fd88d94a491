"""Two coordinator processes over one PostgreSQL database: one leads, the other
stands by without listening; nodes and clients name both. kill -9 of the leader
and an immediate PostgreSQL stop lose no acknowledged task (RELIABILITY D5, in
its active-standby form)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_client import Client, NodeState, RetryPolicy, TaskState
from dtq_server.store.postgres import LEADER_LOCK
from tests.commit_cut import CommitCutProxy
from tests.harness import (
    Proc,
    ServerProcess,
    free_loopback_port,
    start_node,
    start_server,
    wait_serving,
    wait_until,
)
from tests.postgres import PostgresServer, leader_backend, url_via

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def coordinator(root: Path, name: str, url: str, port: int, wait: bool) -> ServerProcess:
    return start_server(
        root / name, "--database-url", url, name=name, listen=f"127.0.0.1:{port}", wait=wait
    )


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
        return status


def executions(witness: Path) -> set[str]:
    return {json.loads(line)["task_id"] for line in witness.read_text().splitlines() if line}


def test_the_standby_takes_over_a_killed_leader_and_rides_out_a_database_stop(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, processes: list[Proc]
) -> None:
    port_a, port_b = free_loopback_port(), free_loopback_port()
    leader = coordinator(tmp_path, "a", postgres_url, port_a, wait=True)
    processes.append(leader)
    standby = coordinator(tmp_path, "b", postgres_url, port_b, wait=False)
    processes.append(standby)
    wait_until(lambda: "store.standby" in standby.log(), 20, what="b standing by")
    assert not standby.port_file.exists()  # a standby does not listen

    target = f"ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}"
    witness = tmp_path / "witness.log"
    for node_id in ("n1", "n2"):
        processes.append(
            start_node(target, tmp_path, node_id, env={"DTQ_TEST_WITNESS": str(witness)})
        )
    with Client(target) as client:
        wait_until(
            lambda: sum(n.state is NodeState.ACTIVE for n in client.nodes()) == 2, 20, what="nodes"
        )
        ids = [client.submit("witness", {"sleep": 0.01}).id for _ in range(300)]
        wait_until(lambda: len(executions(witness)) >= 30, 30, what="some tasks run")
        leader.kill9()

        wait_serving(standby, 30)
        assert standby.address == f"127.0.0.1:{port_b}"
        # The same client carries on through the target list; every task finishes.
        wait_until(
            lambda: all(client.get(i).state is TaskState.SUCCEEDED for i in ids),
            60,
            what="every task succeeded after the takeover",
        )
        assert executions(witness) >= set(ids)
        with psycopg.connect(postgres_url) as conn:
            epoch = conn.execute("SELECT leader_epoch FROM dtq_coordinator").fetchone()
        assert epoch == (2,)

        # The database goes away: health NOT_SERVING, submits UNAVAILABLE, no restart needed.
        postgres_server.stop_immediate()
        try:
            wait_until(
                lambda: health(standby.address) == health_pb2.HealthCheckResponse.NOT_SERVING,
                10,
                what="NOT_SERVING while the database is down",
            )
            with (
                grpc.insecure_channel(standby.address) as channel,
                pytest.raises(grpc.RpcError) as refused,
            ):
                spec = task_pb2.TaskSpec(type="witness", payload=task_pb2.Payload(data=b"{}"))
                request = task_service_pb2.SubmitTaskRequest(task=spec)
                TaskServiceStub(channel).SubmitTask(request, timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            postgres_server.resume()
        wait_until(
            lambda: health(standby.address) == health_pb2.HealthCheckResponse.SERVING,
            15,
            what="SERVING again once the database is back",
        )
        later = [client.submit("witness").id for _ in range(20)]
        wait_until(
            lambda: all(client.get(i).state is TaskState.SUCCEEDED for i in later),
            30,
            what="tasks after the outage",
        )
    assert "store.leadership_lost" not in standby.log()

    # A standby asked to stop (SIGTERM) exits at once, cleanly.
    spare = coordinator(tmp_path, "c", postgres_url, free_loopback_port(), wait=False)
    processes.append(spare)
    wait_until(lambda: "store.standby" in spare.log(), 20, what="c standing by")
    spare.signal(signal.SIGTERM)
    assert spare.wait(10) == 0


def serving(address: str) -> bool:
    try:
        return health(address) == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_a_leader_that_loses_the_lock_steps_down_and_leads_again_once_it_is_free(
    tmp_path: Path, postgres_url: str, processes: list[Proc]
) -> None:
    server = coordinator(tmp_path, "a", postgres_url, free_loopback_port(), wait=True)
    processes.append(server)
    witness = tmp_path / "witness.log"
    processes.append(
        start_node(server.address, tmp_path, "n1", env={"DTQ_TEST_WITNESS": str(witness)})
    )
    with Client(server.address) as client:
        wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
        first = [client.submit("witness").id for _ in range(20)]
        # Another coordinator wins the lock while this one is cut off from the database.
        with psycopg.connect(postgres_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (leader_backend(postgres_url),))
            other.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
            other.execute("UPDATE dtq_coordinator SET leader_epoch = leader_epoch + 1")
            wait_until(
                lambda: "coordinator.stepping_down" in server.log(), 15, what="stepping down"
            )
            # It stops listening (its nodes go looking for the leader) and stands by.
            wait_until(lambda: not serving(server.address), 15, what="the port closed")
            wait_until(lambda: server.log().count("store.standby") == 1, 15, what="standby")
        # The other one is gone: it leads again, from what the database holds.
        wait_until(lambda: serving(server.address), 30, what="serving again")
        assert server.log().count("store.leading ") == 2
        later = [client.submit("witness").id for _ in range(20)]
        wait_until(
            lambda: all(client.get(i).state is TaskState.SUCCEEDED for i in first + later),
            30,
            what="every task succeeded",
        )
    with psycopg.connect(postgres_url) as conn:
        epoch = conn.execute("SELECT leader_epoch FROM dtq_coordinator").fetchone()
    assert epoch == (3,)


def test_a_node_backs_off_while_its_results_cannot_be_committed(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, processes: list[Proc]
) -> None:
    """A result that fails to commit ends the node's stream; the node registers again at
    once and resends it, which fails again. Without a pause after such quick breaks it
    did that in a tight loop: 2,661 times in a 5 s outage (each a new database connect)."""
    server = coordinator(tmp_path, "a", postgres_url, free_loopback_port(), wait=True)
    processes.append(server)
    node = start_node(server.address, tmp_path, "n1")
    processes.append(node)
    with Client(server.address) as client:
        wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
        task = client.submit("witness", {"sleep": 0.5})
        wait_until(lambda: client.get(task.id).state is TaskState.RUNNING, 10, what="running")
        postgres_server.stop_immediate()
        try:
            wait_until(lambda: "stream.broken" in node.log(), 10, what="the result refused")
            time.sleep(3.0)  # the outage lasts 3 s: the window is the test
        finally:
            postgres_server.resume()
        breaks = node.log().count("stream.broken")
        assert breaks <= 20, f"{breaks} stream breaks in a 3 s outage"
        # The result held by the node is committed once the database is back.
        wait_until(lambda: client.get(task.id).state is TaskState.SUCCEEDED, 30, what="the result")
        assert client.get(task.id).attempt == 1


def test_a_task_stored_by_a_commit_whose_answer_was_lost_still_runs(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, processes: list[Proc]
) -> None:
    """The database commits a submit and the connection drops before the coordinator
    reads the answer: the client is told UNAVAILABLE and resubmits under the same
    key, which finds the stored task. The coordinator, which could not know the task
    was stored, leads again from a fresh start, so the task is on its board and runs.
    (Leading on instead left it stored, QUEUED and never dispatched.)"""
    with CommitCutProxy(postgres_server.port) as proxy:
        via_proxy = url_via(postgres_url, proxy.address)
        server = coordinator(tmp_path, "a", via_proxy, free_loopback_port(), wait=True)
        processes.append(server)
        processes.append(start_node(server.address, tmp_path, "n1"))
        patient = RetryPolicy(attempts=100, max_backoff_s=0.5, total_s=30)
        with Client(server.address, retry=patient) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            proxy.arm(b"INSERT INTO tasks")  # the first task insert on this connection
            task = client.submit("echo", "after the cut")
            assert proxy.cut.is_set()
            assert "store.commit_unanswered" in server.log()
            done = client.wait(task.id, timeout_s=30)
            assert (done.state, done.result_value(), done.attempt) == (
                TaskState.SUCCEEDED,
                "after the cut",
                1,
            )
    assert server.log().count("store.leading ") == 2
    with psycopg.connect(postgres_url) as conn:
        count = conn.execute("SELECT count(*) FROM tasks").fetchone()
        epoch = conn.execute("SELECT leader_epoch FROM dtq_coordinator").fetchone()
    assert (count, epoch) == ((1,), (2,))
