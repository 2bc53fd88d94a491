"""Shared pieces of the handler, bad-input, storage and clock scenarios.

A :class:`Cluster` is one coordinator process plus the node processes a test
starts, all on loopback, with a witness file the ``tests.chaos._b_handlers``
handlers append to. Everything it started is SIGKILLed at the end of the test.
The ``size`` fixture (tests/chaos/conftest.py) says whether a scenario runs at
``small`` (CI) or ``full`` (``make chaos``, ``DTQ_CHAOS_SIZE=full``) size.

Each test records its row in the table ``make chaos`` prints (``row`` fixture,
tests/chaos/report.py) and ends with :func:`finish`, which checks what every
scenario here must end with: no acknowledged task lost (I1), duplicates
within the bound (I4: executions not explained by a recorded failure, at most
one per interrupted lease, and no lease run twice), the coordinator alive (the
same process unless the test killed it) and SERVING (I6), and ``PRAGMA
integrity_check`` ok (I7).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtq_client import Client, NodeState, RetryPolicy, Task, TaskTerminal
from tests.chaos.report import ROWS, Row
from tests.harness import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TIMEOUT_S,
    ROOT,
    Proc,
    ServerProcess,
    python_env,
    start_node,
    wait_until,
)

HANDLERS = "tests.chaos._b_handlers:registry"
T = HEARTBEAT_TIMEOUT_S
"""The heartbeat timeout of every coordinator here; the redelivery bound is T + 1 s."""
NO_RETRY = RetryPolicy(attempts=1)
"""For calls whose exact status a scenario asserts."""


def start_server_with(
    data_dir: Path,
    *extra_args: str,
    name: str = "server",
    listen: str = "127.0.0.1:0",
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    wait_s: float = 20.0,
    log_path: Path | None = None,
) -> ServerProcess:
    """Like ``tests.harness.start_server``, with extra environment, a command prefix
    (e.g. ``faketime``) and the log file elsewhere; returns even if the server exits at
    once (check ``alive()``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = log_path or data_dir / f"{name}.log"
    args = [
        *prefix, sys.executable, "-m", "dtq_server", "--listen", listen,
        "--data-dir", str(data_dir), "--port-file", str(port_file),
        "--heartbeat-interval", str(HEARTBEAT_INTERVAL_S),
        "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S), "--log-level", "debug", *extra_args,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            args, stdout=log, stderr=log, env=python_env(**(env or {})), cwd=ROOT
        )
    proc = ServerProcess(popen, log_path, data_dir=data_dir)
    try:
        wait_until(lambda: port_file.exists() or not proc.alive(), wait_s, what="port file")
    except AssertionError:
        proc.stop()
        raise
    if proc.alive():
        proc.address = port_file.read_text().strip()
    return proc


@dataclass
class Cluster:
    """One coordinator and the nodes a test starts; see the module docstring."""

    dir: Path
    server: ServerProcess
    procs: list[Proc] = field(default_factory=list)

    @property
    def witness(self) -> Path:
        return self.dir / "witness.log"

    @property
    def db(self) -> Path:
        return self.server.data_dir / "dtq.sqlite3"

    def node(
        self,
        node_id: str,
        *args: str,
        threads: int = 4,
        module: str = HANDLERS,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start a node process running the chaos handlers."""
        extra = {"DTQ_TEST_WITNESS": str(self.witness), "DTQ_NODE_ID": node_id, **(env or {})}
        node = start_node(
            self.server.address, self.dir, node_id, *args, module=module, threads=threads,
            env=extra,
        )  # fmt: skip
        self.procs.append(node)
        return node

    def client(self, **kwargs: Any) -> Client:
        return Client(self.server.address, **kwargs)

    def lines(self) -> list[dict[str, Any]]:
        """Every witness line so far."""
        if not self.witness.exists():
            return []
        return [json.loads(line) for line in self.witness.read_text().splitlines() if line]

    def runs(self) -> Counter[str]:
        """Executions per task id."""
        return Counter(line["task_id"] for line in self.lines())

    def stop(self) -> None:
        for proc in [*self.procs, self.server]:
            proc.stop()


@pytest.fixture(name="make_cluster")
def make_cluster_fixture(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start a coordinator (with extra CLI args) in a Cluster; everything dies at the end."""
    made: list[Cluster] = []

    def make(*server_args: str, **kwargs: Any) -> Cluster:
        server = start_server_with(tmp_path / f"data{len(made)}", *server_args, **kwargs)
        if not server.alive():
            raise AssertionError(f"server exited {server.popen.returncode}:\n{server.log()}")
        cluster = Cluster(tmp_path, server)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def terminal(client: Client, task_id: str, timeout_s: float = 60) -> Task:
    """The task once it is terminal (polled); fails after ``timeout_s``."""

    def done() -> Task | None:
        task = client.get(task_id)
        return task if task.is_terminal else None

    found = wait_until(done, timeout_s, what=f"{task_id} terminal")
    assert found is not None
    return found


def wait_nodes(client: Client, *node_ids: str, timeout_s: float = 30) -> None:
    """Until every node in ``node_ids`` has an ACTIVE session."""
    wait_until(
        lambda: {n.node_id for n in client.nodes() if n.state is NodeState.ACTIVE} >= set(node_ids),
        timeout_s,
        what=f"nodes {node_ids} active",
    )


def health(address: str, service: str = "", timeout_s: float = 2.0) -> str:
    """The coordinator's health status name, or the gRPC code name if the call failed."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_exists(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def sql(db: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a read-only query on a (possibly live) coordinator database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(query, params))
    finally:
        conn.close()


def row_count(db: Path) -> int:
    return int(sql(db, "SELECT count(*) FROM tasks")[0][0])


def integrity(db: Path) -> str:
    return str(sql(db, "PRAGMA integrity_check")[0][0])


@dataclass
class BRow:
    """A scenario's row in the chaos table, and whether the scenario was skipped."""

    row: Row
    skipped: bool = False

    def note(self, **figures: Any) -> None:
        """Add the scenario's figures under its row (and print them)."""
        text = " ".join(f"{k}={v}" for k, v in figures.items())
        print(f"\n[{self.row.scenario}] {text}", flush=True)
        self.row.notes.append(text)

    def skip(self, reason: str) -> None:
        """Skip the scenario, saying why (listed in the chaos summary, never silent)."""
        self.skipped = True
        pytest.skip(reason)


@pytest.fixture(name="row")
def row_fixture(request: pytest.FixtureRequest, size: Any) -> Iterator[BRow]:
    """This test's row (``scenario_id`` marker, else the test name), recorded at the end."""
    marker = request.node.get_closest_marker("scenario_id")
    name = marker.args[0] if marker else request.node.name
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and marker is not None:
        name += f"/{callspec.id}"
    row = BRow(Row(f"{name} ({size.name})"))
    yield row
    if not row.skipped:
        if not row.row.passed:
            row.row.notes.append("did not reach its final checks (see the test's error)")
        request.config.stash.setdefault(ROWS, []).append(row.row)


def cancel_unfinished(cluster: Cluster) -> int:
    """Cancel every task still waiting (types no node serves, on purpose); returns how many."""
    ids = [row[0] for row in sql(cluster.db, "SELECT id FROM tasks WHERE state < 4")]
    with cluster.client() as client:
        for task_id in ids:
            with contextlib.suppress(TaskTerminal):  # it ended by itself since the read
                client.cancel(task_id)
    return len(ids)


def finish(
    row: BRow,
    cluster: Cluster,
    task_ids: Iterable[str] | None = None,
    *,
    redelivery_s: float | None = None,
    limit_s: float | None = None,
    server_pid: int | None = None,
    finish_within_s: float = 60.0,
    **figures: Any,
) -> None:
    """The checks every scenario here ends with (module docstring); fills and passes the row.

    ``task_ids`` are the acknowledged tasks; by default every stored task (the
    scenarios here submit without faults on the submit path), which get
    ``finish_within_s`` to become terminal.
    """
    problems: list[str] = []
    server = cluster.server
    if task_ids is None:
        wait_until(
            lambda: not sql(cluster.db, "SELECT 1 FROM tasks WHERE state < 4 LIMIT 1"),
            finish_within_s,
            interval_s=0.1,
            what="every task terminal",
        )
    states = {
        task_id: (state, failures, attempt)
        for task_id, state, failures, attempt in sql(
            cluster.db, "SELECT id, state, failures, attempt FROM tasks"
        )
    }
    wanted = list(states) if task_ids is None else list(dict.fromkeys(task_ids))
    lost = [t for t in wanted if t not in states or states[t][0] < 4]  # 4+: terminal
    if lost:
        problems.append(f"I1: {len(lost)} acknowledged tasks not terminal: {lost[:3]}")
    runs = cluster.runs()
    duplicates = sum(max(0, runs[t] - 1 - states[t][1]) for t in wanted if t in states and runs[t])
    # Every lease beyond the first that no handler failure explains was interrupted
    # (node death, release, expiry): each may cost one more execution, no more.
    bound = sum(max(0, states[t][2] - 1 - states[t][1]) for t in wanted if t in states)
    if duplicates > bound:
        problems.append(f"I4: {duplicates} duplicate executions > {bound} interrupted leases")
    per_lease = Counter((line["task_id"], line["attempt"]) for line in cluster.lines())
    twice = [lease for lease, n in per_lease.items() if n > 1]
    if twice:
        problems.append(f"I4: leases executed more than once: {twice[:3]}")
    if server_pid is not None and server.pid != server_pid:
        problems.append("I6: the coordinator process changed")
    if not server.alive() or health(server.address) != "SERVING":
        problems.append("I6: the coordinator is not alive and SERVING")
    check = integrity(cluster.db)
    if check != "ok":
        problems.append(f"I7: integrity_check: {check}")
    if redelivery_s is not None and limit_s is not None and redelivery_s > limit_s:
        problems.append(f"redelivery took {redelivery_s:.2f} s > {limit_s:.2f} s")
    r = row.row
    r.tasks = len(states)
    r.acknowledged = len(wanted)
    r.lost = len(lost)
    r.duplicates = duplicates
    r.bound = bound
    r.redelivery_s = redelivery_s
    r.redelivery_limit_s = limit_s
    if figures:
        row.note(**figures)
    r.passed = not problems
    r.notes += [f"VIOLATION {p}" for p in problems]
    assert not problems, problems


def elapsed_until(predicate: Callable[[], Any], timeout_s: float, what: str = "") -> float:
    """Seconds until ``predicate()`` holds (polled every 20 ms); fails after ``timeout_s``."""
    started = time.monotonic()
    wait_until(predicate, timeout_s, what=what)
    return time.monotonic() - started
