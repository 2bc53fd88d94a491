from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dtq_client.batching import batches


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
