"""B1-B7: bad input against a real coordinator process (RELIABILITY.md 2.4).

There is no authentication yet, so the sub-cases that depend on it (B6's
UNAUTHENTICATED path, "the token parser never sees more than the limit") are
skipped with that reason; everything else runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtq.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc, worker_service_pb2
from dtq_client import TaskState, UnknownTaskType
from dtq_server.tokens import entry, new_token
from tests.chaos._b_helpers import (
    NO_RETRY,
    BRow,
    Cluster,
    cancel_unfinished,
    finish,
    health,
    make_cluster_fixture,  # noqa: F401  (a fixture)
    open_fds,
    row_count,
    row_fixture,  # noqa: F401  (a fixture)
    start_server_with,
    terminal,
    wait_nodes,
)
from tests.chaos.conftest import Size
from tests.harness import RawNode, succeeded, wait_until
from tests.rpcs import Rpc, every_rpc

pytestmark = pytest.mark.chaos
MakeCluster = Callable[..., Cluster]
MiB = 1024 * 1024
TRANSPORT_LIMIT = 4 * MiB
FUZZ_THREADS = 8


def submit_raw(address: str, spec: task_pb2.TaskSpec) -> task_service_pb2.SubmitTaskResponse:
    with grpc.insecure_channel(address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response: task_service_pb2.SubmitTaskResponse = stub.SubmitTask(
            task_service_pb2.SubmitTaskRequest(task=spec), timeout=30
        )
        return response


def violations(exc: grpc.RpcError) -> list[str]:
    """The BadRequest field paths of a rich status."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    fields: list[str] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def peak_rss_kib(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def spec(type_: str = "ok", data: bytes = b"{}", **fields: Any) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        type=type_, payload=task_pb2.Payload(data=data, content_type="application/json"), **fields
    )


# --- B1 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("B1")
@pytest.mark.timeout(120)
def test_b1_oversized_payloads_and_results(
    make_cluster: MakeCluster, row: BRow, size: Size
) -> None:
    # The raw node below resumes its session after its 100 MiB (full size) stream was
    # refused; moving that many bytes can take longer than the usual 2 s timeout.
    cluster = make_cluster("--heartbeat-timeout", "15")
    server = cluster.server
    huge = size.pick(20, 100) * MiB
    with grpc.insecure_channel(server.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        assert stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec()), timeout=10)
        peak_before = peak_rss_kib(server.pid)
        with pytest.raises(grpc.RpcError) as over:
            stub.SubmitTask(
                task_service_pb2.SubmitTaskRequest(task=spec(data=b"x" * huge)), timeout=60
            )
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        peak_growth_kib = peak_rss_kib(server.pid) - peak_before
        assert peak_growth_kib <= 2 * TRANSPORT_LIMIT // 1024, peak_growth_kib
        # The connection stays usable.
        assert stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec()), timeout=10)
        # Just under the transport limit: refused by the application limit, naming the field.
        with pytest.raises(grpc.RpcError) as under:
            stub.SubmitTask(
                task_service_pb2.SubmitTaskRequest(
                    task=spec(data=b"x" * (TRANSPORT_LIMIT - 1024 - 64))
                ),
                timeout=30,
            )
        assert under.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(under.value) == ["task.payload.data"]
        # At the application limit: stored and returned byte for byte.
        exact = os.urandom(MiB)
        created = stub.SubmitTask(
            task_service_pb2.SubmitTaskRequest(
                task=task_pb2.TaskSpec(
                    type="nobody.runs.this",
                    payload=task_pb2.Payload(data=exact, content_type="application/octet-stream"),
                )
            ),
            timeout=30,
        )
        fetched = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=created.task.id), timeout=30)
        assert fetched.task.payload.data == exact

    # A result larger than the transport limit on the worker stream ends only that stream.
    task_id = submit_raw(server.address, spec("echo")).task.id
    node = RawNode(server.address, node_id="raw", task_types=("echo",))
    message = node.next("assignments")
    lease = message.assignments.assignments[0].lease
    assert lease.task_id == task_id
    node.report(succeeded(task_id, lease.attempt, b"x" * huge))
    wait_until(node.closed.is_set, 30, what="the oversized stream closed")
    assert node.error is not None
    assert node.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.alive() and health(server.address) == "SERVING"
    # The node reconnects (resuming its session) and reports a result over the
    # coordinator's max_result_bytes: the task fails RESULT_TOO_LARGE, not retried.
    again = RawNode(
        server.address, node_id="raw", task_types=("echo",),
        resume_session_id=node.session_id, leases=((task_id, lease.attempt),),
    )  # fmt: skip
    assert again.registered.resumed
    again.report(succeeded(task_id, lease.attempt, b'"' + b"y" * (2 * MiB) + b'"'))
    ack = again.next("update_acks").update_acks.acks[0]
    assert ack.accepted
    with cluster.client() as client:
        done = client.get(task_id)
        assert done.state is TaskState.FAILED
        assert done.last_error is not None and done.last_error.type == "RESULT_TOO_LARGE"
    again.close()
    cancel_unfinished(cluster)
    finish(
        row,
        cluster,
        oversize_mib=huge // MiB,
        status="RESOURCE_EXHAUSTED",
        peak_rss_growth_kib=peak_growth_kib,
        bound_kib=2 * TRANSPORT_LIMIT // 1024,
        limit_minus_1kib="INVALID_ARGUMENT task.payload.data",
        max_payload_round_trip="byte-identical",
        oversize_result="stream RESOURCE_EXHAUSTED, then RESULT_TOO_LARGE",
    )


