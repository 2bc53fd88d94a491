"""RELIABILITY.md 2.3 N7: one identity floods the coordinator with connections or streams.

One row per half of the scenario:

- ``N7 connections``: one process opens N connections (1,000 at full size; each
  channel has its own subchannel pool, or gRPC would share one TCP connection
  between them), makes a health check on each and holds them open.
- ``N7 streams``: ONE connection carries N ``WatchTask`` streams (1,000 at full
  size) on a task no node runs yet, so every admitted stream gets the task's
  state and then stays open and quiet.

Meanwhile another client submits at a steady rate: its submits succeed with
p99 < 1 s. The coordinator's RSS grows < 200 MiB at the peak; after the
flood its fds are back to the baseline exactly and its RSS within
:data:`RETAINED_MIB` of it, and health is SERVING.

The limits that apply today: ``grpc.max_concurrent_streams`` = 256 per
connection (``dtq_server.app.server_options``). The gRPC client honours the
server's SETTINGS and queues streams beyond it, so exactly 256 get their first
message and the rest wait. When admitted streams end, waiting ones take the
slots; those that arrive before the coordinator has released an ended stream
are refused (RST_STREAM REFUSED_STREAM, which the caller sees as UNAVAILABLE):
the coordinator enforces the limit itself, not only the client's courtesy.
There is no authentication yet (R1), hence no identity to count and no
per-identity connection cap (R7): nothing refuses the 1,000th connection short
of the process's fd limit. The connections row says so; when the cap lands,
that test must expect its RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtq.v1 import task_service_pb2, task_service_pb2_grpc
from dtq_server.app import server_options
from dtq_server.config import ServerConfig
from tests.chaos.checker import Expect
from tests.chaos.cluster import ChaosCluster
from tests.chaos.conftest import Scenario, Size
from tests.chaos.ledger import Entry, LoadClient
from tests.chaos.resources import Usage, tcp_peers
from tests.chaos.test_process_faults import sessions_of, witness
from tests.chaos.test_steady_load import percentile
from tests.harness import wait_until

pytestmark = pytest.mark.chaos

KIB_PER_MIB = 1024
MAX_STREAMS = int(dict(server_options(ServerConfig()))["grpc.max_concurrent_streams"])
"""The coordinator's per-connection stream limit (256)."""
GROWTH_LIMIT_MIB = 200
"""RELIABILITY.md N7: the coordinator's RSS grows less than this during the flood."""
RETAINED_MIB = 24
"""RSS the coordinator may keep after the flood, beyond I6's 10 % + 4 MiB.

RSS does not come back down after a flood: glibc keeps what grpc's threads
freed in their malloc arenas (the growth is in anonymous mappings, not the main
heap, and the thread count does not change). Measured here: +18 to +19.4 MiB
after 1,000 connections, +4 to +5 MiB after 200, +7 to +9 MiB after a stream
flood of either size. It is kept, not leaked: eight floods of 1,000
connections in a row (measured apart from this test) level off near +30 MiB,
where a leak of one flood's size would reach +130 MiB. With I6's share this
allows about 34 MiB over a 56 MiB baseline, against 19.4 MiB at worst. The
fds, by contrast, must come back exactly.
"""
P99_LIMIT_S = 1.0
"""RELIABILITY.md N7: the other client's submits during the flood."""
SUBMIT_RATE = 40.0
"""The other client's submits per second."""
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Channel option: a channel of its own connection (channels share one by default)."""


class PeakUsage:
    """Samples the coordinator's fds and RSS every 20 ms on a thread, keeping the peak."""

    def __init__(self, cluster: ChaosCluster) -> None:
        self._cluster = cluster
        self._stop = threading.Event()
        self.peak = cluster.usage()
        self._thread = threading.Thread(target=self._sample, name="peak-usage", daemon=True)

    def __enter__(self) -> PeakUsage:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            now = self._cluster.usage()
            self.peak = Usage(max(self.peak.fds, now.fds), max(self.peak.rss_kib, now.rss_kib))


