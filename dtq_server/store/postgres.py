"""The shared store: PostgreSQL, for coordinators on several hosts over one queue.

One coordinator leads at a time; the others stand by. Leading means holding a
session-level advisory lock on the connection every write goes through: a
write can only commit while its coordinator holds the lock, so two coordinators
never both change the queue (no split brain, whatever the network does). A
standby polls for the lock and does not listen until it has it, so nodes and
clients that list every coordinator (``ipv4:10.0.0.1:50051,10.0.0.2:50051``)
reach whichever one leads. Taking over is a coordinator start on the same
data: unfinished leases get a fresh grace (RELIABILITY C4), nodes reconnect and
resume, and attempt numbers fence what the old leader had handed out.

The lock goes with the connection. When PostgreSQL restarts (or the connection
drops), the leader reconnects and takes the lock again, but only if no other
coordinator led in between (the epoch in ``dtq_coordinator`` is still its own);
otherwise its memory of the queue is stale, and it steps down
(``on_leadership_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import pq

from dtq_server.errors import StoreUnavailable
from dtq_server.store import pg_schema
from dtq_server.store.base import StoreCorrupt
from dtq_server.store.connection import Connection, Cursor
from dtq_server.store.sql_store import SqlStore
from dtq_server.store.writer import GroupCommitWriter

T = TypeVar("T")
log = structlog.get_logger(__name__)

LEADER_LOCK = 0x44_54_51_00
"""The advisory lock key the leading coordinator holds ("DTQ\\0")."""
LIVENESS_S = 1.0
"""How often the leader looks at its write connection while nothing is written: a
database that went away turns health NOT_SERVING within this, not at the next submit."""
STANDBY_POLL_S = 0.25
"""How often a standby (or a coordinator waiting for its database) tries again."""
CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,  # the writer runs its own BEGIN/COMMIT around each group
    "connect_timeout": 5,
    "application_name": "dtq-server",
    # A peer that vanished without closing the connection is found in ~10 s.
    "keepalives": 1,
    "keepalives_idle": 4,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    # Data sent and not acknowledged for 10 s (the database host vanished) breaks it too.
    "tcp_user_timeout": 10_000,
}


SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 4",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
)
"""The server's side of the same: the leader lock is held by the leader's session,
which the server ends only once it finds the peer gone. With the operating
system's default (first probe after 2 hours), a leader cut off without a reset
would keep the lock, and the standbys waiting, that long; with these, ~10 s."""
LEADER_IDLE_TIMEOUT = "SET idle_session_timeout = '5s'"
"""On the write connection only: the leader writes at least every LIVENESS_S, so a
session silent for 5 s belongs to a leader that is frozen or cut off (even behind
a proxy that keeps the TCP connection up): the server ends it, freeing the lock
for a standby. If the leader comes back, it finds the lock or the epoch taken and
steps down."""


class NotLeader(Exception):
    """Another coordinator holds (or held, since this one last did) the leader lock."""


@functools.lru_cache(maxsize=1024)
def _to_psycopg(sql: str) -> str:
    """The store's ``?`` parameter marks as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection speaking the store's :class:`Connection` protocol."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        # Always a sequence, even empty: psycopg reads %% as % only when given one.
        return self._conn.execute(_to_psycopg(sql), parameters or ())

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        cursor = self._conn.cursor()
        cursor.executemany(_to_psycopg(sql), parameters)
        return cursor

    def script(self, sql: str) -> None:
        """Run several statements without parameters (DDL)."""
        self._conn.execute(sql.encode())

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        """True once the server or the network dropped the connection."""
        return self._conn.broken or self._conn.closed

    def close(self) -> None:
        self._conn.close()


def _select_one(conn: Connection) -> None:
    conn.execute("SELECT 1")


def _transaction_id(conn: Connection) -> object:
    """The running transaction's id, for ``txid_status`` once its COMMIT went unanswered."""
    return conn.execute("SELECT txid_current()").fetchone()[0]


