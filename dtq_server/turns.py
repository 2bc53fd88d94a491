"""Turns: submits started in one order are stored in that order.

Big submits are validated on worker threads (:mod:`dtq_server.offload`),
which finish in any order. Of two piles from one submit stream validated at
once, the smaller one would finish first and be stored first: its tasks, sent
later, would get earlier places in their queue than the pile before them.
A caller whose submits must keep their order takes a turn for each one from
its :class:`Turns`, in that order; each submit waits, once validated, for
the turn before it to end (that submit stored, or failed) before it stores,
and ends its own turn when it is done. Validation still overlaps: only the
writes are put in line.
"""

from __future__ import annotations

import asyncio


class Turn:
    """One submit's place in line."""

    __slots__ = ("_before", "_ended")

    def __init__(self, before: asyncio.Future[None] | None) -> None:
        self._before = before
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        """Until every turn taken before this one has ended."""
        before = self._before
        if before is not None and not before.done():
            # Not ``await before``: a waiter that is cancelled must not cancel it.
            await asyncio.wait((before,))

    def end(self) -> None:
        """Let the next turn come once every earlier one has ended (idempotent).

        A turn that ends early (its submit failed or was cancelled before its
        place came) still holds the next one back until the turns before it end.
        """
        before = self._before
        if before is None or before.done():
            self._end_now()
        else:
            before.add_done_callback(lambda _: self._end_now())

    def _end_now(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)


class Turns:
    """Hands out turns in the order they are taken (see the module)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def take(self) -> Turn:
        """The next place in line, behind every turn taken so far."""
        turn = Turn(self._last)
        self._last = turn._ended
        return turn
