"""WorkerService: the one bidirectional stream each node holds.

Two tasks serve a stream: this generator sends what the coordinator queues
in the session's outbox, and a reader task applies what the node sends.
They meet only through the outbox, so a slow node never blocks the
coordinator, and the coordinator can end a stream (session expired, shutting
down) by queueing an EndStream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import structlog

from dtq.batching import batches
from dtq.v1 import worker_service_pb2 as pb
from dtq.v1 import worker_service_pb2_grpc as pb_grpc
from dtq_server import scopes
from dtq_server.auth import CALLER, NodeSlots
from dtq_server.config import ServerConfig
from dtq_server.errors import CoordinatorError, InvalidArgument, PermissionDenied
from dtq_server.models import Assignment
from dtq_server.registry import (
    CloseStream,
    EndStream,
    Outbound,
    SendAcks,
    SendAssignments,
    SendCancel,
    SendDrain,
    SendHeartbeatAck,
    Session,
)
from dtq_server.servicers.convert import (
    ack_bytes,
    assignment_bytes,
    duration,
    fill_assignment,
    lease_from_proto,
    lease_to_proto,
    registration_from_proto,
    update_from_proto,
)
from dtq_server.servicers.errors import Context, abort, internal_status, to_status
from dtq_server.servicers.update_pipeline import UpdatePipeline
from dtq_server.sessions import NodeSessions
from dtq_server.updates import UpdateAck
from dtq_server.validation import check_listed_leases

log = structlog.get_logger(__name__)
REGISTER_TIMEOUT_S = 10.0
FRAME_BUDGET_BYTES = 2 * 1024 * 1024
"""About the largest frame of assignments sent to a node: a quarter of the coordinator's
send limit (twice its 4 MiB message limit) and of a node's receive limit (8 MiB); a node
cuts its result frames the same way."""


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """Serves node streams for :class:`NodeSessions`."""

    def __init__(self, sessions: NodeSessions, config: ServerConfig) -> None:
        self._sessions = sessions
        self._config = config
        self._slots = NodeSlots()
        self._certificate_names_node = config.tls is not None and config.tls.node_identity

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        requests = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(requests), REGISTER_TIMEOUT_S)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await abort(context, to_status(InvalidArgument([("register", "not sent in time")])))
        if first.WhichOneof("message") != "register":
            error = InvalidArgument([("register", "the first message must be RegisterNode")])
            await abort(context, to_status(error))
        release = await self._admit(first.register, context)
        try:
            async for response in self._serve(first.register, requests, context):
                yield response
        finally:
            release()

    async def _admit(self, register: pb.RegisterNode, context: Context) -> Callable[[], None]:
        """Refuse a node its token or certificate may not register, or whose token has
        no node slot left; the function that gives the slot back."""
        caller = CALLER.get()
        node_id = register.node_id
        try:
            if caller is not None and caller.node_id not in (None, node_id):
                # A node-bound token registers (and so resumes and reports for) its node only.
                raise PermissionDenied(f"this token may only register node {caller.node_id!r}")
            if self._certificate_names_node and node_id.encode() not in _names(context):
                # Likewise the certificate, when it is the node's identity.
                raise PermissionDenied(
                    f"node id {node_id!r} is not a name in this node's client certificate"
                )
            scopes.check_queues(register.queues or ("",))  # none: the default queue
            return self._slots.take(caller, node_id)
        except CoordinatorError as exc:
            await abort(context, to_status(exc))

    async def _serve(
        self,
        register: pb.RegisterNode,
        requests: AsyncIterator[pb.ConnectRequest],
        context: Context,
    ) -> AsyncIterator[pb.ConnectResponse]:
        """The stream of one admitted node, from its registration to its end."""
        outbox: asyncio.Queue[Outbound] = asyncio.Queue()
        try:
            registered = self._sessions.register(registration_from_proto(register), outbox)
        except CoordinatorError as exc:
            await abort(context, to_status(exc))
        session = registered.session
        reader: asyncio.Task[None] | None = None
        try:  # from here on, however the stream ends, the session is detached from it
            yield pb.ConnectResponse(
                registered=pb.NodeRegistered(
                    session_id=session.id,
                    heartbeat_interval=duration(self._config.heartbeat_interval_s),
                    heartbeat_timeout=duration(self._config.heartbeat_timeout_s),
                    resumed=registered.resumed,
                    stale_leases=[lease_to_proto(lease) for lease in registered.stale],
                    max_result_bytes=self._config.max_result_bytes,
                )
            )
            reader = asyncio.create_task(self._read(requests, session, outbox))
            while True:
                for item in _coalesce(await _drain(outbox)):
                    if isinstance(item, CloseStream):
                        return
                    if isinstance(item, EndStream):
                        if item.error.__class__ is CoordinatorError:
                            await abort(context, internal_status("stream"))
                        await abort(context, to_status(item.error))
                    yield _to_proto(item)
        finally:
            if reader is not None:
                reader.cancel()
            self._sessions.detach(session, outbox)

    async def _read(
        self,
        requests: AsyncIterator[pb.ConnectRequest],
        session: Session,
        outbox: asyncio.Queue[Outbound],
    ) -> None:
        pipeline = UpdatePipeline(self._sessions, session, outbox)
        try:
            async for message in requests:
                kind = message.WhichOneof("message")
                if kind == "heartbeat":
                    hb = message.heartbeat
                    check_listed_leases(len(hb.leases))  # before a Lease is made of each
                    self._sessions.heartbeat(
                        session,
                        hb.sequence,
                        [lease_from_proto(lease) for lease in hb.leases],
                        hb.supervisor_restarts,
                        hb.prefetch if hb.HasField("prefetch") else None,
                    )
                elif kind == "updates":
                    updates = [update_from_proto(u) for u in message.updates.updates]
                    pipeline.add([u for u in updates if u is not None])
                elif kind == "leave":
                    await pipeline.flush()  # the node's last outcomes first, then the rest
                    await self._sessions.leave(session, message.leave.reason[:200])
                    break
                elif kind == "register":
                    raise InvalidArgument([("register", "sent twice on one stream")])
            await pipeline.flush()
            outbox.put_nowait(CloseStream())
        except CoordinatorError as exc:
            outbox.put_nowait(EndStream(exc))
        except grpc.aio.AbortError:
            return  # the sending side ended the stream; nothing left to read
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream.reader_failed", node_id=session.node.node_id)
            outbox.put_nowait(EndStream(CoordinatorError("internal error")))
        finally:
            await pipeline.close()


async def _drain(outbox: asyncio.Queue[Outbound]) -> list[Outbound]:
    """Wait for the next message, then take every other one already queued."""
    items = [await outbox.get()]
    while not outbox.empty():
        items.append(outbox.get_nowait())
    return items


def _names(context: Context) -> tuple[bytes, ...]:
    """The names in the peer's client certificate (SANs, or its CN without them)."""
    return tuple(context.peer_identities() or ())


