"""A queue's maximum depth: how many unfinished tasks submits may bring it to.

The board counts each queue's unfinished tasks (queued, leased, running).
Only the store knows which submitted specs create a task and which find one
by their idempotency key, so the check runs inside the insert's transaction
(``Store.insert(room=...)``): a resubmit of a stored task is answered even
when its queue is full. Until that insert's tasks are on the board, their
places stay reserved here, so concurrent submits cannot both take the last
place. (A reservation may turn out to be a key found: for that moment the
queue counts as fuller than it is, never emptier.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from dtq_server.board import TaskBoard
from dtq_server.dispatch import Dispatcher
from dtq_server.models import NewTask, QueueRoom


class QueueDepth:
    """Places reserved by submits in flight, per queue with a maximum depth."""

    def __init__(self, board: TaskBoard, dispatcher: Dispatcher) -> None:
        self._board = board
        self._dispatcher = dispatcher
        self._reserved: Counter[str] = Counter()

    @contextmanager
    def reserve(self, new: list[NewTask]) -> Iterator[dict[str, QueueRoom]]:
        """The free places of each limited queue ``new`` goes to, held until the block ends.

        End the block only once the stored tasks are on the board (no await
        between), or they would count neither here nor there for a moment.
        """
        settings = self._dispatcher.queue_settings
        if not any(s.max_depth for s in settings.values()):  # the usual case: no limit
            yield {}
            return
        limits = {name: s.max_depth for name, s in settings.items() if s.max_depth}
        wanted = Counter(t.queue for t in new if t.queue in limits)
        room = {
            queue: QueueRoom(
                free=limits[queue] - self._board.unfinished(queue) - self._reserved[queue],
                max_depth=limits[queue],
            )
            for queue in wanted
        }
        self._reserved.update(wanted)
        try:
            yield room
        finally:
            self._reserved.subtract(wanted)