class PostgresStore(SqlStore):
    """A :class:`~dtq_server.store.base.Store` on a PostgreSQL database."""

    _db_errors = (psycopg.Error,)

    def __init__(
        self,
        url: str,
        on_commit_result: Callable[[bool], None] | None = None,
        result_ttl_s: float = 7 * 86_400.0,
        on_leadership_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._url = url
        self._on_commit_result = on_commit_result
        self._result_ttl_s = result_ttl_s
        self._on_leadership_lost = on_leadership_lost
        self._identity = f"{socket.gethostname()}:{os.getpid()}"
        self._epoch: int | None = None
        """The leader epoch this coordinator took; None until it leads."""
        self._lost = False
        """True once another coordinator took over: this store never writes again."""
        self._unanswered: object = None
        """The transaction id of a batch whose COMMIT got no answer, until checked."""
        self._session: tuple[int, object] | None = None
        """(process id, start time) of the server session of the last write connection."""
        self._writer = self._new_writer()
        self._liveness: asyncio.Task[None] | None = None

    @property
    def epoch(self) -> int | None:
        """How many times a coordinator took the lead, counting this one (None: standby)."""
        return self._epoch

    def _new_writer(self) -> GroupCommitWriter:
        return GroupCommitWriter(
            self._connect_writer,
            self._on_commit_result,
            errors=(psycopg.Error, NotLeader),
            begin="BEGIN",
            is_broken=self._is_broken,
            mark_commit=_transaction_id,
            on_commit_unanswered=self._commit_unanswered,
        )

    # -- connections -------------------------------------------------------

    def _connect(self) -> PgConnection:
        conn = PgConnection(psycopg.connect(self._url, **CONNECT_OPTIONS))
        try:
            for setting in SERVER_KEEPALIVES:
                conn.execute(setting)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_writer(self) -> PgConnection:
        """The write connection, holding the leader lock (raises NotLeader if it cannot)."""
        if self._lost:
            raise NotLeader("this coordinator lost the lead; it is stepping down")
        conn = self._connect()
        try:
            conn.execute(LEADER_IDLE_TIMEOUT)
            if not self._take_lock(conn):
                if self._epoch is not None:  # this one led: now another does
                    self._lose_lead(f"another coordinator leads since epoch {self._epoch}")
                raise NotLeader("another coordinator leads this database")
            self._session = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            if self._epoch is None:
                self._epoch = self._take_lead(conn)
            else:
                self._check_still_leading(conn)
                self._check_unanswered(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _take_lock(self, conn: PgConnection) -> bool:
        """Take the leader lock on ``conn``; False if another session holds it.

        That session may be this coordinator's own last write connection: after
        a cut (a reset the server has not seen yet, a network that dropped the
        connection silently) the server keeps it, and the lock, until it notices,
        seconds or, idle in a transaction, minutes later. Such a session is dead to
        us, so it is ended (its open transaction rolls back) and the lock taken
        again, instead of mistaking ourselves for another leader. It is found by
        its process id *and* start time: a process id alone may be reused by a
        session of another coordinator.
        """
        take = "SELECT pg_try_advisory_lock(?)"
        if conn.execute(take, (LEADER_LOCK,)).fetchone()[0]:
            return True
        if self._session is None:
            return False
        pid, started = self._session
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE pid = ? AND backend_start = ?",
            (pid, started),
        ).fetchone()
        if ended is None or not ended[0]:
            return False
        log.warning("store.ended_own_stale_session", pid=pid)
        return bool(conn.execute(take, (LEADER_LOCK,)).fetchone()[0])

    def _take_lead(self, conn: PgConnection) -> int:
        """Check or create the schema and start a new leader epoch (holding the lock).

        Like the SQLite store, it never builds over what it does not recognise: a
        database with a ``tasks`` table but no ``dtq_coordinator`` row is someone else's.
        """
        found = conn.execute(
            "SELECT to_regclass('dtq_coordinator') IS NOT NULL, to_regclass('tasks') IS NOT NULL"
        ).fetchone()
        version = None
        if found[0]:
            row = conn.execute("SELECT schema_version FROM dtq_coordinator").fetchone()
            version = None if row is None else row[0]
        if version is None and found[1]:
            raise StoreCorrupt("the database has a tasks table but is not a DTQ database")
        known = pg_schema.SCHEMA_VERSION
        if version is not None and version > known:
            raise StoreCorrupt(
                f"the database has DTQ schema version {version}; this DTQ knows {known}"
            )
        conn.script(pg_schema.SCHEMA)
        if version is None:
            conn.execute("INSERT INTO dtq_coordinator (schema_version, leader_epoch) VALUES (1, 0)")
            version = 1
        for number, migration in enumerate(pg_schema.MIGRATIONS[version - 1 :], start=version + 1):
            # One transaction each (PostgreSQL's DDL is transactional): a migration
            # that fails leaves the database at the version before it.
            conn.script(
                f"BEGIN; {migration}; UPDATE dtq_coordinator SET schema_version = {number}; COMMIT;"
            )
            log.info("store.migrated", version=number)
        epoch: int = conn.execute(
            "UPDATE dtq_coordinator SET leader_epoch = leader_epoch + 1, leader = ?, "
            "leader_since = ? RETURNING leader_epoch",
            (self._identity, time.time()),
        ).fetchone()[0]
        log.info("store.leading", epoch=epoch, leader=self._identity)
        return epoch

    def _check_still_leading(self, conn: PgConnection) -> None:
        """After a reconnect: lead on only if no other coordinator led meanwhile."""
        epoch = conn.execute("SELECT leader_epoch FROM dtq_coordinator").fetchone()[0]
        if epoch == self._epoch:
            log.info("store.leading_again", epoch=epoch)
            return
        reason = f"coordinator epoch {epoch} led since this one (epoch {self._epoch})"
        self._lose_lead(reason)
        raise NotLeader(reason)

    def _commit_unanswered(self, transaction_id: object) -> None:
        """A COMMIT got no answer; the next connection finds out whether it was stored."""
        self._unanswered = transaction_id

    def _check_unanswered(self, conn: PgConnection) -> None:
        """After a reconnect: stand down if a batch its callers heard failed was stored.

        Memory then disagrees with the database (a task stored that is not on the
        board, or finished while memory thinks it runs). Leading again from a fresh
        start reloads the queue from the database, as a takeover does. A batch that
        was rolled back (the usual case: the server went away before it committed)
        changes nothing, and this coordinator leads on.
        """
        transaction_id = self._unanswered
        if transaction_id is None:
            return
        try:
            status = conn.execute("SELECT txid_status(?)", (transaction_id,)).fetchone()[0]
        except psycopg.errors.InvalidParameterValue:
            # "transaction ID ... is in the future": the server restarted (crashed, or
            # `pg_ctl restart -m immediate`) before the batch's WAL reached its disk, so
            # the id was handed out again from below it. A commit record would have
            # carried the id past that point: the batch was not stored. (Asking again
            # would fail the same way for ever: chaos D5 met it.)
            status = "aborted"
        self._unanswered = None  # known now (a failed query above leaves it to the next try)
        if status == "aborted":
            log.info("store.unanswered_commit_rolled_back", transaction_id=transaction_id)
            return
        log.warning("store.unanswered_commit_stored", transaction_id=transaction_id, status=status)
        reason = f"a batch whose callers heard it failed is {status or 'of unknown fate'}"
        self._lose_lead(f"{reason}: leading again from what the database holds")
        raise NotLeader(reason)

    def _lose_lead(self, reason: str) -> None:
        """Tell the owner (once) that this coordinator no longer leads: it must stop serving."""
        if not self._lost:
            self._lost = True
            log.error("store.leadership_lost", epoch=self._epoch, reason=reason)
            if self._on_leadership_lost is not None:
                self._on_leadership_lost()

    def _open_reader(self) -> PgConnection:
        return self._connect()

    def _is_broken(self, conn: Connection) -> bool:
        return isinstance(conn, PgConnection) and conn.broken

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Wait until this coordinator leads (a standby waits here), then open."""
        logged = False
        while True:
            try:
                await asyncio.to_thread(self._writer.start)
                self._liveness = asyncio.get_running_loop().create_task(self._watch_liveness())
                break
            except (NotLeader, psycopg.OperationalError) as exc:
                if not logged:  # once: a standby may wait for hours
                    logged = True
                    log.info("store.standby", reason=str(exc).strip())
            self._writer = self._new_writer()  # a writer's thread starts only once
            await asyncio.sleep(STANDBY_POLL_S)
        await self._open_readers()

    async def _watch_liveness(self) -> None:
        """Run an empty write every LIVENESS_S: a dropped connection fails it, which
        reports the store unhealthy (and the coordinator's probe then reconnects)."""
        while True:
            await asyncio.sleep(LIVENESS_S)
            with contextlib.suppress(StoreUnavailable):
                await self._writer.run(_select_one, outcome_matters=False)

    async def close(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
        await super().close()

    async def check_writable(self) -> None:
        # A real write: a commit of nothing would succeed on a server that cannot write.
        def probe(conn: Connection) -> None:
            conn.execute("UPDATE dtq_coordinator SET probed_at = ?", (time.time(),))

        await self._writer.run(probe, outcome_matters=False)
