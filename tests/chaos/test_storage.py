"""D1-D4: storage faults under a real coordinator process (RELIABILITY.md 2.6).

D1 puts the database on an 8 MiB tmpfs (CI runs as root); without ``mount`` the
scenario is skipped with the reason, since the ``PRAGMA max_page_count``
fallback would need a coordinator option that does not exist. D3 has two
halves: the database vanishing (the data directory moved away and back), and
the database becoming read-only. chmod, a read-only remount and a read-only
bind mount cannot do the latter under root to a file the coordinator holds
open, so the data directory lives on a passthrough FUSE filesystem served by a
process of its own (tests/chaos/readonly_fs.py) that refuses every write with
EROFS while switched read-only; without /dev/fuse, mfusepy or libfuse (``make
fuse-lib``) that half is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from dtq.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from dtq_client import TaskState
from tests.chaos._b_helpers import (
    BRow,
    Cluster,
    finish,
    health,
    integrity,
    make_cluster_fixture,  # noqa: F401  (a fixture)
    row_count,
    row_fixture,  # noqa: F401  (a fixture)
    sql,
    start_server_with,
    wait_nodes,
)
from tests.chaos.conftest import Size
from tests.chaos.readonly_fs import (
    ReadOnlySwitch,
    read_only_switch_fixture,  # noqa: F401  (a fixture)
)
from tests.harness import wait_until

pytestmark = pytest.mark.chaos
MakeCluster = Callable[..., Cluster]
KiB = 1024
MiB = 1024 * KiB
BUSY_TIMEOUT_S = 2.0
"""The coordinator's SQLite ``busy_timeout``."""


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test (root only); skipped, with the reason, if not."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "D1 needs an 8 MiB tmpfs and `mount` failed "
            f"({mounted.stderr.strip() or mounted.returncode}); the max_page_count fallback "
            "needs a coordinator option that does not exist"
        )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def submit(
    stub: task_service_pb2_grpc.TaskServiceStub,
    key: str,
    payload: bytes,
    type_: str = "ok",
    delay_s: float = 0.0,
) -> tuple[grpc.StatusCode, str]:
    """One SubmitTask without retries: (status code, task id or error details)."""
    spec = task_pb2.TaskSpec(
        type=type_,
        payload=task_pb2.Payload(data=payload, content_type="application/json"),
        idempotency_key=key,
    )
    if delay_s:
        spec.delay.FromMilliseconds(round(delay_s * 1000))
    try:
        response = stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, response.task.id


# --- D1 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("D1")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("log_on", ["other_disk", "same_disk"])
def test_d1_disk_full(tmpfs: Path, tmp_path: Path, row: BRow, size: Size, log_on: str) -> None:
    """Also with the coordinator's log on the full disk: log lines it cannot write are
    dropped; they must not fail requests or kill the store's writer thread."""
    filler = tmpfs / "filler"
    # 5 of the 8 MiB: SQLite in WAL mode needs room for the WAL and for the checkpoint
    # that copies it back, so recovery needs real space freed, as it would in life.
    filler.write_bytes(b"\0" * 5 * MiB)
    log_path = tmp_path / "server.log" if log_on == "other_disk" else None
    server = start_server_with(tmpfs / "data", log_path=log_path)
    cluster = Cluster(tmp_path, server)
    try:
        cluster.node("a", threads=2)
        acked: list[str] = []
        with grpc.insecure_channel(server.address) as channel, cluster.client() as client:
            wait_nodes(client, "a")
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            blob = json.dumps({"pad": os.urandom(48 * KiB).hex()[: 64 * KiB]}).encode()
            # Submit until the disk is full.
            first_failure: tuple[grpc.StatusCode, str] | None = None
            for i in range(1000):
                code, detail = submit(stub, f"fill-{i}", blob)
                if code is not grpc.StatusCode.OK:
                    first_failure = (code, detail)
                    break
                acked.append(detail)
            assert first_failure is not None, "the disk never filled up"
            full_at = time.monotonic()
            assert first_failure[0] in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNAVAILABLE,
            ), first_failure
            wait_until(lambda: health(server.address) == "NOT_SERVING", 1.0, interval_s=0.05)
            not_serving_s = time.monotonic() - full_at
            # Keep submitting while full. An OK here is allowed only for a task that
            # really is stored (SQLite may reuse WAL space a failed commit already
            # allocated); health stays NOT_SERVING throughout.
            full_for_s = size.pick(2.0, 10.0)
            codes: list[str] = []
            acked_while_full: dict[str, str] = {}
            served = []
            while time.monotonic() < full_at + full_for_s:
                key = f"full-{len(codes)}"
                code, detail = submit(stub, key, blob)
                codes.append(code.name)
                if code is grpc.StatusCode.OK:
                    acked_while_full[key] = detail
                    acked.append(detail)
                else:
                    assert code in (
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.UNAVAILABLE,
                    ), (code, detail)
                served.append(health(server.address))
                time.sleep(0.2)
            assert set(served) == {"NOT_SERVING"}, served
            assert len(acked_while_full) < len(codes), "the disk was not full"
            # Free the space: recovery without a restart, within 5 s.
            filler.unlink()
            freed_at = time.monotonic()
            wait_until(lambda: health(server.address) == "SERVING", 5.0, interval_s=0.05)
            recovered_s = time.monotonic() - freed_at
            for i in range(100):
                code, detail = submit(stub, f"after-{i}", b"{}")
                assert code is grpc.StatusCode.OK, (code, detail)
                acked.append(detail)
            # Every task acknowledged before, during (none) and after the fault runs.
            wait_until(lambda: all(client.get(t).state is TaskState.SUCCEEDED for t in acked), 90)
        assert server.alive(), "recovered without a restart"
        stored = {
            key: task_id
            for key, task_id in sql(cluster.db, "SELECT idempotency_key, id FROM tasks")
            if key.startswith("full-")
        }
        assert stored == acked_while_full, "stored while full exactly what was acknowledged"
        finish(
            row,
            cluster,
            acked,
            server_pid=server.pid,
            first_failure=first_failure[0].name,
            not_serving_after_s=round(not_serving_s, 2),
            failed_while_full=len(codes) - len(acked_while_full),
            acked_while_full=len(acked_while_full),
            recovered_after_s=round(recovered_s, 2),
            recovery_limit_s=5.0,
        )
    finally:
        cluster.stop()


