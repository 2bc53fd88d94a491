"""Who may call what: tokens checked against the role policy (RELIABILITY R1, R2, S1-S4).

With ``--tokens-file`` every call is checked before its handler runs, in the
guard that already wraps each method once at registration
(:mod:`dtq_server.servicers.malformed`), so unary calls and streams are checked
alike and nothing is added per call when no tokens file is given. A caller
without a valid ``authorization: Bearer <token>`` gets UNAUTHENTICATED, with
one message whatever was wrong (missing, unknown, revoked, malformed); a valid
token whose role the policy does not list for the method gets
PERMISSION_DENIED. The policy is ``policy.toml`` beside this module, checked
in; a served method it does not name stops the coordinator from starting.

Calls only admins may make, and every refused call, are logged as audit events
(``audit.admin_call``, ``audit.refused``: who, what, from where; never a token)
(RELIABILITY R15); refusals at most ``AUDIT_REFUSALS_PER_S`` lines a second, so
a flood of bad tokens cannot flood the log.

The caller's identity is kept in :data:`CALLER` for the rest of the call, which
is how the worker stream binds a node-bound token to its node id (S4). Streams
are tracked with the token that opened them: when a sweep (every
``REVOCATION_CHECK_S``) finds the file changed and a token gone, the streams it
opened end UNAUTHENTICATED, so a revoked node or watcher is cut off within
about a second, not at its next reconnect (S2).
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import structlog

from dtq_server.errors import CallRateExceeded, CapReached, PermissionDenied, Unauthenticated
from dtq_server.ratelimit import TokenBucket, default_burst
from dtq_server.tokens import ROLES, Identity, TokenBook

log = structlog.get_logger(__name__)

POLICY_PATH = Path(__file__).with_name("policy.toml")
REVOCATION_CHECK_S = 1.0
"""How often the tokens file is looked at for revocations that end open streams."""
ANYONE = "anyone"
"""The policy's word for callers without a token (health checks; any token will do when
the coordinator is run with --health-needs-token, the default beyond loopback)."""
CALLER: ContextVar[Identity | None] = ContextVar("dtq_caller", default=None)
"""The identity of the call being served (None without tokens, or for ``anyone``)."""
_SCHEME = "Bearer "
AUDIT_REFUSALS_PER_S = 10
"""Refused calls logged a second at most; the rest are counted in one line."""


def load_policy(path: Path = POLICY_PATH) -> dict[str, frozenset[str]]:
    """Method path -> roles allowed; ValueError if an entry names an unknown role."""
    document = tomllib.loads(path.read_text())
    policy: dict[str, frozenset[str]] = {}
    for method, roles in document.items():
        if not isinstance(roles, list) or not set(roles) <= {*ROLES, ANYONE}:
            raise ValueError(f"{path}: {method}: roles must be a list among {(*ROLES, ANYONE)}")
        policy[method] = frozenset(roles)
    return policy


class Gate:
    """Admits a call or says why not."""

    def __init__(
        self,
        tokens: TokenBook,
        policy: Mapping[str, frozenset[str]],
        anyone_admitted: bool = True,
    ) -> None:
        self._tokens = tokens
        self._policy = policy
        self._audit = Audit()
        self._anyone_admitted = anyone_admitted
        """False: the policy's ``anyone`` methods (health) need a token too, of any role."""
        self._streams: dict[asyncio.Task[Any], bytes] = {}
        """Tasks serving a stream, and the digest of the token that opened each."""
        self._revoked: set[asyncio.Task[Any]] = set()
        self._open: Counter[str] = Counter()
        """Open streams by identity name (for ``max_streams``)."""
        self._buckets: dict[str, TokenBucket] = {}
        """Call-rate buckets by identity name, for identities with a limit."""
        self._swept = 0
        """The tokens' generation the open streams were last checked against."""

    def check_room(self, identity: Identity | None) -> None:
        """CapReached if ``identity`` already holds its ``max_streams`` (RELIABILITY R7)."""
        if identity is None or identity.max_streams is None:
            return
        if self._open[identity.name] >= identity.max_streams:
            raise CapReached(identity.name, "streams", identity.max_streams)

    @contextmanager
    def revocable(self, identity: Identity | None) -> Iterator[None]:
        """While in it, revoking ``identity``'s token cancels the current task (a stream),
        and the stream counts against the identity's ``max_streams``."""
        task = asyncio.current_task()
        if identity is None or task is None:
            yield
            return
        self._streams[task] = identity.digest
        self._open[identity.name] += 1
        try:
            yield
        finally:
            self._streams.pop(task, None)
            self._revoked.discard(task)
            self._open[identity.name] -= 1
            if not self._open[identity.name]:
                del self._open[identity.name]

    def was_revoked(self) -> bool:
        """True if the current task was cancelled because its token was revoked."""
        return asyncio.current_task() in self._revoked

    def sweep(self) -> int:
        """Re-read the tokens if they changed, and cancel the streams of revoked ones.

        By generation, not by this refresh's answer: a call may have read the new
        file first (its lookup refreshes too), and its streams must still end.
        """
        self._tokens.refresh(force=True)  # once a second anyway: revocation within 1 s
        self._audit.flush()
        if self._tokens.generation == self._swept:
            return 0
        self._swept = self._tokens.generation
        ended = 0
        for task, digest in list(self._streams.items()):
            if not self._tokens.holds(digest) and task not in self._revoked:
                self._revoked.add(task)
                task.cancel()
                ended += 1
        if ended:
            log.info("tokens.streams_ended", streams=ended)
        return ended

    async def watch_revocations(self) -> None:
        """Sweep every ``REVOCATION_CHECK_S`` until cancelled."""
        while True:
            await asyncio.sleep(REVOCATION_CHECK_S)
            self.sweep()

    def require(self, methods: Iterable[str]) -> None:
        """Fail start-up if a served method has no policy entry (deny by default)."""
        missing = sorted(set(methods) - set(self._policy))
        if missing:
            raise RuntimeError(f"methods without an entry in {POLICY_PATH.name}: {missing}")

    def admit(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]],
        peer: str = "",
        certificate_names: Callable[[], Iterable[bytes] | None] | None = None,
    ) -> Identity | None:
        """The caller's identity (None for an ``anyone`` method); raises
        Unauthenticated, PermissionDenied or CallRateExceeded.

        A call without an ``authorization`` header is the identity of its mTLS
        client certificate, if an entry names one of ``certificate_names`` (its
        SANs); one with a header is the header's, valid or not. ``peer`` is for
        the audit log.
        """
        roles = self._policy.get(method, frozenset())
        if ANYONE in roles and self._anyone_admitted:
            return None
        metadata = tuple(metadata)
        if (
            certificate_names is not None
            and self._tokens.has_certificates
            and not any(key == "authorization" for key, _ in metadata)
        ):
            identity = self._tokens.lookup_certificate(certificate_names() or ())
        else:
            identity = self._identify(metadata)
        if identity is None:
            self._audit.refused(method, peer, "UNAUTHENTICATED", None)
            raise Unauthenticated()
        if identity.role not in roles and ANYONE not in roles:
            self._audit.refused(method, peer, "PERMISSION_DENIED", identity.name)
            raise PermissionDenied(f"a {identity.role} token may not call {method}")
        if identity.calls_per_second is not None:
            self._spend(identity, identity.calls_per_second)
        if roles == _ADMIN_ONLY:
            log.info("audit.admin_call", method=method, caller=identity.name, peer=peer)
        return identity

    def _spend(self, identity: Identity, per_second: float) -> None:
        """One call from ``identity``'s bucket, or CallRateExceeded (RELIABILITY S8)."""
        bucket = self._buckets.get(identity.name)
        if bucket is None or bucket.per_second != per_second:  # new, or its limit changed
            burst = identity.burst or default_burst(per_second)
            bucket = self._buckets[identity.name] = TokenBucket(per_second, burst)
        now = time.monotonic()
        if not bucket.available(now):
            raise CallRateExceeded(identity.name, bucket.seconds_until_token(now))
        bucket.take(now)

    def _identify(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity | None:
        values = [v for k, v in metadata if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        value = values[0]
        if not value.startswith(_SCHEME) or len(value) == len(_SCHEME):
            return None  # "bearer x", "BEARER x", "Bearer " and other schemes alike
        return self._tokens.lookup(value[len(_SCHEME) :])


_ADMIN_ONLY = frozenset({"admin"})


class Audit:
    """Refused calls as ``audit.refused`` lines, at most ``AUDIT_REFUSALS_PER_S`` a second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window_started = float("-inf")
        self._logged = 0
        self._suppressed = 0

    def refused(self, method: str, peer: str, code: str, caller: str | None) -> None:
        """One refused call: by whom (None: no valid token), what, from where."""
        now = self._clock()
        if now - self._window_started >= 1.0:
            self.flush()
            self._window_started, self._logged = now, 0
        if self._logged >= AUDIT_REFUSALS_PER_S:
            self._suppressed += 1
            return
        self._logged += 1
        log.warning("audit.refused", method=method, code=code, caller=caller, peer=peer)

    def flush(self) -> None:
        """Log how many refusals went unlogged since the last count (the gate's sweep
        calls this every second, so a flood that stops is still counted)."""
        if self._suppressed:
            log.warning("audit.refused_suppressed", count=self._suppressed)
            self._suppressed = 0


class NodeSlots:
    """Distinct node ids connected with each worker token (``max_nodes``, RELIABILITY R7).

    By node id, not by stream: a node reconnecting while the coordinator still
    holds its old stream is the same node, and must not be refused for it.
    """

    def __init__(self) -> None:
        self._held: dict[str, Counter[str]] = {}

    def take(self, identity: Identity | None, node_id: str) -> Callable[[], None]:
        """A slot for ``node_id``, and the function that gives it back; CapReached if
        the token has none left."""
        if identity is None or identity.max_nodes is None:
            return _nothing
        held = self._held.setdefault(identity.name, Counter())
        if node_id not in held and len(held) >= identity.max_nodes:
            raise CapReached(identity.name, "nodes", identity.max_nodes)
        held[node_id] += 1

        def release() -> None:
            held[node_id] -= 1
            if not held[node_id]:
                del held[node_id]

        return release


def _nothing() -> None:
    pass


__all__ = ["ANYONE", "CALLER", "POLICY_PATH", "Audit", "Gate", "NodeSlots", "load_policy"]
