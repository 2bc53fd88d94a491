"""Test harness: real coordinators and worker nodes on loopback, and ways to wait on them.

Everything here starts real things: ``dtq-server`` and ``dtq-worker`` processes
on ``127.0.0.1:0``, an in-process coordinator on a background event loop, and a
``RawNode`` that speaks the worker protocol directly (for fencing tests that need
exact control over what a node sends).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from dtq.v1 import task_pb2, worker_service_pb2, worker_service_pb2_grpc
from dtq_server.app import CoordinatorServer
from dtq_server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Test timing (RELIABILITY.md 2.0): heartbeat H = 0.5 s, timeout T = 2 s, so the
# redelivery bound is T + 1 s.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TIMEOUT_S = 2.0


def wait_until(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)


def python_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repo on the path, no inherited DTQ_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Proc:
    """A child process with its log file."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout_s)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)


@dataclass
class ServerProcess(Proc):
    """A ``dtq-server`` process."""

    address: str = ""
    data_dir: Path = field(default_factory=Path)
    port_file: Path = field(default_factory=Path)


def start_server(
    data_dir: Path,
    *extra_args: str,
    name: str = "server",
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    listen: str = "127.0.0.1:0",
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ServerProcess:
    """Start ``dtq-server`` over ``data_dir`` and wait until it serves.

    ``listen`` defaults to an ephemeral port; pass a previous server's address to
    restart a coordinator where its nodes and clients expect it. ``env`` adds
    environment variables (e.g. ``DTQ_FAILPOINT``). ``wait=False`` returns at once
    (a standby coordinator serves only once it leads; see :func:`wait_serving`).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = data_dir / f"{name}.log"
    args = [
        sys.executable, "-m", "dtq_server", "--listen", listen,
        "--data-dir", str(data_dir), "--port-file", str(port_file),
        "--heartbeat-interval", str(heartbeat_interval_s),
        "--heartbeat-timeout", str(heartbeat_timeout_s), "--log-level", "debug", *extra_args,
    ]  # fmt: skip
    if DATABASE_URL is not None:
        args += ["--database-url", DATABASE_URL]
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            args, stdout=log, stderr=log, env=python_env(**(env or {})), cwd=ROOT
        )
    proc = ServerProcess(popen, log_path, address=listen, data_dir=data_dir)
    proc.port_file = port_file
    if wait:
        try:
            wait_serving(proc, 20)
        except AssertionError:
            proc.stop()
            raise
    return proc


def wait_serving(proc: ServerProcess, timeout_s: float) -> None:
    """Wait until the server writes its port file (it serves); then ``proc.address`` is set."""
    wait_until(lambda: proc.port_file.exists() or not proc.alive(), timeout_s, what="the port file")
    if not proc.alive():
        raise AssertionError(f"server exited {proc.popen.returncode}:\n{proc.log()}")
    proc.address = proc.port_file.read_text().strip()


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 right now, for a server whose address must be known
    before it listens (a standby coordinator)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server_with_tokens(root: Path, entries: str, *extra_args: str) -> ServerProcess:
    """Start ``dtq-server`` over ``root/data``, checking tokens against ``root/tokens.toml``,
    written from ``entries`` (``dtq_server.tokens.entry`` text)."""
    tokens_file = root / "tokens.toml"
    tokens_file.write_text(entries)
    return start_server(root / "data", "--tokens-file", str(tokens_file), *extra_args)


@dataclass
class TokenServer:
    """A coordinator process that checks tokens, and the tokens by entry name."""

    server: ServerProcess
    tokens: dict[str, str]


def start_node(
    address: str,
    log_dir: Path,
    node_id: str,
    *extra_args: str,
    module: str = "tests.handlers:registry",
    threads: int = 4,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start a ``dtq-worker`` process running ``module`` against ``address``."""
    log_path = log_dir / f"node-{node_id}.log"
    args = [
        sys.executable, "-m", "dtq_worker", module, "--coordinator", address,
        "--threads", str(threads), "--node-id", node_id, "--log-level", "debug", *extra_args,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            args, stdout=log, stderr=log, env=python_env(**(env or {})), cwd=ROOT
        )
    return Proc(popen, log_path)


class InProcessCoordinator:
    """A real coordinator on a background event loop, for fast tests."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server = CoordinatorServer(config)
        self.stopped = False

    def start(self) -> InProcessCoordinator:
        self._thread.start()
        self.call(self.server.start())
        return self

    @property
    def address(self) -> str:
        return self.server.address

    def call(self, coro: Any, timeout_s: float = 30) -> Any:
        """Run a coroutine on the coordinator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def run(self, fn: Callable[[], T], timeout_s: float = 10) -> T:
        """Run ``fn`` on the loop thread (to read coordinator state safely)."""

        async def wrapper() -> T:
            return fn()

        result: T = self.call(wrapper(), timeout_s)
        return result

    def hold_writer(self, release: threading.Event) -> asyncio.Future[None]:
        """Hold the store's writer thread until ``release`` is set (10 s at most): the
        commits asked for meanwhile queue behind it (:meth:`writer_backlog`). Returns once
        the writer is held, with the holding operation, done once the writer is free."""
        writer = self.server.coordinator.store._writer  # type: ignore[attr-defined]
        held = threading.Event()

        def hold(conn: object) -> None:
            held.set()
            release.wait(10)

        async def start() -> asyncio.Future[None]:
            return asyncio.ensure_future(writer.run(hold))

        future: asyncio.Future[None] = self.call(start())
        if not held.wait(10):
            raise RuntimeError("the store's writer did not take the hold within 10 s")
        return future

    def writer_backlog(self) -> int:
        """Operations waiting for the store's writer (not counting the one it runs)."""
        backlog: int = self.server.coordinator.store._writer._queue.qsize()  # type: ignore[attr-defined]
        return backlog

    def stop(self, grace_s: float = 0.5) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.call(self.server.stop(grace_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


DATABASE_URL: str | None = None
"""With ``DTQ_TEST_STORE=postgres``, the database every coordinator of the test uses
(set per test by ``tests/conftest.py``); None: SQLite in the test's data dir."""


def server_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    """A ServerConfig with test timing on an ephemeral port."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "database_url": DATABASE_URL,
        "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
        "retry_backoff_s": 0.05,
        "shutdown_grace_s": 1.0,
    }
    values.update(overrides)
    return ServerConfig(**values)


class RawNode:
    """A node that speaks the WorkerService protocol by hand (no worker library).

    Tests use it to send exactly the messages a scenario needs: late results,
    forged leases, silence instead of heartbeats.
    """

    def __init__(
        self,
        address: str,
        node_id: str = "raw",
        task_types: tuple[str, ...] = ("echo",),
        slots: int = 1,
        queues: tuple[str, ...] = (),
        resume_session_id: str = "",
        leases: tuple[tuple[str, int], ...] = (),
        auto_heartbeat: bool = False,
        prefetch: int = 0,
    ) -> None:
        self.channel = grpc.insecure_channel(address)
        self._outgoing: queue.SimpleQueue[worker_service_pb2.ConnectRequest | None] = (
            queue.SimpleQueue()
        )
        self.received: queue.SimpleQueue[worker_service_pb2.ConnectResponse] = queue.SimpleQueue()
        self._skipped: list[worker_service_pb2.ConnectResponse] = []
        """Messages ``next`` passed over while looking for another kind, in order."""
        self.error: grpc.RpcError | None = None
        self.closed = threading.Event()
        register = worker_service_pb2.RegisterNode(
            node_id=node_id, hostname="test", pid=os.getpid(), version="test",
            task_types=list(task_types), queues=list(queues), slots=slots,
            resume_session_id=resume_session_id,
            leases=[task_pb2.Lease(task_id=t, attempt=a) for t, a in leases], prefetch=prefetch,
        )  # fmt: skip
        self._outgoing.put(worker_service_pb2.ConnectRequest(register=register))
        stub = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self._call = stub.Connect(self._requests(), timeout=120)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = self.next("registered")
        self.session_id: str = first.registered.session_id
        self.registered = first.registered
        if auto_heartbeat:
            threading.Thread(target=self._heartbeat_forever, daemon=True).start()

    def _heartbeat_forever(self) -> None:
        """Heartbeat (with no leases) until the stream closes; acks are left unread."""
        sequence = 0
        while not self.closed.wait(HEARTBEAT_INTERVAL_S / 2):
            sequence += 1
            self.heartbeat(sequence)

    def _requests(self) -> Iterator[worker_service_pb2.ConnectRequest]:
        while True:
            message = self._outgoing.get()
            if message is None:
                return
            yield message

    def _read(self) -> None:
        try:
            for message in self._call:
                self.received.put(message)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.closed.set()

    def send(self, message: worker_service_pb2.ConnectRequest) -> None:
        self._outgoing.put(message)

    def next(self, kind: str, timeout_s: float = 10) -> worker_service_pb2.ConnectResponse:
        """The next message of ``kind``; others are kept for a later ``next`` of their kind.

        The coordinator may send a frame's assignments before the acks of the
        results that freed their slots (see ``Session.finishing``), so a test that
        waits for acks must still find the assignments that overtook them.
        """
        for i, message in enumerate(self._skipped):
            if message.WhichOneof("message") == kind:
                return self._skipped.pop(i)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind} message within {timeout_s} s (error {self.error})")
            try:
                message = self.received.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                if self.closed.is_set() and self.received.empty():
                    raise AssertionError(f"stream closed before {kind}: {self.error}") from None
                continue
            if message.WhichOneof("message") == kind:
                return message
            self._skipped.append(message)

    def unread(self) -> list[str]:
        """Kinds of the messages received and not yet taken by ``next``, in order."""
        waiting = list(self._skipped)
        while True:
            try:
                waiting.append(self.received.get_nowait())
            except queue.Empty:
                break
        self._skipped = waiting
        return [str(m.WhichOneof("message")) for m in waiting]

    def heartbeat(
        self,
        sequence: int,
        leases: tuple[tuple[str, int], ...] = (),
        prefetch: int | None = None,
    ) -> None:
        self.send(
            worker_service_pb2.ConnectRequest(
                heartbeat=worker_service_pb2.Heartbeat(
                    sequence=sequence,
                    leases=[task_pb2.Lease(task_id=t, attempt=a) for t, a in leases],
                    prefetch=prefetch,
                )
            )
        )

    def report(self, *updates: worker_service_pb2.TaskUpdate) -> None:
        self.send(
            worker_service_pb2.ConnectRequest(
                updates=worker_service_pb2.TaskUpdates(updates=list(updates))
            )
        )

    def close(self) -> None:
        """Leave: end the session; the coordinator closes the stream."""
        self.send(worker_service_pb2.ConnectRequest(leave=worker_service_pb2.Leave(reason="test")))
        self.closed.wait(10)
        self._outgoing.put(None)

    def abort(self) -> None:
        """Drop the stream abruptly (the session stays resumable until the timeout)."""
        self._call.cancel()
        self.closed.wait(10)
        self.channel.close()


def started(task_id: str, attempt: int) -> worker_service_pb2.TaskUpdate:
    """A TaskUpdate reporting that a handler started the task."""
    return worker_service_pb2.TaskUpdate(
        lease=task_pb2.Lease(task_id=task_id, attempt=attempt),
        started=worker_service_pb2.TaskStarted(),
    )


def succeeded(task_id: str, attempt: int, data: bytes) -> worker_service_pb2.TaskUpdate:
    """A TaskUpdate reporting success."""
    return worker_service_pb2.TaskUpdate(
        lease=task_pb2.Lease(task_id=task_id, attempt=attempt),
        succeeded=worker_service_pb2.TaskSucceeded(
            result=task_pb2.Payload(data=data, content_type="application/json")
        ),
    )


def failed(
    task_id: str, attempt: int, error_type: str = "ValueError", retryable: bool = True
) -> worker_service_pb2.TaskUpdate:
    """A TaskUpdate reporting a failure."""
    return worker_service_pb2.TaskUpdate(
        lease=task_pb2.Lease(task_id=task_id, attempt=attempt),
        failed=worker_service_pb2.TaskFailed(
            error=task_pb2.TaskError(type=error_type, message="boom", retryable=retryable)
        ),
    )


def released(task_id: str, attempt: int, reason: str = "SHUTDOWN") -> worker_service_pb2.TaskUpdate:
    """A TaskUpdate handing a task back."""
    return worker_service_pb2.TaskUpdate(
        lease=task_pb2.Lease(task_id=task_id, attempt=attempt),
        released=worker_service_pb2.TaskReleased(reason=reason),
    )
