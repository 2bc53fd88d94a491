"""Ready tasks in the order dispatch takes them, without looking at every queue or rate key.

Two levels, both heaps of heaps ordered by the rank of their first task (the
picker's by the queue's turn first):

- :class:`ReadyQueue` holds one (queue, type)'s ready tasks, a heap per rate key,
  and its rate keys by their first task. It lasts as long as the board. With a
  rate key per tenant, a (queue, type) holds thousands of rate keys; a dispatch
  round once looked at each of them (10,000 keys: 23 ms a round, and a cluster
  ran 161 tasks/s with a ``--prefetch 0`` node, 1,343 with ``--prefetch auto``).
- :class:`ReadyPicker` holds a node's (queue, type) keys for one dispatch round
  (1,000 queues served: 2,073 tasks/s before it, 6,968 with it).

Both keep their order lazily. An entry records a rank that can be out of date in
one direction only, too early: a first task can only be taken or go stale, which
moves the next one up, and a task queued with a better rank records an entry of
its own. An entry is checked when it reaches the top of its heap and put back
with its current rank if that moved; an entry some later one superseded is
dropped.

Tasks cancelled while ready stay in their heaps until they reach the top. A
queue emptied by a bulk cancel would hold every cancelled task in memory until
a node served it, and the first round that did would drop them all at once
(900,000: 1.6 s of the event loop). So the board says when a ready task goes
(:meth:`ReadyQueue.went_stale`), and a queue whose heaps are mostly stale is
rebuilt from its live entries (:meth:`ReadyQueue.compact`), work proportional to
the tasks that went.

A dispatch round may find rate keys out of tokens. Their tasks stay where they
are, and their entries are set aside for the round (:meth:`ReadyQueue.first`) and
put back when it ends (:meth:`ReadyQueue.end_round`): a throttled key never holds
back other keys' tasks of the same queue and type.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING

from dtq_server.models import ActiveTask, TaskState

if TYPE_CHECKING:
    from dtq_server.board import Key, TaskBoard

Rank = tuple[int, int, int]
"""(-priority, seq, push number): higher priority first, then submission order. The push
number keeps entries distinct when a task is queued again while a stale entry of it
is still in the heap, so tasks themselves are never compared."""


class ReadyQueue:
    """The ready tasks of one (queue, type): a heap per rate key, and the rate keys in a
    heap by the rank of their first task."""

    __slots__ = ("_active", "_aside", "_entry", "_heaps", "_order", "_round", "_size", "_stale")

    COMPACT_AT = 1024
    """Stale entries below which a queue is never rebuilt (the lazy drop is cheaper)."""

    def __init__(self, active: Mapping[str, ActiveTask], round_aside: list[ReadyQueue]) -> None:
        self._active = active
        """The board's unfinished tasks: a task is ready while it is there, queued and due."""
        self._round = round_aside
        """The board's list of queues that set rate keys aside this round."""
        self._heaps: dict[str, list[tuple[Rank, ActiveTask]]] = {}
        self._order: list[tuple[Rank, str]] = []
        self._entry: dict[str, Rank] = {}
        """The one entry of ``_order`` that counts for each rate key (others are dropped)."""
        self._aside: list[str] = []
        """Rate keys out of tokens this round, their entries taken out of ``_order``."""
        self._size = 0
        """Entries in the task heaps."""
        self._stale = 0
        """Ready tasks that went (cancelled) since the last rebuild: an upper bound on
        the stale entries among ``_size``."""

    def __bool__(self) -> bool:
        """Whether tasks may be ready here (stale entries included)."""
        return bool(self._order or self._aside)

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return self._size

    def push(self, rank: Rank, task: ActiveTask) -> None:
        """Add a ready task; a new first task of its rate key gets an entry of its own."""
        key = task.rate_key
        heap = self._heaps.get(key)
        if heap is None:
            heap = self._heaps[key] = []
        heapq.heappush(heap, (rank, task))
        self._size += 1
        if heap[0][0] == rank and key not in self._aside:
            self._entry[key] = rank
            heapq.heappush(self._order, (rank, key))

    def first(self, blocked: Container[str]) -> Rank | None:
        """The rank of the first ready task whose rate key is not ``blocked`` (None: none).

        Drops stale tasks and entries on the way, and sets blocked rate keys aside
        until :meth:`end_round`.
        """
        order, entry, active = self._order, self._entry, self._active
        while order:
            recorded, key = order[0]
            if entry.get(key) != recorded:  # superseded
                heapq.heappop(order)
                continue
            heap = self._heaps[key]
            while heap:  # drop tasks no longer ready (taken, cancelled, delayed again)
                task = heap[0][1]
                if (
                    task.state is TaskState.QUEUED
                    and task.due_at is None
                    and active.get(task.id) is task
                ):
                    break
                heapq.heappop(heap)
                self._size -= 1
            if not heap:
                heapq.heappop(order)
                del entry[key], self._heaps[key]
            elif heap[0][0] != recorded:  # its first task went: the next one's rank
                entry[key] = heap[0][0]
                heapq.heapreplace(order, (heap[0][0], key))
            elif key in blocked:
                heapq.heappop(order)
                del entry[key]
                if not self._aside:
                    self._round.append(self)
                self._aside.append(key)
            else:
                return recorded
        return None

    def pop(self, blocked: Container[str]) -> tuple[ActiveTask, Rank | None]:
        """Remove the first ready task (after :meth:`first` found one): the task, and the
        rank of the first ready task after it (as :meth:`first`)."""
        _, key = self._order[0]
        heap = self._heaps[key]
        task = heapq.heappop(heap)[1]
        self._size -= 1
        if heap:  # stale or not: first() checks it
            self._entry[key] = heap[0][0]
            heapq.heapreplace(self._order, (heap[0][0], key))
        else:
            heapq.heappop(self._order)
            del self._entry[key], self._heaps[key]
        return task, self.first(blocked)

    def went_stale(self) -> None:
        """A task of this queue left while ready; rebuild once most entries are stale."""
        self._stale += 1
        if self._stale >= self.COMPACT_AT and 2 * self._stale >= self._size:
            self.compact()

    def compact(self) -> None:
        """Rebuild the heaps from their queued tasks only (not during a round).

        Only the state is looked at, the cheapest test that drops cancelled and taken
        tasks; an entry kept that is stale some other way is dropped by :meth:`first`.
        """
        if self._aside:
            return
        heaps: dict[str, list[tuple[Rank, ActiveTask]]] = {}
        for key, heap in self._heaps.items():
            kept = [entry for entry in heap if entry[1].state is TaskState.QUEUED]
            if kept:
                heapq.heapify(kept)
                heaps[key] = kept
        self._heaps = heaps
        self._entry = {key: heap[0][0] for key, heap in heaps.items()}
        self._order = [(rank, key) for key, rank in self._entry.items()]
        heapq.heapify(self._order)
        self._size = sum(map(len, heaps.values()))
        self._stale = 0

    def end_round(self) -> None:
        """Put back the rate keys set aside as blocked during the round."""
        for key in self._aside:
            heap = self._heaps[key]
            self._entry[key] = heap[0][0]
            heapq.heappush(self._order, (heap[0][0], key))
        self._aside.clear()


