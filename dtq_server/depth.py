"""A queue's maximum depth: how many unfinished tasks submits may bring it to.

The board counts each queue's unfinished tasks (queued, leased, running).
Only the store knows which submitted specs create a task and which find one
by their idempotency key, so the check runs on the store's writer thread,
inside the insert's transaction, one insert after another
(``Store.insert(places=...)``): a resubmit of a stored task is answered even
when its queue is full, and an insert refused whole takes no place at all.
(Places used to be reserved for every spec before the insert, so a refused
batch held places while concurrent submits were checked and a burst could
end below the limit.)

From that check until its tasks are on the board, an insert's places stay
*taken* here. The move from taken to the board happens under one lock, and
the check reads both under it, so it counts each task exactly once. Tasks
handed straight to a node are on the board before their insert; the handoff
leaves queues with a maximum depth alone, which keeps the count exact.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from dtq_server.board import TaskBoard
from dtq_server.dispatch import Dispatcher
from dtq_server.errors import QueueFull
from dtq_server.models import NewTask


class QueueDepth:
    """Places taken by inserts whose tasks are not on the board yet, per limited queue."""

    def __init__(self, board: TaskBoard, dispatcher: Dispatcher) -> None:
        self._board = board
        self._dispatcher = dispatcher
        self._lock = threading.Lock()  # the writer thread checks, the event loop hands over
        self._taken: Counter[str] = Counter()

    @contextmanager
    def places(self, new: list[NewTask]) -> Iterator[Places | None]:
        """What an insert of ``new`` checks its limited queues with (None: no limit applies).

        Put its stored tasks on the board inside :meth:`Places.on_board`; places
        still taken when this block ends (the insert failed) are given back.
        """
        settings = self._dispatcher.queue_settings
        if not any(s.max_depth for s in settings.values()):  # the usual case: no limit
            yield None
            return
        queues = {t.queue for t in new}
        limits = {q: s.max_depth for q, s in settings.items() if s.max_depth and q in queues}
        if not limits:
            yield None
            return
        places = Places(limits, self._board, self._lock, self._taken)
        try:
            yield places
        finally:
            places.give_back()


class Places:
    """One insert's places in the queues with a maximum depth it submits to."""

    def __init__(
        self,
        limits: dict[str, int],
        board: TaskBoard,
        lock: threading.Lock,
        all_taken: Counter[str],
    ) -> None:
        self.limits: Mapping[str, int] = limits
        """Maximum depth per limited queue; the store counts new tasks for these only."""
        self._board = board
        self._lock = lock
        self._all_taken = all_taken  # every insert's, shared
        self._taken: Counter[str] = Counter()

    def take(self, adding: Mapping[str, int]) -> None:
        """On the writer thread: take places for the new unfinished tasks per queue,
        or raise QueueFull, taking none, if one would go past its maximum depth."""
        with self._lock:
            for queue, count in adding.items():
                limit = self.limits[queue]
                if self._board.unfinished(queue) + self._all_taken[queue] + count > limit:
                    raise QueueFull(queue, limit)
            self._all_taken.update(adding)
            self._taken.update(adding)

    @contextmanager
    def on_board(self) -> Iterator[None]:
        """Put the stored tasks on the board inside this block: their places are given
        back as it ends, at once for the writer thread (which would count them twice
        in between)."""
        with self._lock:
            yield
            self._release()

    def give_back(self) -> None:
        """Give back places still taken (the insert failed, or stored nothing new)."""
        if self._taken:
            with self._lock:
                self._release()

    def _release(self) -> None:
        self._all_taken.subtract(self._taken)
        self._taken.clear()
