"""The submit ledger and the load client that writes it.

Every task a chaos run submits gets an idempotency key. The load client sends
each one until it gets a definite answer: an ambiguous error (UNAVAILABLE,
DEADLINE_EXCEEDED: the coordinator may or may not have committed) is retried
with the *same* key, which is what makes "at most one task per key" (I2)
checkable. The ledger keeps, per key, the final outcome and the task id the
coordinator returned, and every call's duration (N4 bounds them).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtq_client import Client, RetryPolicy
from dtq_client.errors import DeadlineExceeded, RpcError, Unavailable

AMBIGUOUS = (Unavailable, DeadlineExceeded)
"""Errors after which the task may or may not be stored: retried with the same key."""


@dataclass(frozen=True)
class Entry:
    """The final outcome of one idempotency key."""

    key: str
    task_id: str | None
    """The id the coordinator returned; None unless ``ok``."""
    ok: bool
    error: str = ""
    """The status code of the last error, when not ``ok``."""
    attempts: int = 1


class Ledger:
    """Thread-safe record of submits, mirrored to a JSON-lines file for post-mortems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self.calls: list[tuple[float, str]] = []
        """(duration in s, outcome code) of every call, retries included."""

    def record(self, entry: Entry) -> Entry:
        """Store the final outcome of a key (a key is recorded once); returns it."""
        with self._lock:
            if entry.key in self._entries:
                raise AssertionError(f"key {entry.key} recorded twice")
            self._entries[entry.key] = entry
            with self.path.open("a") as out:
                out.write(json.dumps(asdict(entry)) + "\n")
        return entry

    def call(self, duration_s: float, code: str) -> None:
        """Note one call's duration and outcome."""
        with self._lock:
            self.calls.append((duration_s, code))

    @property
    def entries(self) -> list[Entry]:
        """Every key's outcome so far."""
        with self._lock:
            return list(self._entries.values())

    def acknowledged(self) -> dict[str, str]:
        """Task id by key, for the keys whose Submit returned OK."""
        return {e.key: e.task_id for e in self.entries if e.ok and e.task_id}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


Spec = Callable[[int], tuple[str, Any]]
"""Task number -> (type, payload)."""


class LoadClient:
    """Submits ``total`` tasks from ``threads`` threads, retrying ambiguous errors per key.

    ``rate`` (tasks/s over all threads) paces the submits; None submits as fast
    as the coordinator answers. ``give_up_s`` bounds how long one key is
    retried. :meth:`stop` ends the run early (keys not yet sent are not
    recorded).
    """

    def __init__(
        self,
        address: str,
        ledger: Ledger,
        spec: Spec,
        *,
        total: int,
        prefix: str,
        threads: int = 4,
        rate: float | None = None,
        call_timeout_s: float = 5.0,
        give_up_s: float = 120.0,
    ) -> None:
        self.address = address
        self.ledger = ledger
        self.spec = spec
        self.total = total
        self.prefix = prefix
        self.threads = threads
        self.rate = rate
        self.call_timeout_s = call_timeout_s
        self.give_up_s = give_up_s
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._started = 0.0
        self.errors: list[BaseException] = []
        """Unexpected exceptions in worker threads (a test bug, reported by join)."""

    def start(self) -> LoadClient:
        """Start the submitting threads."""
        self._started = time.monotonic()
        self._workers = [
            threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        """Stop taking new keys; keys in progress finish their retries."""
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        """Wait for every thread; raise if one failed or did not finish."""
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                raise AssertionError(f"load client {worker.name} still running")
        if self.errors:
            raise AssertionError(f"load client failed: {self.errors[0]!r}") from self.errors[0]

    @property
    def sent(self) -> int:
        """Keys taken so far."""
        with self._lock:
            return self._next

    def _take(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self.total:
                return None
            number = self._next
            self._next += 1
        if self.rate:
            pause = self._started + number / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return number

    def _work(self) -> None:
        retry = RetryPolicy(attempts=1)  # every attempt is ours, so each is measured
        try:
            with Client(self.address, timeout_s=self.call_timeout_s, retry=retry) as client:
                while (number := self._take()) is not None:
                    self._submit(client, number)
        except BaseException as exc:
            self.errors.append(exc)

    def _submit(self, client: Client, number: int) -> None:
        type_, payload = self.spec(number)
        submit_answered(
            client, self.ledger, f"{self.prefix}-{number}", type_, payload, self.give_up_s
        )


def submit_answered(
    client: Client,
    ledger: Ledger,
    key: str,
    type_: str,
    payload: Any,
    give_up_s: float,
    **options: Any,
) -> Entry:
    """Submit one task under ``key`` until the answer is definite; record it in ``ledger``.

    Ambiguous errors are retried with the same key for up to ``give_up_s``
    (with a capped, jittered backoff); ``options`` are :meth:`Client.submit`'s.
    """
    give_up = time.monotonic() + give_up_s
    backoff = 0.05
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        try:
            task = client.submit(type_, payload, idempotency_key=key, **options)
        except AMBIGUOUS as exc:
            ledger.call(time.monotonic() - started, exc.code.name)
            if time.monotonic() >= give_up:
                return ledger.record(Entry(key, None, False, exc.code.name, attempts))
            time.sleep(backoff * (1 + random.random()))
            backoff = min(backoff * 2, 1.0)
            continue
        except RpcError as exc:
            ledger.call(time.monotonic() - started, exc.code.name)
            return ledger.record(Entry(key, None, False, exc.code.name, attempts))
        ledger.call(time.monotonic() - started, "OK")
        return ledger.record(Entry(key, task.id, True, attempts=attempts))
