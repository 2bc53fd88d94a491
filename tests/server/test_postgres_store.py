"""PostgresStore on a real PostgreSQL: one leader at a time, and a leader fenced out
of the queue once another coordinator has led.

The rest of the store's behaviour is the SQLite store's: ``make test`` runs the
server suites again with ``DTQ_TEST_STORE=postgres``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
import pytest

from dtq_server.errors import StoreUnavailable
from dtq_server.store import pg_schema, postgres
from dtq_server.store.base import StoreCorrupt
from dtq_server.store.postgres import LEADER_LOCK, PostgresStore
from dtq_server.validation import SpecInput, Violations, validate_spec
from tests.chaos.proxy import FaultProxy
from tests.commit_cut import CommitCutProxy
from tests.harness import server_config
from tests.postgres import PostgresServer, leader_backend, url_via

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]
CONFIG = server_config(Path("unused"))


def new_task(key: str = ""):
    spec = SpecInput("echo", "", b"{}", "", 0, key, None)
    task = validate_spec(spec, "task", CONFIG, Violations())
    assert task is not None
    return task


async def insert_cut(
    store: PostgresStore,
    proxy: CommitCutProxy,
    key: str,
    *,
    deliver_commit: bool = True,
    hold_server: bool = False,
) -> str:
    """Insert one task while ``proxy`` cuts its COMMIT (see ``CommitCutProxy.arm``): the
    store reports it failed. Returns the task's id.

    Each cut lands on a connection the writer has just opened, so the insert statement
    travels as text there (see tests.commit_cut)."""
    proxy.arm(b"INSERT INTO tasks", deliver_commit=deliver_commit, hold_server=hold_server)
    task = new_task(key)
    with pytest.raises(StoreUnavailable):
        await store.insert([task])
    assert proxy.cut.is_set()
    return task.id


def cut_leader(url: str) -> None:
    """Drop the leader's write connection, as a network cut or a server restart would."""
    pid = leader_backend(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.fixture
def no_liveness_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the test's own writes reach the database, so it knows which write meets what."""
    monkeypatch.setattr(postgres, "LIVENESS_S", 3600.0)


@pytest.mark.usefixtures("no_liveness_ping")
def test_a_standby_waits_then_takes_over_and_the_old_leader_steps_down(
    postgres_url: str,
) -> None:
    lost = threading.Event()

    async def scenario() -> None:
        first = PostgresStore(postgres_url, on_leadership_lost=lost.set)
        await first.open()
        assert first.epoch == 1
        [(stored, _)] = await first.insert([new_task("a")])

        second = PostgresStore(postgres_url)
        standby = asyncio.ensure_future(second.open())
        # It stays a standby while the first one leads.
        done, _ = await asyncio.wait({standby}, timeout=1.0)
        assert not done

        cut_leader(postgres_url)
        await asyncio.wait_for(standby, 10)
        assert second.epoch == 2
        assert (await second.get(stored.id)) is not None

        # The old leader's next write meets its cut connection; on a new one the
        # lock is taken: it is told to step down, and never writes again.
        with pytest.raises(StoreUnavailable, match="could not commit"):
            await first.insert([new_task("b")])
        assert not lost.is_set()
        with pytest.raises(StoreUnavailable, match="another coordinator leads"):
            await first.insert([new_task("b")])
        assert lost.is_set()
        await second.close()
        with pytest.raises(StoreUnavailable, match="lost the lead"):
            await first.insert([new_task("c")])
        await first.close()

        third = PostgresStore(postgres_url)
        await third.open()
        assert third.epoch == 3
        # "b" and "c" were refused and never written.
        assert [t.id for t in await third.load_active()] == [stored.id]
        await third.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("no_liveness_ping")
def test_a_leader_cut_off_while_another_led_does_not_come_back(postgres_url: str) -> None:
    lost = threading.Event()

    async def scenario() -> None:
        store = PostgresStore(postgres_url, on_leadership_lost=lost.set)
        await store.open()
        # Another coordinator leads and goes while this one is cut off: it takes the
        # lock (once the cut backend has gone), starts epoch 2, and ends.
        pid = leader_backend(postgres_url)
        with psycopg.connect(postgres_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
            other.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
            other.execute("UPDATE dtq_coordinator SET leader_epoch = leader_epoch + 1")
        with pytest.raises(StoreUnavailable, match="could not commit"):
            await store.insert([new_task("b")])
        # The lock is free again, but the epoch moved on: what it holds in memory is stale.
        with pytest.raises(StoreUnavailable, match="epoch 2 led since"):
            await store.insert([new_task("b")])
        assert lost.is_set()
        await store.close()

    asyncio.run(scenario())


def test_the_leader_leads_on_after_a_database_restart(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    lost = threading.Event()

    async def scenario() -> None:
        store = PostgresStore(postgres_url, on_leadership_lost=lost.set)
        await store.open()
        [(before, _)] = await store.insert([new_task("before")])
        postgres_server.stop_immediate()
        try:
            with pytest.raises(StoreUnavailable):
                await store.insert([new_task("during")])
            with pytest.raises(StoreUnavailable):
                await store.check_writable()
        finally:
            postgres_server.resume()
        # No other coordinator led meanwhile: the same leader reconnects and goes on.
        await store.check_writable()
        [(after, _)] = await store.insert([new_task("after")])
        assert [t.id for t in await store.load_active()] == [before.id, after.id]
        assert store.epoch == 1
        assert not lost.is_set()
        await store.close()

    asyncio.run(scenario())


def test_a_commit_that_got_no_answer_is_looked_up_and_a_stored_one_makes_it_stand_down(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A batch whose COMMIT went unanswered is reported failed. Once connected again the
    store asks the database: rolled back, it leads on; stored, memory disagrees with the
    database (a task stored that is not on the board), so it gives up the lead, and a
    fresh start reloads the queue. A liveness ping's lost answer is not even looked up."""
    with CommitCutProxy(postgres_server.port) as proxy:
        via_proxy = url_via(postgres_url, proxy.address)

        async def cuts() -> tuple[str, str]:
            lost = threading.Event()
            store = PostgresStore(via_proxy, on_leadership_lost=lost.set)
            await store.open()
            proxy.arm(b"SELECT 1")  # the liveness ping's transaction (every second)
            assert await asyncio.to_thread(proxy.cut.wait, 10)
            proxy.cut.clear()

            rolled_back = await insert_cut(store, proxy, "rolled-back", deliver_commit=False)
            proxy.cut.clear()
            [(_, created)] = await store.insert([new_task("next")])  # looked up: leads on
            assert created and not lost.is_set()

            await store.close()  # a fresh store: a fresh connection for the next cut
            store = PostgresStore(via_proxy, on_leadership_lost=lost.set)
            await store.open()
            stored = await insert_cut(store, proxy, "stored")
            with pytest.raises(StoreUnavailable):  # looked up: it stands down
                await store.insert([new_task("after")])
            assert lost.is_set()
            await store.close()
            return rolled_back, stored

        rolled_back, stored = asyncio.run(cuts())
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT id, idempotency_key FROM tasks").fetchall()
    keys: dict[str, str] = dict(rows)
    assert rolled_back not in keys and keys[stored] == "stored"
    assert set(keys.values()) == {"next", "stored"}


def test_an_unanswered_commit_whose_id_the_server_lost_counts_as_rolled_back(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A server that restarts before a batch's WAL reaches its disk hands that batch's
    transaction id out again: asking its fate then fails, "transaction ID ... is in the
    future". The batch was not stored (a commit record would have carried the id past
    that point), so the store leads on. It used to ask again on every reconnect, fail,
    and never commit again (chaos D5, after `pg_ctl restart -m immediate`)."""
    with CommitCutProxy(postgres_server.port) as proxy:
        via_proxy = url_via(postgres_url, proxy.address)

        async def cut() -> tuple[bool, bool]:
            lost = threading.Event()
            store = PostgresStore(via_proxy, on_leadership_lost=lost.set)
            await store.open()
            await insert_cut(store, proxy, "cut", deliver_commit=False)
            # What the restarted server would answer for that batch's id: one past the
            # ids it has handed out since.
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                [(current,)] = conn.execute("SELECT txid_current()").fetchall()
            store._unanswered = current + 1_000
            [(_, created)] = await store.insert([new_task("next")])
            await store.close()
            return created, lost.is_set()

        created, stood_down = asyncio.run(cut())
    assert created and not stood_down
    with psycopg.connect(postgres_url) as conn:
        keys = [key for (key,) in conn.execute("SELECT idempotency_key FROM tasks")]
    assert keys == ["next"]


def test_its_own_stale_write_session_is_ended_not_taken_for_another_leader(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """After a cut the server has not noticed, the old write session still holds the
    leader lock (and its transaction). The store's next connection ends that session,
    which is its own, and leads on; it used to mistake it for another leader and step
    down (CI met it when the server was slower to see a reset than the store was to
    reconnect)."""
    with CommitCutProxy(postgres_server.port) as proxy:
        via_proxy = url_via(postgres_url, proxy.address)

        async def cut() -> tuple[int, int, bool]:
            lost = threading.Event()
            store = PostgresStore(via_proxy, on_leadership_lost=lost.set)
            await store.open()
            before = await asyncio.to_thread(leader_backend, postgres_url)
            await insert_cut(store, proxy, "cut", deliver_commit=False, hold_server=True)
            assert await asyncio.to_thread(leader_backend, postgres_url) == before  # still held
            [(_, created)] = await store.insert([new_task("next")])
            after = await asyncio.to_thread(leader_backend, postgres_url)
            await store.close()
            return before, after, created and not lost.is_set()

        before, after, led_on = asyncio.run(cut())
    assert led_on and after != before
    with psycopg.connect(postgres_url) as conn:
        alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (before,))
        assert alive.fetchone() == (0,)  # the stale session was ended
        keys = [key for (key,) in conn.execute("SELECT idempotency_key FROM tasks")]
    assert keys == ["next"]  # the cut transaction rolled back with its session


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    async def scenario() -> None:
        store = PostgresStore(postgres_url)
        await store.open()
        await store.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE dtq_coordinator SET schema_version = schema_version + 1")
        with pytest.raises(StoreCorrupt, match=f"schema version {pg_schema.SCHEMA_VERSION + 1}"):
            await PostgresStore(postgres_url).open()

    asyncio.run(scenario())


def test_migrations_run_once_each_and_a_failed_one_changes_nothing(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def version_and_columns() -> tuple[int, set[str]]:
        with psycopg.connect(postgres_url) as conn:
            [(version,)] = conn.execute("SELECT schema_version FROM dtq_coordinator").fetchall()
            columns = conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'"
            ).fetchall()
        return version, {name for (name,) in columns}

    async def reopen() -> list[str]:
        store = PostgresStore(postgres_url)
        try:
            await store.open()
            return [t.id for t in await store.load_active()]
        finally:
            await store.close()

    async def first() -> str:
        store = PostgresStore(postgres_url)
        await store.open()
        [(task, _)] = await store.insert([new_task()])
        await store.close()
        return task.id

    stored = asyncio.run(first())
    current = pg_schema.SCHEMA_VERSION
    assert version_and_columns()[0] == current
    added = (*pg_schema.MIGRATIONS, "ALTER TABLE tasks ADD COLUMN note TEXT")
    monkeypatch.setattr(pg_schema, "MIGRATIONS", added)
    monkeypatch.setattr(pg_schema, "SCHEMA_VERSION", current + 1)
    assert asyncio.run(reopen()) == [stored]
    version, columns = version_and_columns()
    assert version == current + 1 and "note" in columns
    assert asyncio.run(reopen()) == [stored]  # not run again: a second ADD COLUMN would fail

    broken = "ALTER TABLE tasks ADD COLUMN half TEXT; SELECT 1 / 0"
    monkeypatch.setattr(pg_schema, "MIGRATIONS", (*added, broken))
    monkeypatch.setattr(pg_schema, "SCHEMA_VERSION", current + 2)
    with pytest.raises(psycopg.errors.DivisionByZero):
        asyncio.run(reopen())
    version, columns = version_and_columns()
    assert version == current + 1 and "half" not in columns


def test_a_database_that_is_not_dtq_s_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")

    async def scenario() -> None:
        with pytest.raises(StoreCorrupt, match="not a DTQ database"):
            await PostgresStore(postgres_url).open()

    asyncio.run(scenario())
    with psycopg.connect(postgres_url) as conn:  # left as it was
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("tasks",)]


@pytest.mark.timeout(90)
def test_a_standby_takes_over_from_a_leader_cut_off_without_a_reset(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The server ends a silent leader's session (and frees the lock) after 5 s idle."""
    with FaultProxy(f"127.0.0.1:{postgres_server.port}") as proxy:
        via_proxy = url_via(postgres_url, proxy.address)

        async def scenario() -> float:
            first = PostgresStore(via_proxy)
            await first.open()
            second = PostgresStore(postgres_url)
            standby = asyncio.ensure_future(second.open())
            proxy.blackhole()  # packets dropped both ways: no FIN, no RST
            cut = time.monotonic()
            await asyncio.wait_for(standby, 45)
            took_s = time.monotonic() - cut
            assert second.epoch == 2
            await second.close()
            # The old leader's writer waits on its black hole (the proxy acknowledges
            # what it sends): left as it is, as a real cut-off coordinator would be.
            return took_s

        took_s = asyncio.run(scenario())
    assert took_s < 15, f"the standby took over {took_s:.1f} s after the cut"
