"""The keywords of a one-task submit (dtq_client.submit_options), shared by all three submits."""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dtq_client import AsyncClient, Client, DependencyFailure, TaskSpec
from dtq_client.submit_options import Keys, spec_of
from tests.harness import InProcessCoordinator

UNREACHABLE = "127.0.0.1:1"  # nothing is sent: the spec is refused before any call


def test_spec_of_takes_what_callers_have_at_hand() -> None:
    spec = spec_of(
        "t",
        {"x": 1},
        {
            "depends_on": iter(["a", "b"]),
            "on_dependency_failure": "cancel",
            "headers": None,
            "priority": 7,
        },
        lambda: "generated",
    )
    assert spec == TaskSpec(
        "t",
        {"x": 1},
        idempotency_key="generated",
        depends_on=("a", "b"),
        on_dependency_failure=DependencyFailure.CANCEL,
        priority=7,
    )
    keys = itertools.count()
    assert spec_of("t", None, {"idempotency_key": "mine"}, lambda: str(next(keys))).idempotency_key
    assert next(keys) == 0  # a caller's key is kept; none generated


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priorty": 3, "queue": "q", "delay": 1}, "unexpected keyword arguments: delay, priorty"),
        ({"depends_on": "one-id"}, "collection of task ids, not one string"),
    ],
)
def test_every_submit_refuses_a_misspelt_keyword_or_a_lone_id(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        spec_of("t", None, options, lambda: "k")  # type: ignore[arg-type]
    with Client(UNREACHABLE) as client:
        with pytest.raises(TypeError, match=message):
            client.submit("t", **options)
        with client.submitter() as submitter, pytest.raises(TypeError, match=message):
            submitter.submit("t", **options)

    async def submit_async() -> None:
        async with AsyncClient(UNREACHABLE) as aclient:
            with pytest.raises(TypeError, match=message):
                await aclient.submit("t", **options)

    asyncio.run(submit_async())


def test_generated_keys_are_unique_and_in_order_across_threads() -> None:
    """In order: the coordinator's unique index on keys then takes each next to the
    last, where random keys touched pages all over it (twice the coordinator's CPU
    per task of a batch, once it kept 300,000 tasks)."""
    new_key = Keys()
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: new_key(), range(20_000)))
    assert len(set(made)) == len(made)
    later = [new_key() for _ in range(3)]
    assert sorted(made) + later == sorted(made + later)  # strings sort as they were made
    assert later == sorted(later) and len({k.split("-")[0] for k in made + later}) == 1
    assert Keys()().split("-")[0] != new_key().split("-")[0]  # each maker its own prefix


def test_a_client_keys_submits_and_batches_in_order(coordinator: InProcessCoordinator) -> None:
    with Client(coordinator.address) as client:
        one = client.submit("echo", 1).idempotency_key
        many = [
            r.task.idempotency_key
            for r in client.submit_many([TaskSpec("echo", i) for i in range(3)])
        ]
        keys = [one, *many]
        assert all(keys) and keys == sorted(keys)  # type: ignore[type-var]
