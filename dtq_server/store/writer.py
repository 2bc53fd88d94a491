"""Group commit: one thread owns the store's write connection.

Writers hand it a function; the thread runs every function waiting at that
moment inside ONE transaction and commits once, so N concurrent submits cost
one fsync instead of N. Each function runs in its own savepoint: a domain
error (say, an idempotency-key clash) undoes only that function's writes.
A failed commit fails every function of the batch - none of them is
acknowledged, so none is lost.

A connection the server dropped (PostgreSQL restarted) is replaced at the next
batch; until a new one opens, every batch fails the same way. A connection that
drops after COMMIT was sent leaves the batch's outcome unknown: its callers are
told it failed, yet it may be stored. The owner hears of it
(``on_commit_unanswered``), with what ``mark_commit`` read inside the
transaction (PostgreSQL's transaction id), so it can find out once it is
connected again; batches whose ops all said their outcome does not matter (a
liveness ping) are not reported, nor marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from dtq_server.errors import CoordinatorError, StoreUnavailable
from dtq_server.store.connection import Connection

T = TypeVar("T")
log = structlog.get_logger(__name__)
MAX_OPS_PER_COMMIT = 512


@dataclass(slots=True)
class _Op:
    fn: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    outcome_matters: bool = True


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():  # the caller gave up; the commit stands regardless
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class GroupCommitWriter:
    """Runs write functions on one thread, committing each batch once."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        on_commit_result: Callable[[bool], None] | None = None,
        precheck: Callable[[], None] | None = None,
        *,
        errors: tuple[type[Exception], ...] = (sqlite3.Error,),
        begin: str = "BEGIN IMMEDIATE",
        is_broken: Callable[[Connection], bool] | None = None,
        mark_commit: Callable[[Connection], object] | None = None,
        on_commit_unanswered: Callable[[object], None] | None = None,
    ) -> None:
        """``on_commit_result(ok)`` is called on this thread when commit health changes;
        ``precheck()`` runs before each batch and fails it by raising one of ``errors``,
        the exceptions by which the database says it failed (they fail the whole batch;
        any other exception fails only its op). After a failed batch, a connection
        ``is_broken`` says is gone is replaced by a new ``connect()`` at the next one.
        ``on_commit_unanswered(mark)`` is called on this thread when the connection
        broke during COMMIT, ``mark`` being what ``mark_commit(conn)`` returned inside
        that transaction (None without it; see the module)."""
        self._connect = connect
        self._on_commit_result = on_commit_result
        self._precheck = precheck
        self._errors = errors
        self._begin = begin
        self._is_broken = is_broken
        self._mark_commit = mark_commit
        self._on_commit_unanswered = on_commit_unanswered
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dtq-store-writer", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._last_ok = True

    def start(self) -> None:
        """Start the thread and open its connection (raises what opening raised)."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    async def run(self, fn: Callable[[Connection], T], *, outcome_matters: bool = True) -> T:
        """Run ``fn`` in the next group commit and return its result once committed.

        ``outcome_matters=False``: nothing depends on whether ``fn``'s writes were
        stored, so a COMMIT whose outcome is unknown need not be reported for it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop, outcome_matters))
        return await future

    def _run(self) -> None:
        conn: Connection | None
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_OPS_PER_COMMIT:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            conn = self._commit_batch(conn, batch)
        if conn is not None:
            conn.close()

    def _report(self, ok: bool) -> None:
        """Tell the owner when commits start failing or work again (not on every commit)."""
        if ok != self._last_ok:
            self._last_ok = ok
            if self._on_commit_result is not None:
                self._on_commit_result(ok)

    def _commit_batch(self, conn: Connection | None, batch: list[_Op]) -> Connection | None:
        """Run and commit one batch; returns the connection for the next one (None: reopen)."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        matters = any(op.outcome_matters for op in batch)
        mark: object = None
        committing = False
        try:
            if conn is None:
                conn = self._connect()
            if self._precheck is not None:
                self._precheck()
            conn.execute(self._begin)
            if matters and self._mark_commit is not None:
                mark = self._mark_commit(conn)
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((op.fn(conn), None))
                except self._errors:
                    raise  # the store itself failed: the whole batch fails below
                except Exception as exc:  # a domain error or a bug: only this op fails
                    conn.execute("ROLLBACK TO op")
                    outcomes.append((None, exc))
                conn.execute("RELEASE op")
            committing = True
            conn.execute("COMMIT")
        except self._errors as exc:
            if conn is not None and self._is_broken is not None and self._is_broken(conn):
                conn.close()
                conn = None
                if committing and matters:
                    # COMMIT was sent and no answer came: the server may have stored
                    # the batch, whose callers hear it failed.
                    log.warning("store.commit_unanswered", ops=len(batch))
                    if self._on_commit_unanswered is not None:
                        self._on_commit_unanswered(mark)
            elif conn is not None and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except self._errors:
                    log.warning("store.rollback_failed", exc_info=True)
            log.error("store.commit_failed", error=str(exc), ops=len(batch))
            failure = StoreUnavailable(f"the store could not commit: {exc}")
            failure.__cause__ = exc
            outcomes = [(None, failure)] * len(batch)
            self._report(ok=False)
        else:
            self._report(ok=True)
        # One wake-up per event loop for the whole batch, not one per op: each
        # call_soon_threadsafe is a write to the loop's self-pipe and a read there.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for op, (result, error) in zip(batch, outcomes, strict=True):
            if error is not None and not isinstance(error, CoordinatorError | StoreUnavailable):
                log.error("store.op_failed", error=repr(error))
            by_loop.setdefault(op.loop, []).append((op.future, result, error))
        for loop, settled in by_loop.items():
            # A loop closed meanwhile has no one left awaiting (the commit stands).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, settled)
        return conn
