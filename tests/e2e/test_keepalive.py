"""Keepalive regressions (RELIABILITY.md R8, N1, N6).

1. Our client and node defaults never earn a GOAWAY ``too_many_pings`` from our
   server defaults. The server allows a ping every 5 s without data and strikes
   twice; our channels ping every 10 s. Over 35 s (three client pings) a DTQ
   channel that is idle, one holding a quiet WatchTask stream, and a worker
   node must all keep their one connection. A control channel that pings every
   second proves the server does enforce its policy in the same run, so "no
   GOAWAY" cannot pass by accident.
2. Our keepalive notices a black-holed peer within keepalive time + timeout.
   gRPC waits ``grpc.http2.ping_timeout_ms`` (60 s by default) for a ping's
   ack whatever ``keepalive_timeout_ms`` says, so the channels set both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dtq.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from dtq_client import create_channel
from dtq_client.connection import DEFAULT_OPTIONS
from tests.chaos.proxy import FaultProxy
from tests.harness import Proc, ServerProcess, start_node, start_server, wait_until

WINDOW_S = 35.0
"""Long enough for three pings of our 10 s keepalive (the third would be the GOAWAY)."""
ABUSIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 500),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class States:
    """Connectivity states a channel went through, recorded from gRPC's callback thread."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.seen: list[grpc.ChannelConnectivity] = []
        self._lock = threading.Lock()
        channel.subscribe(self._record, try_to_connect=True)

    def _record(self, state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            self.seen.append(state)

    def left_ready(self) -> bool:
        """True if the channel was READY and later was not (a GOAWAY or a broken link)."""
        with self._lock:
            ready = [i for i, s in enumerate(self.seen) if s is grpc.ChannelConnectivity.READY]
            return bool(ready) and any(
                s is not grpc.ChannelConnectivity.READY for s in self.seen[ready[0] :]
            )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # Production heartbeat timing: a quiet node stream, as in a real deployment.
    running = start_server(tmp_path / "data", heartbeat_interval_s=2.0, heartbeat_timeout_s=10.0)
    yield running
    running.stop()


@pytest.mark.timeout(120)
def test_default_keepalive_never_gets_too_many_pings(server: ServerProcess, tmp_path: Path):
    node: Proc = start_node(server.address, tmp_path, "quiet")
    idle = create_channel(server.address)
    watching = create_channel(server.address)
    abusive = grpc.insecure_channel(server.address, options=ABUSIVE_OPTIONS)
    try:
        idle_states, watch_states, abusive_states = States(idle), States(watching), States(abusive)
        stub = task_service_pb2_grpc.TaskServiceStub(watching)
        # A task no node can run stays queued: its WatchTask stream stays open and quiet.
        spec = task_pb2.TaskSpec(type="nobody.runs.this", payload=task_pb2.Payload(data=b"{}"))
        task = stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task
        watch = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.id), timeout=90)
        next(watch)  # the stream is open
        wait_until(
            lambda: "node.registered" in server.log() and "node_id=quiet" in server.log(),
            20,
            what="the node registered",
        )
        started = time.monotonic()
        wait_until(abusive_states.left_ready, 20, interval_s=0.2, what="the control's GOAWAY")
        print(f"\ncontrol channel (1 s pings) cut after {time.monotonic() - started:.1f} s")
        time.sleep(max(0.0, started + WINDOW_S - time.monotonic()))  # the window is the test

        assert not idle_states.left_ready(), idle_states.seen
        assert not watch_states.left_ready(), watch_states.seen
        assert watch.is_active(), "the quiet WatchTask stream is still open"
        log = server.log()
        assert log.count("node.registered") == 1, "the node never had to reconnect"
        assert "node.disconnected" not in log
        assert node.alive()
    finally:
        for channel in (idle, watching, abusive):
            channel.close()
        node.stop()


@pytest.mark.timeout(60)
def test_default_keepalive_notices_a_black_hole_within_time_plus_timeout(
    server: ServerProcess,
) -> None:
    options = dict(DEFAULT_OPTIONS)
    bound_s = (options["grpc.keepalive_time_ms"] + options["grpc.keepalive_timeout_ms"]) / 1000
    with FaultProxy(server.address) as proxy:
        channel = create_channel(proxy.address)
        try:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            spec = task_pb2.TaskSpec(type="nobody.runs.this", payload=task_pb2.Payload(data=b"{}"))
            task = stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task
            watch = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.id), timeout=55)
            next(watch)
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                next(watch)
            noticed_s = time.monotonic() - started
        finally:
            channel.close()
    print(f"\nblack hole noticed after {noticed_s:.1f} s (bound {bound_s + 1:.0f} s)")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert noticed_s <= bound_s + 1