@dataclass
class OtherClient:
    """Another client's steady submits; its calls during the flood are the ones measured."""

    scenario: Scenario
    load: LoadClient
    first_call: int = 0
    last_call: int = 0

    @classmethod
    def start(cls, scenario: Scenario, prefix: str) -> OtherClient:
        assert scenario.cluster is not None
        load = LoadClient(
            scenario.cluster.address, scenario.ledger, witness(), total=100_000, prefix=prefix,
            threads=2, rate=SUBMIT_RATE, call_timeout_s=5.0, give_up_s=10.0,
        ).start()  # fmt: skip
        return cls(scenario, load)

    def calls(self) -> int:
        return len(self.scenario.ledger.calls)

    def flood_begins(self) -> None:
        self.first_call = self.calls()

    def flood_ends(self) -> None:
        self.last_call = self.calls()

    def hold(self, submits: int, what: str) -> None:
        """Wait (bounded) until ``submits`` more of its calls have returned."""
        target = self.calls() + submits
        wait_until(lambda: self.calls() >= target, 30, interval_s=0.01, what=what)

    def stop(self) -> None:
        self.load.stop()
        self.load.join(30)

    def judge(self, extra: list[str]) -> str:
        """Its calls during the flood: all OK with p99 < 1 s (else a violation in ``extra``)."""
        during = self.scenario.ledger.calls[self.first_call : self.last_call]
        if not during:
            extra.append("the other client made no call during the flood")
            return "no calls"
        codes = {code for _, code in during}
        worst = percentile([d for d, _ in during], 0.99)
        if codes != {"OK"}:
            extra.append(f"the other client's submits during the flood ended {sorted(codes)}")
        if worst >= P99_LIMIT_S:
            extra.append(f"the other client's submit p99 {worst:.3f} s >= {P99_LIMIT_S} s")
        return (
            f"other client: {len(during)} submits during the flood, codes {sorted(codes)}, "
            f"p99 {worst * 1000:.0f} ms (limit {P99_LIMIT_S * 1000:.0f})"
        )


def settled_baseline(cluster: ChaosCluster, connections: int) -> Usage:
    """The baseline once the coordinator holds only ``connections`` client connections.

    A client closed just before (``wait_nodes``, a submit) may still have its
    socket open on the coordinator's side for a moment: counted in the
    baseline, it would let one leaked fd pass as "back to the baseline".
    """
    pid = cluster.server.pid
    wait_until(
        lambda: len(tcp_peers(pid) - {0}) <= connections, 10,
        what=f"the coordinator down to {connections} client connections",
    )  # fmt: skip
    return cluster.mark_baseline()


def back_to_baseline(cluster: ChaosCluster, extra: list[str]) -> Usage:
    """Wait until the coordinator's fds are exactly the baseline; check its RSS and health."""
    base = cluster.baseline
    assert base is not None
    try:
        wait_until(lambda: cluster.usage().fds <= base.fds, 15, what="fds back to the baseline")
    except AssertionError as exc:
        extra.append(f"{exc}: {cluster.usage()} against {base}")
    now = cluster.usage()
    allowed = base.rss_kib * 1.10 + (4 + RETAINED_MIB) * KIB_PER_MIB
    if now.rss_kib > allowed:
        extra.append(f"RSS {now} after the flood > baseline {base} + 10 % + {4 + RETAINED_MIB} MiB")
    with cluster.client(timeout_s=5) as client:
        health = client.health()
    if health != "SERVING":
        extra.append(f"health is {health} after the flood")
    return now


def growth(peak: Usage, base: Usage, extra: list[str]) -> float:
    """Peak RSS growth in MiB (a violation in ``extra`` if over the limit)."""
    grown = (peak.rss_kib - base.rss_kib) / KIB_PER_MIB
    if grown >= GROWTH_LIMIT_MIB:
        extra.append(f"RSS grew {grown:.1f} MiB during the flood (limit {GROWTH_LIMIT_MIB})")
    return grown


# --- connections ------------------------------------------------------------------------


def health_check_each(channels: list[grpc.Channel]) -> None:
    """One health check per channel, all in flight at once: each connection is set up."""
    request = health_pb2.HealthCheckRequest()
    calls = [health_pb2_grpc.HealthStub(c).Check.future(request, timeout=30) for c in channels]
    statuses = {call.result().status for call in calls}
    assert statuses == {health_pb2.HealthCheckResponse.SERVING}, statuses