def _coalesce(items: list[Outbound]) -> list[Outbound]:
    """Merge adjacent assignments (and adjacent acks) into as few messages as fit.

    Under load many small messages queue up between two writes; one message per
    run keeps the per-message cost of gRPC off the hot path. Order is kept.
    Assignments and acks are then cut into frames of about :data:`FRAME_BUDGET_BYTES`.
    """
    merged: list[Outbound] = []
    for item in items:
        last = merged[-1] if merged else None
        if isinstance(item, SendAssignments) and isinstance(last, SendAssignments):
            merged[-1] = SendAssignments([*last.assignments, *item.assignments])
        elif isinstance(item, SendAcks) and isinstance(last, SendAcks):
            merged[-1] = SendAcks([*last.acks, *item.acks])
        else:
            merged.append(item)
    return [frame for item in merged for frame in _frames(item)]


def _frames(item: Outbound, budget_bytes: int = FRAME_BUDGET_BYTES) -> list[Outbound]:
    """``item``, or its assignments (or acks) cut into runs of at most ``budget_bytes`` each.

    Without the cut, a dispatch round of large payloads for one node (ten 1 MiB
    tasks for ten free threads) went out as one message over both the
    coordinator's send limit and the node's receive limit: the stream broke, the
    node resumed and was sent the same message again, and the tasks never ran. An
    assignment larger than the budget on its own still goes out, alone. Acks
    likewise: a frame of 50,000 outcomes (a node's, or a peer's made up) was
    answered in one 5,750,005-byte message, past a node's 4 MiB receive limit.
    """
    if isinstance(item, SendAssignments):
        leases = list(batches(item.assignments, assignment_bytes, max_bytes=budget_bytes))
        return [item] if len(leases) <= 1 else [SendAssignments(run) for run in leases]
    if isinstance(item, SendAcks):
        answers = list(batches(item.acks, ack_bytes, max_bytes=budget_bytes))
        return [item] if len(answers) <= 1 else [SendAcks(run) for run in answers]
    return [item]


def _assignments_frame(assignments: list[Assignment]) -> pb.ConnectResponse:
    response = pb.ConnectResponse()
    frame = response.assignments.assignments
    for a in assignments:
        fill_assignment(frame.add(), a)
    return response


def _acks_frame(acks: list[UpdateAck]) -> pb.ConnectResponse:
    """Acks written in place, as assignments are (one per outcome, on the event loop)."""
    response = pb.ConnectResponse()
    frame = response.update_acks.acks
    for a in acks:
        m = frame.add()
        m.lease.task_id = a.lease.task_id
        m.lease.attempt = a.lease.attempt
        m.accepted = a.accepted
        m.reason = a.reason
        m.message = a.message
    return response


def _to_proto(item: Outbound) -> pb.ConnectResponse:
    match item:
        case SendAssignments(assignments=assignments):
            return _assignments_frame(assignments)
        case SendHeartbeatAck(sequence=sequence, stale=stale):
            return pb.ConnectResponse(
                heartbeat_ack=pb.HeartbeatAck(
                    sequence=sequence, stale_leases=[lease_to_proto(x) for x in stale]
                )
            )
        case SendAcks(acks=acks):
            return _acks_frame(acks)
        case SendCancel(leases=leases):
            return pb.ConnectResponse(
                cancel=pb.CancelTasks(leases=[lease_to_proto(x) for x in leases])
            )
        case SendDrain():
            return pb.ConnectResponse(drain=pb.DrainRequested())
    raise AssertionError(f"cannot send {item!r}")
