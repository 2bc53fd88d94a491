"""The real-PostgreSQL fixtures do what the store tests will rely on."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


def test_server_answers_queries_on_loopback(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://dtq@127.0.0.1:")
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT inet_server_addr()::text, current_user, 6 * 7").fetchone()
    assert row == ("127.0.0.1/32", "dtq", 42)


def test_each_test_database_is_separate(postgres_server: PostgresServer, postgres_url: str) -> None:
    other_url = postgres_server.create_database("t_fixture_other")
    try:
        with psycopg.connect(postgres_url, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE only_here (id int)")
        with psycopg.connect(other_url, connect_timeout=5) as conn:
            found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        assert found == (None,)
    finally:
        postgres_server.drop_database("t_fixture_other")


def test_immediate_restart_cuts_sessions_and_keeps_committed_data(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as setup:
        setup.execute("CREATE TABLE kept (v text)")
        setup.execute("INSERT INTO kept VALUES ('committed')")
    survivor = psycopg.connect(postgres_url, connect_timeout=5)
    try:
        survivor.execute("SELECT 1")
        postgres_server.restart_immediate()
        with pytest.raises(psycopg.OperationalError):
            survivor.execute("SELECT 1")
    finally:
        survivor.close()
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("committed",)]