@pytest.mark.scenario_id("N7 connections")
@pytest.mark.timeout(180)
def test_n7_connection_flood(scenario: Scenario, size: Size) -> None:
    """One process opens N connections while another client submits; nothing caps them yet."""
    total = size.pick(200, 1000)
    cluster = scenario.start()
    cluster.add_node("a")
    cluster.wait_nodes("a")
    base = settled_baseline(cluster, connections=1)  # node a's
    other = OtherClient.start(scenario, "n7c")
    other.hold(10, "the other client's first submits")
    before = cluster.usage()
    channels: list[grpc.Channel] = []
    extra: list[str] = []
    try:
        with PeakUsage(cluster) as usage:
            other.flood_begins()
            started = time.monotonic()
            channels += [
                grpc.insecure_channel(cluster.address, OWN_CONNECTION) for _ in range(total)
            ]
            health_check_each(channels)
            opened_s = time.monotonic() - started
            held = cluster.usage()
            other.hold(size.pick(20, 80), "the other client's submits while the flood is held")
            for channel in channels:
                channel.close()
            channels.clear()
            other.flood_ends()
    finally:
        for channel in channels:
            channel.close()
    other.stop()
    extra_fds = held.fds - before.fds
    if extra_fds != total:
        extra.append(f"the coordinator held {extra_fds} more fds, not {total} connections")
    grown = growth(usage.peak, base, extra)
    after = back_to_baseline(cluster, extra)
    if sessions_of(cluster, "a")[1:]:
        extra.append("node a lost its session during the flood")
    scenario.note(
        f"{total} connections from one process, all accepted in {opened_s:.2f} s: no "
        "per-identity connection cap exists (no authentication yet, R1/R7)"
    )
    scenario.note(
        f"coordinator: baseline {base}; held {held}; peak RSS +{grown:.1f} MiB "
        f"(limit {GROWTH_LIMIT_MIB}); after disconnect {after} "
        f"(RSS kept +{(after.rss_kib - base.rss_kib) / KIB_PER_MIB:.1f} MiB)"
    )
    scenario.note(other.judge(extra))
    scenario.finish(Expect(rss_slack_kib=(4 + RETAINED_MIB) * KIB_PER_MIB), extra)


# --- streams ----------------------------------------------------------------------------


REFUSED_STREAM = "Received RST_STREAM with error code 7"
"""How gRPC words the server's RST_STREAM REFUSED_STREAM (HTTP/2 error 0x7) in a status."""


class StreamFlood:
    """N ``WatchTask`` streams on one channel (one connection), each read by a thread.

    A stream is *admitted* once its first message (the task's state) arrives,
    and *active* until it ends; :attr:`most_active` is the most ever active at
    once. The coordinator still counts a stream the client has ended until it
    has released it, so the client's count can only be lower than the server's.
    (The sync API and a thread per stream, not grpc.aio: an aio channel belongs
    to one event loop for the life of the process.)
    """

    def __init__(self, address: str, task_id: str, total: int, deadline_s: float) -> None:
        self.total = total
        self._channel = grpc.insecure_channel(address)
        self._stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        self._request = task_service_pb2.WatchTaskRequest(task_id=task_id)
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self.admitted: list[int] = []
        """Stream numbers in the order their first message came."""
        self.ended: dict[int, str] = {}
        """Stream number -> how it ended: CANCELLED, REFUSED or a status."""
        self.active = 0
        self.most_active = 0
        self._calls: list[Any] = []
        self._readers: list[threading.Thread] = []

    def open(self) -> StreamFlood:
        """Start every stream (the channel admits them as the server allows) and its reader."""
        for number in range(self.total):
            call = self._stub.WatchTask(self._request, timeout=self._deadline_s)
            self._calls.append(call)
            reader = threading.Thread(
                target=self._follow, args=(number, call), name=f"watch-{number}", daemon=True
            )
            self._readers.append(reader)
            reader.start()
        return self

    def waiting(self) -> int:
        """Streams neither admitted nor ended: queued in the client."""
        with self._lock:
            admitted = set(self.admitted)
            return self.total - len(admitted) - sum(1 for n in self.ended if n not in admitted)

    def end(self, count: int) -> list[int]:
        """Cancel the first ``count`` admitted streams still active; returns their numbers."""
        with self._lock:
            chosen = [n for n in self.admitted if n not in self.ended][:count]
        for number in chosen:
            self._calls[number].cancel()
        return chosen

    def close(self) -> None:
        """Cancel every stream, close the channel, join the readers (safe to call twice)."""
        for call in self._calls:
            call.cancel()
        self._channel.close()
        deadline = time.monotonic() + 10
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def outcomes(self) -> dict[str, int]:
        """How many streams ended each way."""
        counts: dict[str, int] = {}
        with self._lock:
            for how in self.ended.values():
                counts[how] = counts.get(how, 0) + 1
        return counts

    def _follow(self, number: int, call: Any) -> None:
        admitted = False
        try:
            next(call)
            admitted = True
            with self._lock:
                self.admitted.append(number)
                self.active += 1
                self.most_active = max(self.most_active, self.active)
            next(call)  # the task never changes: nothing more comes
            how = "sent a second message"
        except StopIteration:
            how = "ended"
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code is grpc.StatusCode.CANCELLED:
                how = "CANCELLED"
            elif code is grpc.StatusCode.UNAVAILABLE and REFUSED_STREAM in details:
                how = "REFUSED"
            else:
                how = f"{code.name}: {details}"
        with self._lock:
            self.ended[number] = how
            if admitted:
                self.active -= 1