class ReadyPicker:
    """The next ready task among a node's (queue, type) keys, task after task, for one
    dispatch round: the oldest ready task of the queue whose turn it is (see
    ``TaskBoard.turns``).

    ``keys`` and ``blocked`` are the caller's own sets: a key it removes (a queue's
    limit reached during the round) is skipped from then on, and a rate key it adds to
    ``blocked`` (out of tokens) too. Several pickers of a round may share keys.
    """

    def __init__(self, board: TaskBoard, keys: set[Key], blocked: Container[str]) -> None:
        self._board = board
        self._keys = keys
        self._blocked = blocked
        # (queue's turn, rank of the key's first ready task, key). Both parts only
        # grow while the round runs, so an entry is never late: checked at the top.
        self._heap: list[tuple[int, Rank, Key]] = []
        turns = board.turns
        for key in keys:
            rank = board.first(key, blocked)
            if rank is not None:
                self._heap.append((turns[key[0]], rank, key))
        heapq.heapify(self._heap)

    def pop(self) -> ActiveTask | None:
        """The next ready task among the keys, removed from the board; None when none is left."""
        heap, board, blocked, turns = self._heap, self._board, self._blocked, self._board.turns
        while heap:
            turn, recorded, key = heap[0]
            rank = board.first(key, blocked) if key in self._keys else None
            if rank is None:
                heapq.heappop(heap)
            elif rank != recorded or turns[key[0]] != turn:
                heapq.heapreplace(heap, (turns[key[0]], rank, key))
            else:
                task, after = board.pop_first(key, blocked)
                if after is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (turns[key[0]], after, key))
                return task
        return None
