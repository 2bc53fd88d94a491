"""A real, throwaway PostgreSQL server for tests: ``initdb`` into a temp dir, serve on loopback.

Tests of the PostgreSQL store run against the real server, never a mock, so they see
real locking, real transactions and real connection loss. ``PostgresServer`` owns one
such server for its lifetime::

    with PostgresServer() as pg:
        url = pg.create_database("t1")  # postgresql://dtq@127.0.0.1:PORT/t1
        ...
        pg.restart_immediate()  # RELIABILITY D5: the server crashes and recovers

Binaries come from ``DTQ_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/*/bin`` (``make test`` installs Debian's ``postgresql`` when
there is none). The server listens on 127.0.0.1 only, trusts every connection
(it is reachable only from this machine and holds nothing but test data), and
lives in a fresh temp dir removed by ``stop()``.

PostgreSQL refuses to run as root. When the tests run as root, every server
command runs as an unprivileged system user instead (``postgres`` if it exists,
else ``nobody``), and the temp dir is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from dtq_server.store.postgres import LEADER_LOCK
from tests.harness import free_loopback_port

PG_BIN_ENV = "DTQ_PG_BIN"
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
DB_USER = "dtq"

# Tried in order when running as root: Debian's server package creates `postgres`;
# `nobody` exists everywhere else.
UNPRIVILEGED_USERS = ("postgres", "nobody")

# A collision on the probed port is rare (another process must grab it between our
# probe and the server's bind), so a few attempts are plenty.
PORT_ATTEMPTS = 5

# Settings appended to postgresql.conf. They live in the config file rather than on
# the command line so that `pg_ctl restart` brings the server back exactly as it was.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "'32MB'",
    # Durability against an OS crash is irrelevant for a test server; a crashed
    # *process* (restart_immediate) still loses nothing, the kernel has the WAL.
    "fsync": "off",
    "full_page_writes": "off",
    "timezone": "'UTC'",
    "log_line_prefix": "'%m [%p] %d '",
}


class PostgresServerError(RuntimeError):
    """The test PostgreSQL server could not be set up, started, restarted or stopped."""


class PostgresBinariesNotFound(PostgresServerError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) on this machine."""


