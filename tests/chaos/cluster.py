"""A chaos cluster: one coordinator process, worker-node processes, fault proxies, and faults.

Everything is real: ``dtq-server`` and ``dtq-worker`` processes on loopback,
the SQLite file on disk (or, with ``database_url``, a PostgreSQL database that
several coordinators share: one leads, the others stand by). The cluster
records every fault it injects (when, and which nodes it cut off) so the
checker can tell which leases a fault interrupted and how fast they came back.
The coordinator logs JSON (``--log-format json``) so its lease events can be
read back (:mod:`tests.chaos.evidence`); each incarnation writes its own log
file.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtq_client import Client, NodeState
from tests.chaos import evidence
from tests.chaos.proxy import FaultProxy
from tests.chaos.resources import Usage, usage
from tests.harness import Proc, ServerProcess, start_node, start_server, wait_until

LEASE_EVENTS = frozenset({"lease.granted", "lease.ended", "lease.lost", "lease.returned"})


@dataclass(frozen=True)
class Fault:
    """One injected fault: what, when (``time.monotonic()``), and whose leases it cut off."""

    kind: str
    at: float
    wall: float
    """``time.time()`` at the fault, to compare with the processes' log timestamps."""
    nodes: frozenset[str] | None
    """The nodes cut off from the coordinator; None means all (the coordinator itself)."""
    in_flight: int = 0
    """For coordinator crashes: tasks LEASED/RUNNING in the snapshot taken after it."""


@dataclass
class _NodeSpec:
    args: tuple[str, ...]
    threads: int
    via_proxy: bool
    restarts: int = 0