# --- D2 ---------------------------------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


@pytest.mark.scenario_id("D2")
@pytest.mark.timeout(120)
def test_d2_lock_contention(make_cluster: MakeCluster, row: BRow) -> None:
    cluster = make_cluster()
    server = cluster.server
    hold_s = 5.0
    with grpc.insecure_channel(server.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        acked = [submit(stub, f"before-{i}", b"{}", "nobody.runs.this")[1] for i in range(5)]
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(cluster.db), str(hold_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        waits: list[float] = []
        outcomes: list[str] = []
        served: list[str] = []
        # Only submits that end (after busy_timeout) well before the lock does.
        while time.monotonic() < locked_at + hold_s - BUSY_TIMEOUT_S - 0.5:
            started = time.monotonic()
            code, detail = submit(stub, f"locked-{len(outcomes)}", b"{}", "nobody.runs.this")
            waits.append(time.monotonic() - started)
            outcomes.append(code.name)
            assert code is grpc.StatusCode.UNAVAILABLE, (code, detail)
            served.append(health(server.address))
        assert outcomes, "no submit ran while the lock was held"
        assert set(served) == {"NOT_SERVING"}, served
        assert holder.stdout.readline().strip() == "released"
        holder.wait(10)
        released_at = time.monotonic()
        code, task_id = submit(stub, "after", b"{}", "nobody.runs.this")
        assert code is grpc.StatusCode.OK
        recovered_s = time.monotonic() - released_at
        acked.append(task_id)
        wait_until(lambda: health(server.address) == "SERVING", 5.0, interval_s=0.05)
        health_back_s = time.monotonic() - released_at
    keys = {r[0] for r in sql(cluster.db, "SELECT idempotency_key FROM tasks")}
    assert not any(k.startswith("locked-") for k in keys), "no ACK without a commit"
    assert all(abs(w - BUSY_TIMEOUT_S) < 1.5 for w in waits), waits
    assert recovered_s < 1.0
    with cluster.client() as client:
        for task_id in acked:
            client.cancel(task_id)
    finish(
        row,
        cluster,
        acked,
        server_pid=server.pid,
        unavailable=len(outcomes),
        waits_s=[round(w, 2) for w in waits],
        recovered_s=round(recovered_s, 3),
        health_back_s=round(health_back_s, 2),
    )


# --- D3 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("D3 vanish")
@pytest.mark.timeout(120)
def test_d3_database_vanishes_then_returns(make_cluster: MakeCluster, row: BRow) -> None:
    cluster = make_cluster()
    server = cluster.server
    data_dir = server.data_dir
    moved = data_dir.with_name(data_dir.name + "-moved")
    with grpc.insecure_channel(server.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        acked = [submit(stub, f"before-{i}", b"{}", "nobody.runs.this")[1] for i in range(5)]
        data_dir.rename(moved)  # the database vanishes from where the coordinator opened it
        try:
            code, detail = submit(stub, "gone", b"{}", "nobody.runs.this")
            assert code is grpc.StatusCode.UNAVAILABLE, (code, detail)
            wait_until(lambda: health(server.address) == "NOT_SERVING", 1.0, interval_s=0.05)
            assert server.alive()
        finally:
            moved.rename(data_dir)
        back_at = time.monotonic()
        wait_until(lambda: health(server.address) == "SERVING", 5.0, interval_s=0.05)
        recovered_s = time.monotonic() - back_at
        code, task_id = submit(stub, "back", b"{}", "nobody.runs.this")
        assert code is grpc.StatusCode.OK
        acked.append(task_id)
    keys = {r[0] for r in sql(cluster.db, "SELECT idempotency_key FROM tasks")}
    assert "gone" not in keys
    with cluster.client() as client:
        for task_id in acked:
            client.cancel(task_id)
    finish(row, cluster, acked, server_pid=server.pid, recovered_s=round(recovered_s, 2))


@pytest.mark.scenario_id("D3 read-only")
@pytest.mark.timeout(180)
def test_d3_database_becomes_read_only(
    read_only_switch: ReadOnlySwitch, tmp_path: Path, row: BRow, size: Size
) -> None:
    """The data directory turns read-only under a running coordinator and comes back.

    Twice: first mid-run, tasks running and queued, so results and leases cannot
    commit while read-only and must still count once access returns; then with the
    node idle and delayed tasks falling due, so that nothing but the coordinator's
    own retry can lease them afterwards. The coordinator's log is kept outside the
    mount (D1 covers a log that cannot be written).
    """
    fs = read_only_switch
    server = start_server_with(fs.path / "data", log_path=tmp_path / "server.log")
    assert server.alive(), server.log()
    cluster = Cluster(tmp_path, server)
    try:
        cluster.node("a", threads=2)
        with grpc.insecure_channel(server.address) as channel, cluster.client() as client:
            wait_nodes(client, "a")
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            work = json.dumps({"sleep": 0.1}).encode()
            acked = []
            for i in range(size.pick(40, 200)):
                code, detail = submit(stub, f"before-{i}", work)
                assert code is grpc.StatusCode.OK, (code, detail)
                acked.append(detail)
            # Mid-run: some tasks done, the node busy with others, the rest queued.
            wait_until(lambda: len(cluster.runs()) >= 10, 30, what="10 tasks started")
            unfinished = len(sql(cluster.db, "SELECT id FROM tasks WHERE state < 4"))
            assert unfinished, "every task finished before the fault: not mid-run"
            fs.read_only()
            ro_at = time.monotonic()
            first_failure = submit(stub, "ro-0", b"{}")
            assert first_failure[0] is grpc.StatusCode.UNAVAILABLE, first_failure
            wait_until(lambda: health(server.address) == "NOT_SERVING", 1.0, interval_s=0.05)
            not_serving_s = time.monotonic() - ro_at
            # Keep submitting while read-only: every one is refused, health stays down,
            # and reads (a task acknowledged before) are still answered.
            codes = [first_failure[0].name]
            served: list[str] = []
            while time.monotonic() < ro_at + size.pick(3.0, 10.0):
                code, detail = submit(stub, f"ro-{len(codes)}", b"{}")
                codes.append(code.name)
                assert code is grpc.StatusCode.UNAVAILABLE, (code, detail)
                served.append(health(server.address))
                assert client.get(acked[0]).id == acked[0]
                time.sleep(0.1)  # pacing, not synchronisation
            assert set(served) == {"NOT_SERVING"}, served
            assert server.alive(), "the coordinator survived the read-only store"
            refused = fs.read_write()
            rw_at = time.monotonic()
            assert refused.get("write"), f"SQLite never tried to write: {refused}"
            started_while_ro = sum(1 for line in cluster.lines() if ro_at <= line["ts"] < rw_at)
            wait_until(lambda: health(server.address) == "SERVING", 5.0, interval_s=0.05)
            recovered_s = time.monotonic() - rw_at
            # What was acknowledged before the fault finishes without any new submit to
            # wake the coordinator up: recovery alone must resume dispatch and results.
            wait_until(
                lambda: all(client.get(t).state is TaskState.SUCCEEDED for t in acked),
                60,
                interval_s=0.1,
                what="tasks acknowledged before the fault succeeded",
            )
            backlog_s = time.monotonic() - rw_at
            after = []
            for i in range(size.pick(20, 100)):
                code, detail = submit(stub, f"after-{i}", work)
                assert code is grpc.StatusCode.OK, (code, detail)
                after.append(detail)
            wait_until(lambda: all(client.get(t).state is TaskState.SUCCEEDED for t in after), 60)
            acked += after
            # A quiet fault: the node idle, only delayed tasks falling due while read-only.
            # Once writable, no result, submit or node event comes to wake the dispatcher:
            # its own retry of the failed lease must.
            quiet = []
            for i in range(4):
                code, detail = submit(stub, f"quiet-{i}", b"{}", delay_s=1.0)
                assert code is grpc.StatusCode.OK, (code, detail)
                quiet.append(detail)
            fs.read_only()
            wait_until(
                lambda: health(server.address) == "NOT_SERVING",
                5.0,
                interval_s=0.05,
                what="a lease that failed to commit",
            )
            assert fs.read_write().get("write")
            quiet_rw_at = time.monotonic()
            wait_until(
                lambda: all(client.get(t).state is TaskState.SUCCEEDED for t in quiet),
                10,
                interval_s=0.05,
                what="delayed tasks leased once writable again",
            )
            quiet_s = time.monotonic() - quiet_rw_at
            wait_until(lambda: health(server.address) == "SERVING", 5.0, interval_s=0.05)
            acked += quiet
        starts = {line["task_id"]: line["ts"] for line in cluster.lines()}
        assert all(starts[t] > quiet_rw_at for t in quiet), "the quiet fault was not quiet"
        assert server.alive(), "recovered without a restart"
        keys = {r[0] for r in sql(cluster.db, "SELECT idempotency_key FROM tasks")}
        stored_while_ro = sorted(k for k in keys if k.startswith("ro-"))
        assert not stored_while_ro, f"stored although refused: {stored_while_ro}"
        resumes = server.log().count("resumed=True")
        finish(
            row,
            cluster,
            acked,
            server_pid=server.pid,
            first_failure=first_failure[0].name,
            unfinished_at_switch=unfinished,
            not_serving_after_s=round(not_serving_s, 2),
            refused_while_ro=len(codes),
            started_while_ro=started_while_ro,
            node_resumes=resumes,
            refused_ops=",".join(f"{op}:{n}" for op, n in sorted(refused.items())),
            recovered_after_s=round(recovered_s, 2),
            recovery_limit_s=5.0,
            backlog_done_after_s=round(backlog_s, 2),
            quiet_done_after_s=round(quiet_s, 2),
        )
    finally:
        cluster.stop()


# --- D4 ---------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.scenario_id("D4")
@pytest.mark.timeout(90)
def test_d4_corrupt_database_at_start_up(make_cluster: MakeCluster, row: BRow) -> None:
    cluster = make_cluster()
    server = cluster.server
    with cluster.client() as client:
        for i in range(300):
            client.submit("nobody.runs.this", {"i": i, "pad": "x" * 500})
    server.signal(15)
    assert server.wait(30) == 0
    db = cluster.db
    rows = row_count(db)
    assert integrity(db) == "ok" and rows == 300
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    before = _digest(db)
    started = time.monotonic()
    refused = start_server_with(server.data_dir, name="corrupt")
    code = refused.wait(30)
    took_s = time.monotonic() - started
    log = refused.log()
    assert code != 0
    assert "refusing to start" in log, log
    assert "Traceback" not in log
    assert _digest(db) == before, "the corrupt file was left untouched"
    # Not a database at all: refused the same way.
    db.write_bytes(os.urandom(64 * KiB))
    garbage = _digest(db)
    refused = start_server_with(server.data_dir, name="garbage")
    assert refused.wait(30) != 0
    assert "refusing to start" in refused.log()
    assert _digest(db) == garbage
    message = next(line for line in log.splitlines() if "refusing to start" in line)
    row.row.tasks = row.row.acknowledged = rows
    row.row.passed = True
    message = message.replace(str(db), "<db>").strip()
    row.note(exit_code=code, exited_after_s=round(took_s, 2), message=message[:160])
