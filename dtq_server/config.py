"""Coordinator configuration: one frozen dataclass, built by the CLI from flags > env > defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dtq import loops
from dtq.loops import EventLoop
from dtq.tls import ServerTls, is_loopback
from dtq_server.failpoints import Failpoints

MiB = 1024 * 1024

_DURATIONS = (
    "shutdown_grace_s",
    "retry_backoff_s",
    "retry_backoff_max_s",
    "max_connection_age_s",
    "max_connection_age_grace_s",
    "result_ttl_s",
    "sweep_interval_s",
    "max_call_s",
)
"""ServerConfig's durations besides the heartbeat pair (checked on its own)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the coordinator needs; passed down, never read from globals."""

    listen: str = "127.0.0.1:50051"
    """Address to bind; port 0 picks a free port (tests)."""
    tls: ServerTls | None = None
    """Serve TLS (mTLS with a client CA); None: plaintext, on loopback unless ``insecure``."""
    insecure: bool = False
    """Allow plaintext on a non-loopback address (a network trusted by other means)."""
    tokens_file: Path | None = None
    """Check every call's bearer token against this file (see :mod:`dtq_server.tokens`)
    and the role policy (:mod:`dtq_server.auth`); None: every caller may call anything."""
    metrics_listen: str | None = None
    """Serve Prometheus metrics on this ``host:port`` (see :mod:`dtq_server.metrics`); None: off."""
    health_unauthenticated: bool | None = None
    """With a tokens file, whether health checks need no token; None: only on loopback."""
    data_dir: Path = Path("dtq-data")
    """Directory holding the SQLite database (created if missing)."""
    database_url: str | None = None
    """Keep the queue in this PostgreSQL database (``postgresql://...``) instead of the
    SQLite file in ``data_dir``; coordinators sharing it elect one leader."""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """SQLite durability. FULL survives power loss; NORMAL only process crashes."""
    heartbeat_interval_s: float = 2.0
    """How often nodes heartbeat."""
    heartbeat_timeout_s: float = 10.0
    """Silence after which a node is dead and its leases are requeued."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long results of running tasks are still accepted."""
    default_max_attempts: int = 3
    """Attempts for a task that does not say."""
    max_lease_expiries: int = 5
    """Leases a task may lose to dead nodes before it is dead-lettered (poison task)."""
    retry_backoff_s: float = 1.0
    """First retry delay for a task that does not say; doubles per failure."""
    retry_backoff_max_s: float = 300.0
    """Upper bound of a retry delay."""
    max_payload_bytes: int = 1 * MiB
    """Largest task payload accepted."""
    max_result_bytes: int = 1 * MiB
    """Largest result accepted; a larger one fails the task with RESULT_TOO_LARGE."""
    max_message_bytes: int = 4 * MiB
    """gRPC receive limit per message (the gRPC default)."""
    max_connection_age_s: float | None = None
    """Rotate client connections after this long (GOAWAY; streams resume); None: never."""
    max_connection_age_grace_s: float = 30.0
    """How long calls on a rotated connection may still run."""
    result_ttl_s: float = 7 * 86_400.0
    """How long finished tasks are kept when they do not say (then swept)."""
    sweep_interval_s: float = 60.0
    """How often expired finished tasks are deleted."""
    max_call_s: float | None = 60.0
    """Longest a unary call may run, whatever deadline (or none) its client set: past it,
    DEADLINE_EXCEEDED (reason MAX_CALL_TIME), so a stuck store cannot pile up calls
    forever. Streams (watches, the submit and worker streams) are not capped. None: no cap."""
    strict_task_types: bool = False
    """Refuse submits (and schedules) of a (queue, type) no node has ever declared."""
    port_file: Path | None = None
    """If set, the bound address is written here once serving (for scripts and tests)."""
    event_loop: EventLoop = "auto"
    """``auto`` (uvloop when installed), ``uvloop`` or ``asyncio`` (see :mod:`dtq.loops`)."""
    failpoints: Failpoints = field(default_factory=Failpoints)
    """Crash points for fault-injection tests (``DTQ_FAILPOINT``); none by default."""

    @property
    def reaper_tick_s(self) -> float:
        """How often dead nodes and due retries are looked for."""
        return min(0.25, self.heartbeat_timeout_s / 8)

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "dtq.sqlite3"

    @property
    def health_is_open(self) -> bool:
        """True if health checks need no token (they never do without a tokens file).

        Open on loopback by default, where the prober is local (a kubelet's exec
        probe, a sidecar); beyond loopback the serving status tells a scanner that
        a queue is there, so there it needs a token unless asked otherwise.
        """
        if self.health_unauthenticated is not None:
            return self.health_unauthenticated
        return is_loopback(self.listen)

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval_s < self.heartbeat_timeout_s:  # NaN fails too
            raise ValueError("heartbeat timeout must exceed the (positive) heartbeat interval")
        if not 1 <= self.default_max_attempts <= 100:
            raise ValueError("default max attempts must be 1-100")
        loops.resolve(self.event_loop)  # ValueError if it asks for a loop that is missing
        for served, address in (("", self.listen), ("metrics in ", self.metrics_listen)):
            plaintext = self.tls is None and not self.insecure
            if address is not None and plaintext and not is_loopback(address):
                raise ValueError(
                    f"refusing to serve {served}plaintext on {address}, which is not loopback: "
                    "give --tls-cert and --tls-key, or --insecure on a network you trust"
                )
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("the database URL must start with postgresql:// (or postgres://)")
        if self.max_call_s is not None and self.max_call_s <= 0:
            raise ValueError("max call time must be positive (None: no cap)")
        for name in _DURATIONS:  # what the flags refuse (dtq.cli_types), for callers in code
            value = getattr(self, name)
            if value is not None and not 0 <= value < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be a finite number of seconds, at least 0")
        if self.max_payload_bytes > self.max_message_bytes - 64 * 1024:
            raise ValueError("max payload must leave 64 KiB of room under the message limit")
