"""The registry of worker-node sessions.

A session is one registration of one node: it holds that node's leases. It
outlives a broken stream (state DISCONNECTED) so that a node that reconnects
within the heartbeat timeout resumes it and keeps its leases; it ends when the
node closes cleanly (LEFT) or stays silent past the timeout (DEAD).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from dtq_server.board import Key
from dtq_server.errors import CoordinatorError
from dtq_server.models import Assignment, Lease, NodeState, Registration
from dtq_server.updates import UpdateAck

GONE_NODES_KEPT = 100


@dataclass(frozen=True, slots=True)
class SendAssignments:
    """Outbound: new work."""

    assignments: list[Assignment]


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Outbound: stop these tasks."""

    leases: list[Lease]


@dataclass(frozen=True, slots=True)
class SendDrain:
    """Outbound: finish running tasks, take no more, close."""


@dataclass(frozen=True, slots=True)
class SendHeartbeatAck:
    """Outbound: answer to a heartbeat."""

    sequence: int
    stale: list[Lease]


@dataclass(frozen=True, slots=True)
class SendAcks:
    """Outbound: answers to task updates."""

    acks: list[UpdateAck]


@dataclass(frozen=True, slots=True)
class EndStream:
    """Outbound: end the stream with this error."""

    error: CoordinatorError


@dataclass(frozen=True, slots=True)
class CloseStream:
    """Outbound: end the stream normally (the node closed its side)."""


Outbound = (
    SendAssignments | SendCancel | SendDrain | SendHeartbeatAck | SendAcks | EndStream | CloseStream
)


@dataclass(eq=False)
class Session:
    """One node registration and the leases it holds."""

    id: str
    node: Registration
    keys: frozenset[Key]
    state: NodeState = NodeState.ACTIVE
    leases: dict[str, int] = field(default_factory=dict)
    """task id -> attempt of every lease this session holds."""
    leasing: set[str] = field(default_factory=set)
    """Task ids in ``leases`` whose lease is still being committed. Their assignment
    goes out when the commit lands, on whatever stream the session has then; a
    resume that found them missing from the node must not resend or requeue them."""
    drain_requested: bool = False
    """An admin asked this node to drain. Kept apart from ``state``, which a broken
    stream turns DISCONNECTED: a resumed session drains on (and is told again)."""
    resent: dict[str, int] = field(default_factory=dict)
    """task id -> how often its assignment was sent again on a resume (see sessions)."""
    last_seen: float = field(default_factory=time.monotonic)
    last_seen_wall: float = field(default_factory=time.time)
    connected_at_wall: float = field(default_factory=time.time)
    supervisor_restarts: int = 0
    outbox: asyncio.Queue[Outbound] | None = None
    """The attached stream's send queue; None while disconnected."""
    served: int = 0
    """When this session was last given a task, as the registry's count of tasks
    handed out (0: never). Dispatch offers work to the least recently served first."""
    finishing: int = 0
    """Leases whose outcome the node has reported and the store is committing.

    The node freed those slots when it sent the outcomes, so they count as credit
    at once: their replacements are leased in the same group commit as the
    outcomes instead of in the commit after it (one commit per round trip, not
    two). The leases stay held, and fenced, until the commit lands."""

    @property
    def live(self) -> bool:
        """Still holds its leases (not dead or left)."""
        return self.state in (NodeState.ACTIVE, NodeState.DRAINING, NodeState.DISCONNECTED)

    @property
    def free_slots(self) -> int:
        """Credits: tasks that may be leased now (slots + prefetch - leases held)."""
        return self._room_beyond(self.node.prefetch)

    @property
    def idle_slots(self) -> int:
        """Credits that are threads with nothing to run (the rest of ``free_slots`` is
        the prefetch buffer): a task leased here starts as soon as it arrives."""
        return self._room_beyond(0)

    def _room_beyond(self, buffered: int) -> int:
        """Slots + ``buffered`` - leases held, not counting those finishing; 0 unless the
        session is attached and active (only such a session gets work)."""
        if self.state is not NodeState.ACTIVE or self.outbox is None:
            return 0
        return max(0, self.node.slots + buffered - len(self.leases) + self.finishing)

    def touch(self) -> None:
        """Record that the node was heard from (coordinator clock)."""
        self.last_seen = time.monotonic()
        self.last_seen_wall = time.time()

    def send(self, message: Outbound) -> None:
        """Queue a message for the attached stream; dropped while disconnected."""
        if self.outbox is not None:
            self.outbox.put_nowait(message)


def session_keys(node: Registration) -> frozenset[Key]:
    """Every (queue, type) pair a node serves."""
    return frozenset((q, t) for q in node.queues for t in node.task_types)


def _last_served(session: Session) -> int:
    return session.served


class NodeRegistry:
    """Live sessions by id and by node id, plus the most recent gone ones."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._gone: deque[Session] = deque(maxlen=GONE_NODES_KEPT)
        self._handed_out = 0

    def create(self, node: Registration, session_id: str | None = None) -> Session:
        """A new session for ``node``."""
        session = Session(id=session_id or uuid.uuid4().hex, node=node, keys=self.keys_of(node))
        self.sessions[session.id] = session
        return session

    def keys_of(self, node: Registration) -> frozenset[Key]:
        """What ``node`` serves, as the very set a live session serving the same holds.

        A dispatch round groups nodes by the keys they serve (nodes started from the
        same code serve the same); with one object per distinct set, finding a node's
        group is an identity check instead of comparing sets of, say, 1,000 queues.
        """
        keys = session_keys(node)
        for session in self.sessions.values():
            if hash(session.keys) == hash(keys) and session.keys == keys:
                return session.keys
        return keys

    def live_for_node(self, node_id: str) -> list[Session]:
        """Live sessions of a node id."""
        return [s for s in self.sessions.values() if s.node.node_id == node_id]

    def end(self, session: Session, state: NodeState) -> None:
        """The session is over (DEAD or LEFT); it keeps no leases."""
        session.state = state
        session.leases.clear()
        if self.sessions.pop(session.id, None) is not None:
            self._gone.append(session)

    def silent_since(self, deadline: float) -> list[Session]:
        """Live sessions not heard from since ``deadline`` (monotonic)."""
        return [s for s in self.sessions.values() if s.last_seen < deadline]

    def with_free_slots(self) -> list[Session]:
        """Sessions that can take work, the least recently served first.

        Ordered by who was last given a task, not rotated per call: a round that
        leases nothing (a node's start report runs one) must not move the turn, or
        tasks arriving one at a time can all land on the same node.
        """
        ready = [s for s in self.sessions.values() if s.free_slots > 0]
        ready.sort(key=_last_served)
        return ready

    def serve(self, session: Session) -> None:
        """``session`` was just given a task: it goes to the back of the turn."""
        self._handed_out += 1
        session.served = self._handed_out

    def listing(self, include_gone: bool) -> list[Session]:
        """Sessions for ListNodes, ordered by node id."""
        found = list(self.sessions.values())
        if include_gone:
            found += list(self._gone)
        return sorted(found, key=lambda s: (s.node.node_id, s.connected_at_wall, s.id))
