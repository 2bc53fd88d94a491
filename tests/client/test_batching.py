from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtq.batching import batches
from dtq_client.batching import send_ahead


def test_splits_by_count() -> None:
    assert list(batches(range(5), lambda _: 1, max_count=2, max_bytes=100)) == [
        [0, 1],
        [2, 3],
        [4],
    ]


def test_splits_by_size() -> None:
    sizes = [40, 40, 40, 10]
    assert list(batches(sizes, lambda s: s, max_count=10, max_bytes=100)) == [
        [40, 40],
        [40, 10],
    ]


def test_an_oversized_item_travels_alone() -> None:
    sizes = [10, 500, 10]
    assert list(batches(sizes, lambda s: s, max_count=10, max_bytes=100)) == [[10], [500], [10]]


def test_nothing_in_nothing_out() -> None:
    assert list(batches([], lambda _: 1, max_count=1, max_bytes=1)) == []


@given(
    st.lists(st.integers(min_value=1, max_value=50)),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=120),
)
def test_batches_keep_order_and_limits(sizes: list[int], max_count: int, max_bytes: int) -> None:
    result = list(batches(sizes, lambda s: s, max_count=max_count, max_bytes=max_bytes))
    assert [s for batch in result for s in batch] == sizes
    for batch in result:
        assert 1 <= len(batch) <= max_count
        assert len(batch) == 1 or sum(batch) <= max_bytes


# --- send_ahead ------------------------------------------------------------------------


def test_send_ahead_answers_in_order_with_the_next_call_under_way() -> None:
    started: list[int] = []
    second_started = threading.Event()

    def call(request: int) -> int:
        started.append(request)
        if request == 2:
            second_started.set()
        return request * 10

    seen = []
    for request, answer in send_ahead(call, [1, 2, 3]):
        if request == 1:
            # The caller still holds the first answer, and the second call runs.
            assert second_started.wait(5), "the next call did not start before this yield"
        seen.append((request, answer))
    assert seen == [(1, 10), (2, 20), (3, 30)]
    assert started == [1, 2, 3]


def test_send_ahead_sends_nothing_after_a_failure() -> None:
    sent: list[int] = []

    def call(request: int) -> int:
        sent.append(request)
        if request == 2:
            raise ValueError("refused")
        return request

    answers = send_ahead(call, [1, 2, 3, 4])
    assert next(answers) == (1, 1)
    with pytest.raises(ValueError, match="refused"):
        next(answers)
    assert sent == [1, 2]


def test_send_ahead_of_one_or_none_uses_no_thread() -> None:
    threads: set[str] = set()

    def call(request: int) -> int:
        threads.add(threading.current_thread().name)
        return request

    assert list(send_ahead(call, [])) == []
    assert list(send_ahead(call, [7])) == [(7, 7)]
    assert threads == {threading.current_thread().name}