@dataclass
class ChaosCluster:
    """See the module docstring. Call :meth:`close` (the scenario fixture does)."""

    root: Path
    server_args: tuple[str, ...] = ()
    database_url: str | None = None
    """Keep the queue in this PostgreSQL database instead of the SQLite file."""
    target: str | None = None
    """The gRPC target nodes and clients use instead of the current coordinator's address
    (several coordinators over PostgreSQL: ``ipv4:127.0.0.1:PA,127.0.0.1:PB``)."""
    servers: list[ServerProcess] = field(default_factory=list)
    nodes: dict[str, Proc] = field(default_factory=dict)
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    baseline: Usage | None = None
    """The coordinator's fds and RSS once warmed up (I6 compares the end with it)."""
    _specs: dict[str, _NodeSpec] = field(default_factory=dict)
    _old_nodes: list[Proc] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def db(self) -> Path:
        return self.data_dir / evidence.DB_NAME

    @property
    def store(self) -> evidence.Store:
        """Where the tasks are: the PostgreSQL URL, else the SQLite file."""
        return self.database_url if self.database_url is not None else self.db

    @property
    def witness(self) -> Path:
        return self.root / "witness.log"

    @property
    def server(self) -> ServerProcess:
        """The current coordinator incarnation (over PostgreSQL: the last one started)."""
        return self.servers[-1]

    @property
    def address(self) -> str:
        return self.target if self.target is not None else self.server.address

    @property
    def coordinator_killed(self) -> bool:
        """True once a coordinator incarnation died (kill -9 or a failpoint)."""
        if self.database_url is not None:  # several coordinators run at once
            return any(not s.alive() for s in self.servers)
        return len(self.servers) > 1

    # --- coordinator --------------------------------------------------------------------

    def start_server(
        self, env: dict[str, str] | None = None, *, listen: str | None = None, wait: bool = True
    ) -> ServerProcess:
        """Start a coordinator incarnation; later ones bind the first one's address.

        ``listen`` binds another address (a second coordinator over PostgreSQL);
        ``wait=False`` returns before it serves (a standby serves once it leads).
        """
        if listen is None:
            listen = self.servers[0].address if self.servers else "127.0.0.1:0"
        database = () if self.database_url is None else ("--database-url", self.database_url)
        server = start_server(
            self.data_dir,
            "--log-format", "json", *database, *self.server_args,
            name=f"server{len(self.servers)}",
            listen=listen,
            env=env,
            wait=wait,
        )  # fmt: skip
        self.servers.append(server)
        return server

    def kill_coordinator(self, server: ServerProcess | None = None) -> Fault:
        """SIGKILL the coordinator (or ``server``, one of several), snapshot, record the fault."""
        at = time.monotonic()
        (server or self.server).kill9()
        return self._crashed("coordinator.kill9", at)

    def await_crash(self, timeout_s: float = 30) -> Fault:
        """Wait for the coordinator to die by itself (a failpoint), then snapshot it."""
        server = self.server
        try:
            wait_until(lambda: not server.alive(), timeout_s, what="the coordinator's crash")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        return self._crashed("coordinator.crash", time.monotonic())

    def _crashed(self, kind: str, at: float) -> Fault:
        if self.database_url is not None:
            # Nothing to copy: the database outlives the coordinator. Read at once,
            # before a standby taking over changes it (a lease it grants meanwhile only
            # loosens the bound this count feeds).
            in_flight = len(evidence.in_flight(self.database_url))
        else:
            snapshot = evidence.snapshot_db(self.data_dir, self.root / f"crash{len(self.faults)}")
            in_flight = len(evidence.in_flight(snapshot))
        fault = Fault(kind, at, _wall(at), None, in_flight=in_flight)
        self.faults.append(fault)
        return fault

    def snapshot(self, fault: Fault) -> Path:
        """The database copy taken after ``fault`` (a coordinator crash)."""
        return self.root / f"crash{self.faults.index(fault)}" / evidence.DB_NAME

    def restart_coordinator(self, env: dict[str, str] | None = None) -> ServerProcess:
        """Start the next incarnation on the same address and files."""
        assert not self.server.alive(), "restart only a dead coordinator"
        return self.start_server(env)

    def usage(self) -> Usage:
        """The current coordinator's fds and RSS."""
        return usage(self.server.pid)

    def mark_baseline(self) -> Usage:
        """Record the coordinator's fds and RSS now, as I6's baseline."""
        self.baseline = self.usage()
        return self.baseline

    # --- nodes --------------------------------------------------------------------------

    def add_node(self, node_id: str, *args: str, threads: int = 4, via_proxy: bool = False) -> Proc:
        """Start a ``dtq-worker`` running tests.handlers; optionally through its own proxy."""
        self._specs[node_id] = _NodeSpec(args, threads, via_proxy)
        if via_proxy:
            self.proxies[node_id] = FaultProxy(self.address).start()
        return self._launch(node_id)

    def _launch(self, node_id: str) -> Proc:
        spec = self._specs[node_id]
        address = self.proxies[node_id].address if spec.via_proxy else self.address
        node = start_node(
            address,
            self.root,
            node_id,
            "--log-format",
            "json",
            *spec.args,
            threads=spec.threads,
            env={"DTQ_TEST_WITNESS": str(self.witness), "DTQ_NODE_ID": node_id},
        )
        self.nodes[node_id] = node
        return node

    def restart_node(self, node_id: str) -> Proc:
        """Start ``node_id`` again (as its service manager would), same arguments."""
        old = self.nodes[node_id]
        assert not old.alive(), "restart only a dead node"
        self._old_nodes.append(old)
        self._specs[node_id].restarts += 1
        return self._launch(node_id)

    def kill_node(self, node_id: str) -> Fault:
        """SIGKILL a node."""
        at = time.monotonic()
        self.nodes[node_id].kill9()
        return self._record("node.kill9", at, node_id)

    def pause_node(self, node_id: str) -> Fault:
        """SIGSTOP a node (resume it with :meth:`resume_node`)."""
        at = time.monotonic()
        self.nodes[node_id].signal(signal.SIGSTOP)
        return self._record("node.sigstop", at, node_id)

    def resume_node(self, node_id: str) -> float:
        """SIGCONT a paused node; returns when."""
        self.nodes[node_id].signal(signal.SIGCONT)
        return time.monotonic()

    def blackhole(self, node_id: str, one_way: Any = None) -> Fault:
        """Black-hole the node's proxy (both ways, or ``one_way`` Direction)."""
        at = time.monotonic()
        proxy = self.proxies[node_id]
        if one_way is None:
            proxy.blackhole()
        else:
            proxy.blackhole_one_way(one_way)
        return self._record(
            f"proxy.blackhole{'' if one_way is None else '.' + one_way}", at, node_id
        )

    def reset(self, node_id: str) -> Fault:
        """RST every connection through the node's proxy."""
        at = time.monotonic()
        self.proxies[node_id].reset()
        return self._record("proxy.reset", at, node_id)

    def heal(self, node_id: str) -> float:
        """Back to ``pass``; returns when."""
        self.proxies[node_id].pass_through()
        return time.monotonic()

    def record_fault(self, kind: str, at: float, *node_ids: str) -> Fault:
        """Record a fault the test injected itself (e.g. SIGTERM)."""
        return self._record(kind, at, *node_ids)

    def _record(self, kind: str, at: float, *node_ids: str) -> Fault:
        fault = Fault(kind, at, _wall(at), frozenset(node_ids))
        self.faults.append(fault)
        return fault

    # --- observing ----------------------------------------------------------------------

    def client(self, **kwargs: Any) -> Client:
        """A client of the current coordinator."""
        return Client(self.address, **kwargs)

    def wait_nodes(self, *node_ids: str, timeout_s: float = 30) -> None:
        """Wait until every one of ``node_ids`` has an ACTIVE session."""
        with self.client() as client:
            wait_until(
                lambda: (
                    {n.node_id for n in client.nodes() if n.state is NodeState.ACTIVE}
                    >= set(node_ids)
                ),
                timeout_s,
                interval_s=0.1,
                what=f"nodes {node_ids} active",
            )

    def events(self, kinds: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """Events of every coordinator incarnation, oldest first."""
        return evidence.read_events(*(s.log_path for s in self.servers), kinds=kinds)

    def executions(self) -> list[evidence.Execution]:
        """Witness lines so far."""
        return evidence.read_witness(self.witness)

    def node_events(self, node_id: str) -> list[dict[str, Any]]:
        """JSON log events of every process that ran as ``node_id``."""
        return evidence.read_events(self.root / f"node-{node_id}.log")

    def log_tail(self, lines: int = 30) -> str:
        """The end of every process log, for failure messages."""
        parts = []
        for proc in [*self.servers, *self._old_nodes, *self.nodes.values()]:
            tail = proc.log().splitlines()[-lines:]
            parts.append(f"--- {proc.log_path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def close(self) -> None:
        """Stop everything (SIGKILL: the evidence is already on disk)."""
        for node in [*self.nodes.values(), *self._old_nodes]:
            if node.alive():
                node.signal(signal.SIGCONT)  # a stopped process ignores nothing but SIGKILL
            node.stop()
        for proxy in self.proxies.values():
            proxy.close()
        for server in self.servers:
            server.stop()


def _wall(mono: float) -> float:
    """The wall-clock time of a monotonic instant (both clocks read now)."""
    return time.time() - (time.monotonic() - mono)