# --- B2 ---------------------------------------------------------------------------------


def seed_bytes(rpc: Rpc) -> bytes:
    """A valid, non-trivial request: every string field 'x', every number 1, one level deep."""
    request = rpc.request()
    for fd in request.DESCRIPTOR.fields:
        if fd.containing_oneof is not None and request.WhichOneof(fd.containing_oneof.name):
            continue
        if fd.type == fd.TYPE_STRING:
            value: Any = "x"
        elif fd.type in (fd.TYPE_UINT32, fd.TYPE_INT32, fd.TYPE_UINT64):
            value = 1
        elif fd.type == fd.TYPE_BOOL:
            value = True
        elif fd.type == fd.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            if fd.is_repeated:
                getattr(request, fd.name).add()
            else:
                getattr(request, fd.name).SetInParent()
            continue
        else:
            continue
        if fd.is_repeated:
            getattr(request, fd.name).append(value)
        else:
            setattr(request, fd.name, value)
    return bytes(request.SerializeToString())


def nested_unknown(depth: int) -> bytes:
    """An unknown length-delimited field 15 nested ``depth`` deep."""
    data = b""
    for _ in range(depth):
        data = bytes([15 << 3 | 2]) + _varint(len(data)) + data
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def handcrafted(rpc: Rpc) -> list[bytes]:
    """(b) truncated valid messages, (c) wrong wire types, (d) deeply nested unknown
    fields (groups and messages), (e) invalid UTF-8 in a string field."""
    seed = seed_bytes(rpc)
    cases = [seed[:cut] for cut in range(1, len(seed))]
    for number in range(1, 6):
        cases += [
            _varint(number << 3 | 0) + b"\xff" * 11,  # a varint that never ends
            _varint(number << 3 | 2) + _varint(1000),  # length past the end
            _varint(number << 3 | 5) + b"\x01",  # truncated fixed32
            _varint(number << 3 | 2) + b"\x02\xff\xfe",  # bad UTF-8 if it is a string
            _varint(number << 3 | 7),  # wire type 7 does not exist
        ]
    cases += [
        bytes([15 << 3 | 3]) * 2000 + bytes([15 << 3 | 4]) * 2000,  # groups 2000 deep
        bytes([15 << 3 | 3]) * 50,  # groups never closed
        nested_unknown(500),
    ]
    return cases


