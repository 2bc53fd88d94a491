"""Turns: submits stored in the order their turns were taken (pure asyncio, no server)."""

from __future__ import annotations

import asyncio

from dtq_server.turns import Turn, Turns


async def loop_passes(count: int = 20) -> None:
    """Let every callback and woken task the loop has queued run (no timers involved)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def in_turn(turn: Turn, name: str, order: list[str], validated: asyncio.Event) -> None:
    """A submit: validated whenever, stored (``order``) in its turn."""
    await validated.wait()
    await turn.wait()
    order.append(name)
    turn.end()


def test_turns_come_in_the_order_taken_whatever_is_validated_first() -> None:
    async def main() -> list[str]:
        turns = Turns()
        order: list[str] = []
        validated = [asyncio.Event() for _ in range(3)]
        jobs = [
            asyncio.create_task(in_turn(turns.take(), name, order, event))
            for name, event in zip("abc", validated, strict=True)
        ]
        for event in reversed(validated):  # the last submit is validated first
            event.set()
            await loop_passes()
        await asyncio.wait_for(asyncio.gather(*jobs), 5)
        return order

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_a_turn_ended_early_still_holds_the_next_behind_the_earlier_ones() -> None:
    async def main() -> None:
        turns = Turns()
        order: list[str] = []
        first, failed, last = turns.take(), turns.take(), turns.take()
        failed.end()  # its submit failed before its place came
        first_validated, ready = asyncio.Event(), asyncio.Event()
        ready.set()
        job_last = asyncio.create_task(in_turn(last, "last", order, ready))
        job_first = asyncio.create_task(in_turn(first, "first", order, first_validated))
        await loop_passes()
        assert order == []  # "first" has not been stored: "last" waits for it
        first_validated.set()
        await asyncio.wait_for(asyncio.gather(job_first, job_last), 5)
        assert order == ["first", "last"]

    asyncio.run(main())


def test_a_cancelled_waiter_does_not_cancel_the_turn_before_it() -> None:
    async def main() -> None:
        turns = Turns()
        first, second = turns.take(), turns.take()
        waiter = asyncio.create_task(second.wait())
        await loop_passes()
        waiter.cancel()  # a stream torn down while its pile waited
        second.end()
        reached = asyncio.create_task(turns.take().wait())
        await loop_passes()
        assert not reached.done()  # still behind "first"
        first.end()
        await asyncio.wait_for(reached, 5)

    asyncio.run(main())