def parked_task(scenario: Scenario) -> str:
    """Submit (through the ledger) the task the streams watch; no node exists to run it yet."""
    cluster = scenario.cluster
    assert cluster is not None
    with cluster.client() as client:
        task = client.submit("witness", {}, idempotency_key="n7s-parked")
    scenario.ledger.record(Entry("n7s-parked", task.id, True))
    return task.id


@pytest.mark.scenario_id("N7 streams")
@pytest.mark.timeout(180)
def test_n7_stream_flood(scenario: Scenario, size: Size) -> None:
    """N WatchTask streams on one connection: at most 256 are served at once."""
    # Small size: enough beyond 256 that streams still wait after some are ended.
    total = size.pick(400, 1000)
    to_end = size.pick(16, 100)
    cluster = scenario.start()
    task_id = parked_task(scenario)
    base = settled_baseline(cluster, connections=0)
    other = OtherClient.start(scenario, "n7s")
    other.hold(10, "the other client's first submits")
    before = cluster.usage()
    flood = StreamFlood(cluster.address, task_id, total, deadline_s=120)
    extra: list[str] = []
    try:
        with PeakUsage(cluster) as usage:
            other.flood_begins()
            flood.open()
            wait_until(
                lambda: len(flood.admitted) >= MAX_STREAMS, 30,
                what=f"{MAX_STREAMS} streams admitted",
            )  # fmt: skip
            held = cluster.usage()
            other.hold(size.pick(20, 80), "the other client's submits while the flood is held")
            admitted_held, waiting_held = len(flood.admitted), flood.waiting()
            early = flood.outcomes()
            ended = flood.end(to_end)
            wait_until(
                lambda: len(flood.admitted) >= admitted_held + len(ended) or not flood.waiting(),
                30,
                what="waiting streams to take the freed slots",
            )
            other.hold(10, "the other client's submits after the slots were freed")
            admitted_after = len(flood.admitted) - admitted_held
            flood.close()
            other.flood_ends()
    finally:
        flood.close()
    other.stop()
    outcomes = flood.outcomes()
    if admitted_held != MAX_STREAMS:
        extra.append(f"{admitted_held} streams were served at once, not {MAX_STREAMS}")
    if early or waiting_held != total - admitted_held:
        extra.append(f"streams ended before any was cancelled: {early}")
    if len(flood.ended) != total:
        extra.append(f"{total - len(flood.ended)} streams had not ended after the channel closed")
    if flood.most_active > MAX_STREAMS:
        extra.append(f"{flood.most_active} streams were active at once (limit {MAX_STREAMS})")
    if admitted_after < 1:
        extra.append(f"no waiting stream was served after {len(ended)} were ended")
    unexpected = {how for how in outcomes if how not in {"CANCELLED", "REFUSED"}}
    if unexpected:
        extra.append(f"streams ended otherwise than cancelled or refused: {sorted(unexpected)}")
    if held.fds - before.fds != 1:
        extra.append(f"the flood took {held.fds - before.fds} connections, not one")
    grown = growth(usage.peak, base, extra)
    after = back_to_baseline(cluster, extra)
    scenario.note(
        f"{total} streams on one connection: {admitted_held} served at once (limit "
        f"{MAX_STREAMS}), the rest waited in the client; ending {len(ended)} let "
        f"{admitted_after} more in, and the coordinator refused {outcomes.get('REFUSED', 0)} "
        "that came before it had released the ended ones (REFUSED_STREAM)"
    )
    scenario.note(
        f"coordinator: baseline {base}; held {held}; peak RSS +{grown:.1f} MiB "
        f"(limit {GROWTH_LIMIT_MIB}); after the streams {after} "
        f"(RSS kept +{(after.rss_kib - base.rss_kib) / KIB_PER_MIB:.1f} MiB)"
    )
    scenario.note(other.judge(extra))
    # Only now may a node run the parked task and the other client's tasks (I1).
    cluster.add_node("a")
    cluster.wait_nodes("a")
    scenario.finish(Expect(rss_slack_kib=(4 + RETAINED_MIB) * KIB_PER_MIB), extra)