@st.composite
def mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    """Random edits of a valid message: cut, flip, insert, repeat."""
    raw = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["cut", "flip", "insert", "repeat"]))
        if kind == "cut":
            del raw[at:]
        elif kind == "flip" and at < len(raw):
            raw[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            raw.extend(bytes(raw))
    return bytes(raw)


@dataclass
class FuzzTally:
    """What the fuzzing saw."""

    calls: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    created: int = 0
    deleted: int = 0
    schedules_created: int = 0
    problems: list[str] = field(default_factory=list)


class Fuzzer:
    """Sends raw bytes to one RPC and checks the answer."""

    def __init__(self, channel: grpc.Channel, tally: FuzzTally) -> None:
        self._channel = channel
        self._tally = tally
        self._lock = threading.Lock()

    def send(self, rpc: Rpc, data: bytes) -> None:
        """Send ``data`` and check the answer. Thread-safe."""
        try:
            parsed = rpc.request.FromString(data)
        except Exception:
            parsed = None
        code, details, responses = self._call(rpc, data)
        with self._lock:
            self._check(rpc, data, parsed is not None, code, details, responses)

    def _check(
        self,
        rpc: Rpc,
        data: bytes,
        parsed: bool,
        code: grpc.StatusCode,
        details: str,
        responses: list[bytes],
    ) -> None:
        tally = self._tally
        tally.calls += 1
        tally.statuses[code.name] += 1
        where = f"{rpc.path} {data[:40]!r}"
        if code is grpc.StatusCode.UNKNOWN:
            tally.problems.append(f"UNKNOWN from {where}: {details}")
        if "Traceback" in details or "DecodeError" in details or "Error parsing" in details:
            tally.problems.append(f"internals leaked by {where}: {details}")
        if not parsed and code not in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.INTERNAL,
        ):
            tally.problems.append(f"{code.name} for undecodable bytes to {where}")
        if parsed and code is grpc.StatusCode.INTERNAL:
            tally.problems.append(f"INTERNAL for a valid request to {where}: {details}")
        if code is grpc.StatusCode.OK or rpc.client_streaming:
            # A stream that failed may have answered (and stored) submits before.
            self._account(rpc, responses)

    def _call(self, rpc: Rpc, data: bytes) -> tuple[grpc.StatusCode, str, list[bytes]]:
        timeout = 10
        streamed: list[bytes] = []
        try:
            if not rpc.client_streaming and not rpc.server_streaming:
                call = self._channel.unary_unary(rpc.path, None, None)
                return grpc.StatusCode.OK, "", [call(data, timeout=timeout)]
            if not rpc.client_streaming:
                stream = self._channel.unary_stream(rpc.path, None, None)
                if rpc.path.endswith("/SubmitAndWatchTask"):
                    # The first message acknowledges the submit; the rest of the call
                    # would follow a task that no node runs until the deadline.
                    watch: Any = stream(data, timeout=timeout)
                    first: list[bytes] = list(itertools.islice(watch, 1))
                    watch.cancel()
                    return grpc.StatusCode.OK, "", first
                return grpc.StatusCode.OK, "", list(stream(data, timeout=timeout))
            bidi = self._channel.stream_stream(rpc.path, None, None)
            streamed.extend(bidi(iter([data]), timeout=timeout))
            return grpc.StatusCode.OK, "", streamed
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", streamed

    def _account(self, rpc: Rpc, responses: list[bytes]) -> None:
        tally = self._tally
        name = rpc.path.rsplit("/", 1)[1]
        if name == "SubmitTask":
            tally.created += task_service_pb2.SubmitTaskResponse.FromString(responses[0]).created
        elif name == "SubmitTasks":
            results = task_service_pb2.SubmitTasksResponse.FromString(responses[0]).results
            tally.created += sum(r.created for r in results)
        elif name == "SubmitAndWatchTask" and responses:
            answer = task_service_pb2.SubmitAndWatchTaskResponse.FromString(responses[0])
            tally.created += answer.created
        elif name == "SubmitTaskStream":
            for data in responses:
                answers = task_service_pb2.SubmitTaskStreamResponse.FromString(data).results
                tally.created += sum(a.submitted.created for a in answers)
        elif name == "PurgeTasks":
            tally.deleted += task_service_pb2.PurgeTasksResponse.FromString(responses[0]).deleted
        elif name == "CreateSchedule":
            tally.schedules_created += 1


def fuzz_inputs(rpc: Rpc, examples: int) -> list[bytes]:
    """``examples`` byte strings from Hypothesis (random, or edits of a valid message).

    Generated first and sent afterwards, concurrently: 5,000 per RPC at full size
    one by one would take minutes of round trips. Every answer is still checked.
    """
    found: list[bytes] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.binary(max_size=256), mutations(seed_bytes(rpc))))
    def fuzz(data: bytes) -> None:
        found.append(data)

    fuzz()
    return found


