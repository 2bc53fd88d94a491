"""The embedded default store: SQLite in WAL mode, ``synchronous=FULL``, group commit."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from dtq_server.store.base import StoreCorrupt
from dtq_server.store.connection import Connection
from dtq_server.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from dtq_server.store.sql_store import SqlStore
from dtq_server.store.writer import GroupCommitWriter

log = structlog.get_logger(__name__)
BUSY_TIMEOUT_MS = 2000
PROBE_BYTES = 1024 * 1024
"""Size of the write-health probe: the default largest payload."""


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SqliteStore(SqlStore):
    """A :class:`~dtq_server.store.base.Store` on one SQLite file.

    Writes go through a :class:`GroupCommitWriter` thread; reads run on a
    separate reader thread (WAL lets them proceed during writes). Nothing here
    blocks the event loop.
    """

    _db_errors = (sqlite3.Error,)

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        on_commit_result: Callable[[bool], None] | None = None,
        result_ttl_s: float = 7 * 86_400.0,
    ) -> None:
        super().__init__()
        self._path = path
        self._result_ttl_s = result_ttl_s
        self._synchronous = synchronous
        self._writer = GroupCommitWriter(
            self._connect_writer, on_commit_result, precheck=self._still_there
        )
        self._identity: tuple[int, int] | None = None
        """(st_dev, st_ino) of the database file the writer opened."""

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            conn = self._open_checked()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self._path} is not a usable database: {exc}") from exc
        self._identity = _file_identity(self._path)
        return conn

    def _still_there(self) -> None:
        """Refuse to commit when the database file was removed, moved or replaced.

        SQLite keeps writing to an open file after its path is gone: everything
        acknowledged from then on would be missing at the next start
        (RELIABILITY D3). One ``stat`` per group commit; the store recovers on its
        own once the file is back where it was.
        """
        if _file_identity(self._path) != self._identity:
            raise sqlite3.OperationalError(f"{self._path} was removed or replaced")

    def _open_checked(self) -> sqlite3.Connection:
        """Open the write connection; create the schema only in a new, empty file."""
        existed = self._path.exists() and self._path.stat().st_size > 0
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreCorrupt(f"{self._path}: could not enable WAL (journal mode {mode})")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if existed and version == 0:
                raise StoreCorrupt(f"{self._path} exists but is not a DTQ database")
            if version > SCHEMA_VERSION:
                raise StoreCorrupt(
                    f"{self._path} has schema version {version}; this DTQ knows {SCHEMA_VERSION}"
                )
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreCorrupt(f"{self._path} failed its integrity check: {check}")
            if version == 0:
                conn.executescript(SCHEMA)
                version = 1
            for number, migration in enumerate(MIGRATIONS[version - 1 :], start=version + 1):
                conn.executescript(f"BEGIN; {migration}; PRAGMA user_version = {number}; COMMIT;")
                log.info("store.migrated", version=number)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        return conn

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._writer.start)
        await self._open_readers()

    async def check_writable(self) -> None:
        # A commit that changes nothing writes nothing, and succeeds on a full disk.
        # The probe writes (and drops again, in the same transaction) a largest-payload
        # blob, so it commits only when a full-size submit could (RELIABILITY D1).
        def probe(conn: Connection) -> None:
            conn.execute("CREATE TABLE dtq_store_probe (data BLOB)")
            conn.execute("INSERT INTO dtq_store_probe VALUES (zeroblob(?))", (PROBE_BYTES,))
            conn.execute("DROP TABLE dtq_store_probe")

        await self._writer.run(probe)


__all__ = ["SqliteStore", "StoreCorrupt"]