def find_pg_bin() -> Path:
    """The directory holding ``initdb``: ``$DTQ_PG_BIN``, else the newest Debian install.

    Raises ``PostgresBinariesNotFound`` with a message saying how to get them, because a
    silently skipped database test is a test that never runs in CI.
    """
    configured = os.environ.get(PG_BIN_ENV)
    if configured:
        bin_dir = Path(configured)
        if not (bin_dir / "initdb").is_file():
            raise PostgresBinariesNotFound(
                f"{PG_BIN_ENV}={configured} has no initdb; point it at a PostgreSQL bin directory"
            )
        return bin_dir
    candidates = [p.parent for p in DEBIAN_PG_ROOT.glob("*/bin/initdb") if p.is_file()]
    if not candidates:
        raise PostgresBinariesNotFound(
            f"no PostgreSQL server binaries under {DEBIAN_PG_ROOT}/*/bin and {PG_BIN_ENV} is "
            "unset: run `make test` (it installs them), or `apt-get install postgresql`, "
            f"or set {PG_BIN_ENV} to a directory holding initdb, pg_ctl and postgres"
        )
    return max(candidates, key=lambda d: _version_key(d.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    """Order version dirs numerically ("9.6" < "15"), non-numeric names first."""
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (-1,)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresServerError(
        f"running as root, and PostgreSQL refuses to; none of the users "
        f"{', '.join(UNPRIVILEGED_USERS)} exists to run it as"
    )


class PostgresServer:
    """One PostgreSQL server in its own temp dir, on ``127.0.0.1:port``, user ``dtq``.

    ``start()`` runs initdb and starts the server, returning once it accepts
    connections; ``stop()`` shuts it down and deletes everything. Every wait is
    bounded by ``timeout_s``.
    """

    def __init__(self, bin_dir: Path | None = None, *, timeout_s: float = 30.0) -> None:
        self.bin_dir = bin_dir if bin_dir is not None else find_pg_bin()
        self.timeout_s = timeout_s
        self.port = 0
        self._base: Path | None = None
        # None when we may run PostgreSQL ourselves; the account to switch to when root.
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    # -- paths ---------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The temp dir holding the cluster, its log and its Unix socket."""
        if self._base is None:
            raise PostgresServerError("the server is not started")
        return self._base

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        """Where the server writes its log; its tail is quoted in startup errors."""
        return self.base_dir / "postgres.log"

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """Create a cluster in a fresh temp dir and start serving it; returns ``self``."""
        if self._base is not None:
            raise PostgresServerError("the server is already started")
        # mkdtemp rather than pytest's tmp_path: when root hands the server to another
        # user, every parent must be traversable by it, and pytest-of-root is 0700.
        self._base = Path(tempfile.mkdtemp(prefix="dtq-pg-"))
        try:
            self._prepare_base()
            self._initdb()
            self._start_on_free_port()
        except BaseException:
            self._remove_base()
            raise
        return self

    def stop(self) -> None:
        """Shut the server down (fast mode: sessions are cut) and delete its temp dir.

        Idempotent. If ``pg_ctl stop`` fails or times out the postmaster is killed,
        so a broken server never outlives the test session.
        """
        if self._base is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                try:
                    self._pg_ctl("stop", "-m", "fast")
                except PostgresServerError:
                    self._kill_postmaster()
        finally:
            self._remove_base()

    def restart_immediate(self) -> None:
        """Restart as after a crash (``pg_ctl restart -m immediate``), on the same port.

        Immediate mode kills every backend without a checkpoint, so existing
        connections break and the server runs crash recovery before accepting new
        ones: RELIABILITY scenario D5. Returns once it accepts connections again.
        """
        self._pg_ctl("restart", "-m", "immediate", "-l", str(self.log_file))
        self._wait_until_accepting()

    def stop_immediate(self) -> None:
        """Stop as in a crash (every backend killed, no checkpoint), keeping the data.

        For tests that need the database to stay away while they look (``resume``
        brings it back on the same port).
        """
        self._pg_ctl("stop", "-m", "immediate")

    def resume(self) -> None:
        """Start the server stopped by :meth:`stop_immediate`; returns once it accepts."""
        self._pg_ctl("start", "-l", str(self.log_file))
        self._wait_until_accepting()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` over TCP on loopback (tests use loopback only)."""
        if not self.port:
            raise PostgresServerError("the server is not started")
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(
        self, dbname: str = "postgres", *, autocommit: bool = False, connect_timeout_s: int = 0
    ) -> psycopg.Connection[TupleRow]:
        """A psycopg connection to ``dbname``, bounded so a wedged server fails fast.

        ``connect_timeout_s`` defaults to the server's ``timeout_s``.
        """
        timeout_s = connect_timeout_s or max(1, int(self.timeout_s))
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit, connect_timeout=timeout_s)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its URL."""
        # CREATE DATABASE cannot run inside a transaction block, hence autocommit.
        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, cutting any sessions a test left open on it."""
        with self.connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- internals -----------------------------------------------------------

    def _prepare_base(self) -> None:
        if self._run_as is None:
            return
        # 0o755 so the server's user can reach into the dir; it then owns it, so
        # initdb can create the data dir (which it makes 0700 itself).
        self.base_dir.chmod(0o755)
        os.chown(self.base_dir, self._run_as.pw_uid, self._run_as.pw_gid)

    def _initdb(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            DB_USER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # a test cluster does not outlive a crash of this machine
            "--no-instructions",
        )
        settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{self.base_dir}'"}
        lines = [f"{key} = {value}" for key, value in settings.items()]
        # The port lives in its own file so a retry after a collision can rewrite it.
        lines.append("include = 'dtq_port.conf'")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/postgres.py\n" + "\n".join(lines) + "\n")

    def _start_on_free_port(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = free_loopback_port()
            port_conf = self.data_dir / "dtq_port.conf"
            port_conf.write_text(f"port = {self.port}\n", encoding="utf-8")
            if self._run_as is not None:
                os.chown(port_conf, self._run_as.pw_uid, self._run_as.pw_gid)
            try:
                self._pg_ctl("start", "-l", str(self.log_file))
            except PostgresServerError:
                if "could not bind" in self._log_tail():
                    continue  # someone took the port between our probe and the bind
                raise
            self._wait_until_accepting()
            return
        self.port = 0
        raise PostgresServerError(f"no free port after {PORT_ATTEMPTS} attempts")

    def _wait_until_accepting(self) -> None:
        """Poll with real connections until one succeeds or the deadline passes.

        ``pg_ctl -w`` already waited for the postmaster to report ready; this
        proves a TCP client on loopback gets in, which is what tests rely on.
        """
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                with self.connect(connect_timeout_s=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise PostgresServerError(
                        f"server on port {self.port} not accepting connections after "
                        f"{self.timeout_s:.0f} s: {exc}\n{self._log_tail()}"
                    ) from exc
            time.sleep(0.05)  # poll interval, not synchronisation

    def _pg_ctl(self, *args: str) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"),
            *args,
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(max(1, int(self.timeout_s))),
        )

    def _run(self, *argv: str) -> None:
        """Run a server command, as the unprivileged user when we are root."""
        # PG* variables from the caller's shell (PGDATA, PGPORT, ...) would
        # silently redirect pg_ctl and initdb; drop them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        run_as = self._run_as
        command = argv
        if run_as is not None:
            env["HOME"] = str(self.base_dir)
            # setpriv (util-linux) switches user in the child, not subprocess's user=,
            # group= and extra_groups=: those make Python fork() instead of vfork(),
            # and a fork of a process with live gRPC threads runs gRPC's fork handlers
            # in the child, which crashed it before exec (initdb "exited -11").
            command = (
                "setpriv", f"--reuid={run_as.pw_uid}", f"--regid={run_as.pw_gid}",
                "--clear-groups", "--", *argv,
            )  # fmt: skip
        try:
            done = subprocess.run(
                command,
                # The unprivileged user may not be able to read our cwd, and initdb
                # and pg_ctl fail at startup if they cannot resolve it.
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # pg_ctl's own -t bounds its wait; this bounds everything else.
                timeout=self.timeout_s + 10,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresServerError(
                f"{Path(argv[0]).name} {' '.join(argv[1:2])} timed out\n{self._log_tail()}"
            ) from exc
        if done.returncode != 0:
            raise PostgresServerError(
                f"{Path(argv[0]).name} {' '.join(argv[1:2])} exited {done.returncode}:\n"
                f"{done.stdout.strip()}\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "server log tail:\n" + "\n".join(text.splitlines()[-lines:])

    def _kill_postmaster(self) -> None:
        # Last resort when pg_ctl cannot stop it: backends exit on their own once
        # they see the postmaster is gone.
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def _remove_base(self) -> None:
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
        self._base = None
        self.port = 0


def url_via(url: str, address: str) -> str:
    """``url`` (one of :meth:`PostgresServer.dsn`'s) reaching the server through ``address``
    (``host:port`` of a proxy in front of it): the same user and database."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{address}" if user else address))


def leader_backend(url: str) -> int:
    """The pid of the backend holding DTQ's leader lock in the database at ``url``."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            (LEADER_LOCK,),
        ).fetchone()
    assert row is not None, "no coordinator holds the leader lock"
    return int(row[0])