@pytest.mark.scenario_id("B2")
@pytest.mark.timeout(900)
def test_b2_malformed_protobuf_bytes_to_every_rpc(
    make_cluster: MakeCluster, row: BRow, size: Size
) -> None:
    # Info level: one debug line per malformed request would cost more than the RPC.
    cluster = make_cluster("--log-level", "info")
    server = cluster.server
    examples = size.pick(200, 5000)
    with cluster.client() as client:
        for i in range(5):
            client.submit("nobody.runs.this", {"i": i})
    rows_before = row_count(cluster.db)
    rpcs = every_rpc()
    assert len(rpcs) >= 10, [r.path for r in rpcs]
    tally = FuzzTally()
    # Hypothesis generates the next RPC's inputs while this one's are being sent.
    with (
        grpc.insecure_channel(server.address) as channel,
        ThreadPoolExecutor(1) as generator,
        ThreadPoolExecutor(FUZZ_THREADS) as senders,
    ):
        fuzzer = Fuzzer(channel, tally)
        upcoming = [generator.submit(fuzz_inputs, rpc, examples) for rpc in rpcs]
        for rpc, inputs in zip(rpcs, upcoming, strict=True):
            batch = handcrafted(rpc) + inputs.result()
            list(senders.map(partial(fuzzer.send, rpc), batch))
    assert tally.problems == [], tally.problems[:20]
    assert server.alive() and health(server.address) == "SERVING"
    expected = rows_before + tally.created - tally.deleted
    if tally.schedules_created:
        assert row_count(cluster.db) >= expected
    else:
        assert row_count(cluster.db) == expected, "nothing persisted beyond what was acked"
    log = server.log()
    assert "Traceback" not in log, "no unhandled exception was logged"
    assert "rpc.internal_error" not in log
    cancel_unfinished(cluster)
    finish(
        row,
        cluster,
        rpcs=len(rpcs),
        calls=tally.calls,
        examples_per_rpc=examples,
        statuses=dict(tally.statuses),
        valid_submits_created=tally.created,
    )


# --- B3 ---------------------------------------------------------------------------------


def _closed_within(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the peer closes ``sock`` (reading and discarding), at most ``limit_s``."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        raise AssertionError(f"the coordinator kept the connection past {limit_s} s") from None
    return time.monotonic() - started


@pytest.mark.scenario_id("B3")
@pytest.mark.timeout(120)
def test_b3_non_grpc_traffic_on_the_port(make_cluster: MakeCluster, row: BRow) -> None:
    cluster = make_cluster()
    server = cluster.server
    host, port = server.address.rsplit(":", 1)
    with cluster.client() as client:
        client.submit("nobody.runs.this", {})
    baseline_fds = open_fds(server.pid)
    client_hello = bytes.fromhex("16030100c8010000c40303") + os.urandom(32) + b"\x00" * 160
    garbage = {
        "http1_get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "tls_client_hello": client_hello,
        "urandom_1mib": os.urandom(MiB),
    }
    took: dict[str, float] = {}
    for name, data in garbage.items():
        with socket.create_connection((host, int(port))) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)  # the coordinator may close while we still send
            took[name] = _closed_within(sock, 10)
    # Half-open: the HTTP/2 preface, then nothing; and a connection that sends nothing.
    stalled = [socket.create_connection((host, int(port))) for _ in range(2)]
    stalled[0].sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    results: dict[int, float] = {}

    def watch(i: int) -> None:
        results[i] = _closed_within(stalled[i], 15)

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for sock in stalled:
        sock.close()
    took["stalled_preface"], took["silent"] = results[0], results[1]
    assert all(results[i] <= 12 for i in range(2)), results
    assert server.alive() and health(server.address) == "SERVING"
    wait_until(lambda: open_fds(server.pid) <= baseline_fds, 10, what="fds back to baseline")
    with cluster.client() as client:
        assert client.submit("nobody.runs.this", {}).id
    cancel_unfinished(cluster)
    finish(row, cluster, closed_after_s={k: round(v, 2) for k, v in took.items()}, fd_leak=0)


