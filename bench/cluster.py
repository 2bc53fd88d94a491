"""Coordinator and worker-node processes for the benchmarks: real processes on loopback.

Every benchmark brings up its own coordinator (``dtq_server``, SQLite with
``synchronous=FULL``, port 0) and, where it needs them, real ``dtq_worker``
nodes running ``dtq_worker.demo:registry``. Nodes are stopped before the
coordinator, so they leave cleanly instead of being declared dead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench import postgres
from dtq_client import Client, NodeState
from dtq_worker.config import Prefetch

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: every process starts here so ``python -m`` finds the packages."""

STOP_TIMEOUT_S = 30.0
"""How long a process may take to exit after SIGTERM before it is killed."""


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds; RuntimeError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process in turn and wait for it; SIGKILL the ones that do not exit."""
    for proc in procs:
        if proc.poll() is not None:
            continue
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Coordinator:
    """One ``dtq_server`` process on ``127.0.0.1:0`` over ``data_dir``.

    Several may be started on the same directory one after the other (restart
    measurements); each writes its address to its own port file. With ``cpus``
    every thread of the process runs on those CPUs only (started under ``taskset``,
    which sets the affinity and then runs the coordinator in its place: every thread
    inherits it).
    """

    def __init__(
        self, data_dir: Path, extra_args: Sequence[str] = (), cpus: frozenset[int] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port_file = data_dir / f"port-{time.monotonic_ns()}"
        self.cpus = cpus
        pinned = [] if cpus is None else ["taskset", "-c", ",".join(map(str, sorted(cpus)))]
        self.proc = subprocess.Popen(
            [
                *pinned,
                sys.executable,
                "-m",
                "dtq_server",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--port-file",
                str(self.port_file),
                "--log-level",
                "warning",
                *postgres.store_args(),
                *extra_args,
            ],
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        """The coordinator's process id (for /proc readings)."""
        return self.proc.pid

    def wait_address(self, timeout_s: float = 30.0) -> str:
        """``host:port`` once the coordinator is serving (it writes the port file then)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the coordinator exited with {self.proc.returncode}")
            return self.port_file.exists()

        wait_for(ready, timeout_s, "the coordinator", interval_s=0.005)
        if self.cpus is not None and self._threads_cpus() != {self.cpus}:
            raise RuntimeError(f"the coordinator is not on CPUs {sorted(self.cpus)} only")
        return self.port_file.read_text().strip()

    def _threads_cpus(self) -> set[frozenset[int]]:
        """The distinct CPU sets the process's threads may run on."""
        found = set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                found.add(frozenset(os.sched_getaffinity(int(tid))))
        return found

    def kill(self) -> None:
        """SIGKILL: a crash, as a restart after a power cut or OOM kill would see it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), killed if it takes too long."""
        stop_processes([self.proc])


def start_node(
    address: str,
    node_id: str,
    threads: int = 4,
    prefetch: Prefetch = 0,
    queues: Sequence[str] = ("default",),
) -> subprocess.Popen[bytes]:
    """A ``dtq_worker`` process running the demo registry (``echo`` and friends)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dtq_worker",
            "dtq_worker.demo:registry",
            "--coordinator",
            address,
            "--threads",
            str(threads),
            "--prefetch",
            str(prefetch),
            "--queues",
            ",".join(queues),
            "--node-id",
            node_id,
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )


def wait_active(client: Client, count: int, timeout_s: float = 30.0) -> None:
    """Wait until ``count`` nodes are ACTIVE in the coordinator's registry."""
    wait_for(
        lambda: sum(n.state is NodeState.ACTIVE for n in client.nodes()) == count,
        timeout_s,
        f"{count} active nodes",
        interval_s=0.1,
    )


@contextmanager
def cluster(
    nodes: int,
    threads: int = 4,
    prefetch: Prefetch = 0,
    queues: Sequence[str] = ("default",),
    coordinator_cpus: frozenset[int] | None = None,
) -> Iterator[str]:
    """A fresh coordinator (on ``coordinator_cpus`` only, if given) and ``nodes`` worker
    processes serving ``queues``; yields the address."""
    with tempfile.TemporaryDirectory(prefix="dtq-bench-") as tmp:
        coordinator = Coordinator(Path(tmp), cpus=coordinator_cpus)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            address = coordinator.wait_address()
            workers = [
                start_node(address, f"bench-{n}", threads, prefetch, queues) for n in range(nodes)
            ]
            with Client(address) as client:
                wait_active(client, nodes)
            yield address
        finally:
            stop_processes(workers)
            coordinator.stop()
