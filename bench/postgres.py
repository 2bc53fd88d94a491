"""``make bench-postgres``: P1-P3 with every coordinator on PostgreSQL.

``bench.run --postgres`` starts a PostgreSQL server for the run (the test
suite's :class:`tests.postgres.PostgresServer`: ``initdb`` into a temp dir,
loopback only), turns durable commits back on (the tests run it with
``fsync=off``), and names it in ``DTQ_BENCH_POSTGRES``; every benchmark
coordinator then gets a database of its own (:func:`store_args`), as each gets
a fresh SQLite directory otherwise. P4 and P5 restart a coordinator on its data
or need none, so they stay on SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ENV = "DTQ_BENCH_POSTGRES"
"""The server's admin URL (its ``postgres`` database) while a run uses PostgreSQL."""
_created: list[str] = []
"""The databases this run created, one per coordinator (reported in the JSON file)."""


def store_args() -> list[str]:
    """``dtq-server`` arguments for a benchmark coordinator's store: a fresh database
    when the run uses PostgreSQL, none (SQLite in its data dir) otherwise."""
    admin = os.environ.get(ENV)
    if not admin:
        return []
    name = f"bench_{os.getpid()}_{len(_created)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    _created.append(name)
    return ["--database-url", admin.rsplit("/", 1)[0] + "/" + name]


@contextmanager
def server() -> Iterator[str]:
    """A PostgreSQL server with durable commits for this run; yields its admin URL."""
    from tests.postgres import PostgresServer  # noqa: PLC0415 - a dev-only module

    with PostgresServer() as pg:
        with pg.connect(autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET fsync = on")
            conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        pg.restart_immediate()
        os.environ[ENV] = pg.dsn("postgres")
        try:
            yield pg.dsn("postgres")
        finally:
            os.environ.pop(ENV, None)


def databases_created() -> list[str]:
    """The databases the run's coordinators were given so far."""
    return list(_created)
