"""A scripted coordinator that speaks the worker protocol over real gRPC.

It answers RegisterNode, acks heartbeats and outcomes, and lets a test push
assignments, cancels, drains and stream endings (with real ``google.rpc``
status details) exactly when it wants. The real coordinator's behaviour is
tested end to end elsewhere; this exercises the node's stream code.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dtq.v1 import task_pb2, worker_service_pb2, worker_service_pb2_grpc
from tests.harness import wait_until

_END = object()


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def rich_status(code: grpc.StatusCode, message: str, reason: str) -> status_pb2.Status:
    """A google.rpc.Status with an ErrorInfo, like the coordinator's."""
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="dtq.dev"))
    return status_pb2.Status(code=code.value[0], message=message, details=[packed])


@dataclass(eq=False)
class FakeStream:
    """One Connect call as the fake sees it."""

    register: worker_service_pb2.RegisterNode
    session_id: str
    resumed: bool
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    half_closed: threading.Event = field(default_factory=threading.Event)
    """The node called done_writing."""
    left: str | None = None
    """The reason of the node's Leave, once sent."""
    ended: threading.Event = field(default_factory=threading.Event)

    def send(self, **message: Any) -> None:
        self.out.put(worker_service_pb2.ConnectResponse(**message))

    def assign(
        self,
        task_id: str,
        type: str = "echo",
        payload: bytes = b"{}",
        attempt: int = 1,
        content_type: str = "application/json",
        max_attempts: int = 3,
    ) -> None:
        self.send(
            assignments=worker_service_pb2.TaskAssignments(
                assignments=[
                    worker_service_pb2.TaskAssignment(
                        lease=task_pb2.Lease(task_id=task_id, attempt=attempt),
                        type=type,
                        queue="default",
                        payload=task_pb2.Payload(data=payload, content_type=content_type),
                        max_attempts=max_attempts,
                    )
                ]
            )
        )

    def cancel(self, task_id: str, attempt: int = 1) -> None:
        lease = task_pb2.Lease(task_id=task_id, attempt=attempt)
        self.send(cancel=worker_service_pb2.CancelTasks(leases=[lease]))

    def drain(self) -> None:
        self.send(drain=worker_service_pb2.DrainRequested())

    def end(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        """End the stream with a rich error status."""
        self.out.put(rich_status(code, message, reason))


class FakeCoordinator(worker_service_pb2_grpc.WorkerServiceServicer):
    """Records everything nodes send; answers like the coordinator would."""

    def __init__(self, heartbeat_interval_s: float = 0.05, heartbeat_timeout_s: float = 1.0):
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.address = ""
        """``host:port`` once served."""
        self.max_result_bytes = 0
        self.streams: list[FakeStream] = []
        self.updates: list[worker_service_pb2.TaskUpdate] = []
        self.heartbeats: list[worker_service_pb2.Heartbeat] = []
        self.sessions: set[str] = set()
        """Sessions a node may resume."""
        self.ack_heartbeats = True
        self.stale: set[str] = set()
        """Task ids reported stale in heartbeat acks."""
        self.ack_updates = True
        self.reject: set[str] = set()
        """Task ids whose outcomes are rejected (STALE_ATTEMPT)."""
        self._lock = threading.Lock()

    # --- what tests look at -----------------------------------------------------------

    def stream(self, index: int, timeout_s: float = 5.0) -> FakeStream:
        """The ``index``-th stream (0-based), waiting for it to be registered."""
        wait_until(lambda: len(self.streams) > index, timeout_s, what=f"stream {index}")
        return self.streams[index]

    def kinds(self, task_id: str) -> list[str]:
        """The update kinds received for ``task_id``, in order."""
        with self._lock:
            return [
                u.WhichOneof("update") or "" for u in self.updates if u.lease.task_id == task_id
            ]

    def outcome(self, task_id: str) -> worker_service_pb2.TaskUpdate | None:
        """The last terminal update for ``task_id``."""
        with self._lock:
            found = [
                u
                for u in self.updates
                if u.lease.task_id == task_id
                and u.WhichOneof("update") in ("succeeded", "failed", "released")
            ]
        return found[-1] if found else None

    def wait_outcome(self, task_id: str, timeout_s: float = 5.0) -> worker_service_pb2.TaskUpdate:
        """Wait for the first terminal update of ``task_id`` and return the last one."""
        wait_until(lambda: self.outcome(task_id), timeout_s, what=f"outcome of {task_id}")
        outcome = self.outcome(task_id)
        assert outcome is not None
        return outcome

    # --- the protocol -------------------------------------------------------------------

    def Connect(
        self, request_iterator: Iterator[worker_service_pb2.ConnectRequest], context: Any
    ) -> Iterator[worker_service_pb2.ConnectResponse]:
        first = next(request_iterator)
        register = first.register
        resumed = register.resume_session_id in self.sessions
        session_id = register.resume_session_id if resumed else uuid.uuid4().hex
        self.sessions.add(session_id)
        stream = FakeStream(register, session_id, resumed)
        reader = threading.Thread(target=self._read, args=(stream, request_iterator), daemon=True)
        reader.start()
        with self._lock:
            self.streams.append(stream)
        yield worker_service_pb2.ConnectResponse(
            registered=worker_service_pb2.NodeRegistered(
                session_id=session_id,
                heartbeat_interval=_duration(self.heartbeat_interval_s),
                heartbeat_timeout=_duration(self.heartbeat_timeout_s),
                resumed=resumed,
                stale_leases=[lease for lease in register.leases if lease.task_id in self.stale],
                max_result_bytes=self.max_result_bytes,
            )
        )
        try:
            while True:
                item = stream.out.get()
                if item is _END:
                    return
                if isinstance(item, status_pb2.Status):
                    if item.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]:
                        self.sessions.discard(session_id)
                    context.abort_with_status(rpc_status.to_status(item))
                yield item
        finally:
            stream.ended.set()

    def _read(
        self, stream: FakeStream, requests: Iterator[worker_service_pb2.ConnectRequest]
    ) -> None:
        try:
            for request in requests:
                kind = request.WhichOneof("message")
                if kind == "heartbeat":
                    self._heartbeat(stream, request.heartbeat)
                elif kind == "updates":
                    self._updates(stream, request.updates.updates)
                elif kind == "leave":
                    stream.left = request.leave.reason
                    break  # like the coordinator: the session is over, end with OK
            else:
                stream.half_closed.set()
        except grpc.RpcError:
            pass  # the call ended (cancelled, aborted)
        finally:
            stream.out.put(_END)

    def _heartbeat(self, stream: FakeStream, heartbeat: worker_service_pb2.Heartbeat) -> None:
        with self._lock:
            self.heartbeats.append(heartbeat)
        if self.ack_heartbeats:
            stale = [lease for lease in heartbeat.leases if lease.task_id in self.stale]
            stream.send(
                heartbeat_ack=worker_service_pb2.HeartbeatAck(
                    sequence=heartbeat.sequence, stale_leases=stale
                )
            )

    def _updates(self, stream: FakeStream, updates: Any) -> None:
        acks = []
        with self._lock:
            self.updates.extend(updates)
        for update in updates:
            if update.WhichOneof("update") in ("succeeded", "failed", "released"):
                rejected = update.lease.task_id in self.reject
                acks.append(
                    worker_service_pb2.TaskUpdateAck(
                        lease=update.lease,
                        accepted=not rejected,
                        reason="STALE_ATTEMPT" if rejected else "",
                    )
                )
        if acks and self.ack_updates:
            stream.send(update_acks=worker_service_pb2.TaskUpdateAcks(acks=acks))


def serve(fake: FakeCoordinator) -> tuple[grpc.Server, str]:
    """Serve ``fake`` on a free loopback port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.address = f"127.0.0.1:{port}"
    return server, fake.address