# --- B4 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("B4")
@pytest.mark.timeout(90)
def test_b4_unknown_task_type_is_never_dispatched_to_a_node_without_it(
    make_cluster: MakeCluster, row: BRow, size: Size
) -> None:
    cluster = make_cluster()
    cluster.node("a", threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        stray = client.submit("no.such.type", {})
        expiring = client.submit("no.such.type", {}, schedule_to_start_timeout_s=1.0)
        probe = client.submit("ok", {})
        wait_until(lambda: client.get(probe.id).state is TaskState.SUCCEEDED, 20)
        time.sleep(size.pick(2.0, 5.0))  # the scenario: time for a wrong dispatch to happen
        queued = client.get(stray.id)
        assert (queued.state, queued.attempt) == (TaskState.QUEUED, 0)
        gone = client.get(expiring.id)
        assert gone.state is TaskState.FAILED
        assert gone.last_error is not None
        assert gone.last_error.type == "SCHEDULE_TO_START_TIMEOUT"
        assert gone.attempt == 0
    granted = [line for line in cluster.server.log().splitlines() if "lease.granted" in line]
    assert not any(stray.id in line for line in granted), "never leased"
    cancel_unfinished(cluster)
    finish(
        row,
        cluster,
        queued_attempts=0,
        schedule_to_start="SCHEDULE_TO_START_TIMEOUT",
        strict_mode="see B4 strict",
    )


@pytest.mark.scenario_id("B4 strict")
@pytest.mark.timeout(90)
def test_b4_strict_mode_refuses_an_unknown_type_at_submit(
    make_cluster: MakeCluster, row: BRow
) -> None:
    """``--strict-task-types``: FAILED_PRECONDITION at once, and declared types persist."""
    cluster = make_cluster("--strict-task-types")
    node = cluster.node("a", threads=1)
    with cluster.client(retry=NO_RETRY) as client:
        wait_nodes(client, "a")
        with pytest.raises(UnknownTaskType) as refused:
            client.submit("no.such.type", {})
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        ok = client.submit("ok", {})
        wait_until(lambda: client.get(ok.id).state is TaskState.SUCCEEDED, 20)
    assert row_count(cluster.db) == 1  # the refused submit stored nothing
    # kill -9 with no node left: the types "a" declared are still known after the restart.
    node.stop()
    cluster.server.kill9()
    cluster.server = start_server_with(cluster.server.data_dir, "--strict-task-types")
    with cluster.client(retry=NO_RETRY) as client:
        waiting = client.submit("ok", {})
        assert waiting.state is TaskState.QUEUED
        with pytest.raises(UnknownTaskType):
            client.submit("no.such.type", {})
        cluster.node("a2", threads=1)
        wait_until(lambda: client.get(waiting.id).state is TaskState.SUCCEEDED, 30)
    finish(row, cluster, refused="FAILED_PRECONDITION UNKNOWN_TASK_TYPE", after_restart="queued")


@pytest.mark.scenario_id("B4 skew")
@pytest.mark.timeout(90)
def test_b4_registry_skew_is_refused_once_per_node_not_bounced(
    make_cluster: MakeCluster, row: BRow
) -> None:
    """A node declared a type at registration but no longer has its handler."""
    cluster = make_cluster()
    cluster.node("a", threads=1)
    with cluster.client() as client:
        wait_nodes(client, "a")
        forget = client.submit("forget_skewed", {})
        wait_until(lambda: client.get(forget.id).state is TaskState.SUCCEEDED, 20)
        skewed = client.submit("skewed", {})
        time.sleep(3.0)  # the scenario: time for a hot bounce loop to show
        bounced = client.get(skewed.id)
        assert bounced.state is TaskState.QUEUED
        assert bounced.attempt <= 1, f"bounced {bounced.attempt} times through node a"
        # A node that really has the handler runs it.
        cluster.node("b", threads=1)
        wait_until(lambda: client.get(skewed.id).state is TaskState.SUCCEEDED, 30)
        done = client.get(skewed.id)
        assert done.node_id == "b" and done.attempt == 2
        # Node a still gets the types it does handle.
        more = [client.submit("ok", {"i": i}).id for i in range(6)]
        wait_until(lambda: all(client.get(i).is_terminal for i in more), 30)
    finish(row, cluster, attempts=2, refused_by="a", ran_on="b")


# --- B5 ---------------------------------------------------------------------------------


def _b5_cases() -> list[tuple[str, task_pb2.TaskSpec, str]]:
    far = timestamp_pb2.Timestamp(seconds=253402300799)  # 9999-12-31
    return [
        ("queue_10kib", spec(queue="q" * 10240), "task.queue"),
        ("queue_bad_chars", spec(queue="no spaces"), "task.queue"),
        ("type_empty", spec(type_=""), "task.type"),
        ("type_10kib", spec(type_="t" * 10240), "task.type"),
        (
            "negative_backoff",
            spec(retry_backoff=duration_pb2.Duration(seconds=-5)),
            "task.retry_backoff",
        ),
        (
            "negative_execution_timeout",
            spec(execution_timeout=duration_pb2.Duration(seconds=-1)),
            "task.execution_timeout",
        ),
        ("max_attempts_1e9", spec(max_attempts=10**9), "task.max_attempts"),
        ("priority_out_of_range", spec(priority=100_000), "task.priority"),
        ("run_at_9999", spec(run_at=far), "task.run_at"),
        ("key_too_long", spec(idempotency_key="k" * 10_000), "task.idempotency_key"),
    ]


@pytest.mark.scenario_id("B5")
@pytest.mark.timeout(90)
def test_b5_invalid_field_values_are_rejected_with_the_field_path(
    make_cluster: MakeCluster,
    row: BRow,
) -> None:
    cluster = make_cluster()
    address = cluster.server.address
    first = submit_raw(address, spec(data=b'{"a": 1}', idempotency_key="same"))
    rows = row_count(cluster.db)
    seen: dict[str, str] = {}
    for name, bad, path in _b5_cases():
        with pytest.raises(grpc.RpcError) as err:
            submit_raw(address, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert path in violations(err.value), (name, violations(err.value))
        seen[name] = path
    with pytest.raises(grpc.RpcError) as clash:
        submit_raw(address, spec(data=b'{"a": 2}', idempotency_key="same"))
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.task.id in (clash.value.details() or "")
    assert row_count(cluster.db) == rows, "nothing persisted"
    cancel_unfinished(cluster)
    finish(row, cluster, rejected=len(seen) + 1, fields=sorted(seen.values()))


@pytest.mark.scenario_id("B5 deep JSON")
@pytest.mark.timeout(90)
def test_b5_deeply_nested_json_payload_fails_its_task_not_the_node(
    make_cluster: MakeCluster,
    row: BRow,
) -> None:
    """The coordinator stores payloads opaquely (R14); the node must survive decoding one."""
    cluster = make_cluster()
    node = cluster.node("a", threads=2)
    deep = b"[" * 100_000 + b"]" * 100_000
    with cluster.client() as client:
        wait_nodes(client, "a")
        task_id = submit_raw(cluster.server.address, spec(data=deep, max_attempts=3)).task.id
        done = terminal(client, task_id, 30)
        assert done.state is TaskState.FAILED
        assert done.last_error is not None and done.last_error.type == "PAYLOAD_DECODE_ERROR"
        assert (done.attempt, done.lease_expiries) == (1, 0)
        (info,) = client.nodes()
        assert info.supervisor_restarts == 0 and node.alive()
    finish(row, cluster, depth=100_000, outcome="PAYLOAD_DECODE_ERROR", node_restarts=0)


# --- B6 ---------------------------------------------------------------------------------


def _get_task_with(
    stub: task_service_pb2_grpc.TaskServiceStub,
    request: task_service_pb2.GetTaskRequest,
    abuses: Mapping[str, Sequence[tuple[str, str]]],
) -> dict[str, str]:
    """GetTask with each abusive metadata: the status code name, "OK", or how the client
    library refused to send it."""
    outcomes = {}
    for name, metadata in abuses.items():
        try:
            stub.GetTask(request, metadata=tuple(metadata), timeout=10)
            outcomes[name] = "OK"
        except grpc.RpcError as exc:
            outcomes[name] = exc.code().name
        except ValueError as exc:  # refused by the client library before sending
            outcomes[name] = f"client refused ({type(exc).__name__})"
    return outcomes


@pytest.mark.scenario_id("B6")
@pytest.mark.timeout(60)
def test_b6_metadata_abuse(make_cluster: MakeCluster, row: BRow) -> None:
    cluster = make_cluster()
    server = cluster.server
    outcomes: dict[str, str] = {}
    with grpc.insecure_channel(server.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.GetTaskRequest(task_id="00000000-0000-0000-0000-000000000000")
        abuses: dict[str, list[tuple[str, str]]] = {
            "authorization_64kib": [("authorization", "Bearer " + "a" * 65536)],
            "10000_keys": [(f"k{i}", "v") for i in range(10_000)],
            "non_ascii_key": [("schlüssel", "v")],
            "non_ascii_value": [("key", "wert\u00e9")],
        }
        outcomes.update(_get_task_with(stub, request, abuses))
        assert outcomes["authorization_64kib"] != "OK"
        assert outcomes["10000_keys"] != "OK"
        assert outcomes["non_ascii_key"] != "OK"
        # The same channel still works.
        with pytest.raises(grpc.RpcError) as normal:
            stub.GetTask(request, timeout=10)
        assert normal.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.alive() and health(server.address) == "SERVING"
    finish(row, cluster, outcomes=outcomes, auth="see B6 auth")


@pytest.mark.scenario_id("B6 auth")
@pytest.mark.timeout(60)
def test_b6_oversized_token_is_unauthenticated(
    make_cluster: MakeCluster, row: BRow, tmp_path: Path
) -> None:
    """The half of B6 that needs tokens: a coordinator checking them (--tokens-file)."""
    token = new_token()
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(entry("app", "submitter", token))
    cluster = make_cluster("--tokens-file", str(tokens_file))
    server = cluster.server
    outcomes: dict[str, str] = {}
    request = task_service_pb2.GetTaskRequest(task_id="00000000-0000-0000-0000-000000000000")
    with grpc.insecure_channel(server.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        abuses: dict[str, tuple[tuple[str, str], ...]] = {
            # Under the transport's metadata limit: the token parser sees it, unhashed.
            "authorization_8kib": (("authorization", "Bearer " + "a" * 8192),),
            # Over it: refused by the transport before the parser.
            "authorization_64kib": (("authorization", "Bearer " + "a" * 65536),),
            "token_not_ascii_printable": (("authorization", "Bearer \u00e9t\u00e9"),),
        }
        outcomes.update(_get_task_with(stub, request, abuses))
        assert outcomes["authorization_8kib"] == "UNAUTHENTICATED"
        assert outcomes["authorization_64kib"] in {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
        assert outcomes["token_not_ascii_printable"] != "OK"
        # The same channel, with the real token: answered (the task does not exist).
        with pytest.raises(grpc.RpcError) as normal:
            stub.GetTask(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        assert normal.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.alive() and health(server.address) == "SERVING"
    assert "Traceback" not in server.log()
    finish(row, cluster, outcomes=outcomes)


# --- B7 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("B7")
@pytest.mark.timeout(60)
def test_b7_forged_and_foreign_leases_change_nothing(make_cluster: MakeCluster, row: BRow) -> None:
    cluster = make_cluster()
    address = cluster.server.address
    owner = RawNode(address, node_id="owner", task_types=("echo",))
    task_id = submit_raw(address, spec("echo")).task.id
    lease = owner.next("assignments").assignments.assignments[0].lease
    intruder = RawNode(address, node_id="intruder", task_types=("other",))
    intruder.report(
        succeeded(task_id, lease.attempt, b'"stolen"'),  # another node's lease
        succeeded(task_id, lease.attempt + 5, b'"forged"'),  # a forged attempt
        succeeded("00000000-0000-0000-0000-000000000000", 1, b'"nobody"'),  # no such task
    )
    acks: list[worker_service_pb2.TaskUpdateAck] = []
    while len(acks) < 3:
        acks += list(intruder.next("update_acks").update_acks.acks)
    reasons = {(a.lease.task_id, a.lease.attempt): (a.accepted, a.reason) for a in acks}
    assert reasons[(task_id, lease.attempt)] == (False, "NOT_LEASED")
    assert reasons[(task_id, lease.attempt + 5)] == (False, "STALE_ATTEMPT")
    assert reasons[("00000000-0000-0000-0000-000000000000", 1)] == (False, "TASK_NOT_FOUND")
    intruder.heartbeat(1, ((task_id, lease.attempt),))
    stale = intruder.next("heartbeat_ack").heartbeat_ack.stale_leases
    assert [(s.task_id, s.attempt) for s in stale] == [(task_id, lease.attempt)]
    with cluster.client() as client:
        untouched = client.get(task_id)
        assert untouched.state is TaskState.LEASED and untouched.node_id == "owner"
        owner.report(succeeded(task_id, lease.attempt, b'"mine"'))
        assert owner.next("update_acks").update_acks.acks[0].accepted
        assert client.get(task_id).result_value() == "mine"
    audit = [line for line in cluster.server.log().splitlines() if "report.rejected" in line]
    assert len(audit) == 3 and all("node_id=intruder" in line for line in audit), audit
    owner.close()
    intruder.close()
    finish(row, cluster, rejected=["NOT_LEASED", "STALE_ATTEMPT", "TASK_NOT_FOUND"], audited=3)
