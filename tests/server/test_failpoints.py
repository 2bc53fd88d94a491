"""DTQ_FAILPOINT parsing and pauses (pure logic; the crashes are proved by chaos F2)."""

from __future__ import annotations

import asyncio

import pytest

from dtq_server.failpoints import Failpoints


def test_names_crash_and_sleep_pauses_parse() -> None:
    points = Failpoints.parse(" result.before_commit , submit.before_commit:sleep=0.5,")
    assert points._enabled == frozenset({"result.before_commit"})
    assert points._pauses == {"submit.before_commit": 0.5}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("submit.nowhere", "unknown failpoints: submit.nowhere"),
        ("result.before_commit:sleep=1", "can pause"),
        ("submit.before_commit:nap=1", "the action must be sleep=SECONDS"),
        ("submit.before_commit:sleep=", "the action must be sleep=SECONDS"),
        ("submit.before_commit:sleep=-1", "the action must be sleep=SECONDS"),
        ("submit.before_commit:sleep=inf", "the action must be sleep=SECONDS"),
        ("submit.before_commit:sleep=nan", "the action must be sleep=SECONDS"),
    ],
)
def test_bad_specs_are_refused_at_start_up(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Failpoints.parse(spec)


def test_a_pause_happens_once_and_a_cancel_ends_it() -> None:
    async def scenario() -> bool:
        points = Failpoints.parse("submit.before_commit:sleep=30")
        first = asyncio.create_task(points.pause("submit.before_commit"))
        await asyncio.sleep(0)  # let it start sleeping
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # Spent: the next call does not pause at all (it would time out the wait_for).
        await asyncio.wait_for(points.pause("submit.before_commit"), 5)
        await asyncio.wait_for(points.pause("submit.after_commit_before_reply"), 5)
        return first.cancelled()

    assert asyncio.run(scenario())
