"""Pages of the listings of schedules, nodes, queues and rate limits.

A page holds at most ``page_size`` items (1-1,000; 0 means 1,000) and ends
before its messages pass :data:`~dtq_server.coordinator.MAX_PAGE_BYTES` (at
least one item): a listing answered in one message failed for good once it
passed the 8 MiB a message may hold. A token names the last item listed (its
sort key), so an item added or removed between two pages does not shift the
next one. Schedules and nodes are paged from memory; queues and rate limits
are read from the store a page at a time (:func:`read_page`), in the store's
order, after the name the token holds.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from dtq_server.coordinator import MAX_PAGE_BYTES, MAX_PAGE_SIZE
from dtq_server.errors import InvalidArgument

T = TypeVar("T")
M = TypeVar("M", bound=Message)
Key = list[Any]
"""An item's place in its listing's order, as JSON can hold it."""


def page(
    items: Sequence[T],
    key: Callable[[T], Key],
    convert: Callable[[T], M],
    page_size: int,
    page_token: str,
    listing: str,
) -> tuple[list[M], str]:
    """The page of ``items`` (sorted by ``key``) that ``page_token`` asks for, converted,
    and the next page's token ("" if it is the last)."""
    limit = _page_limit(page_size)
    start = 0
    if page_token:
        after = _after(page_token, listing)
        try:
            start = bisect.bisect_right(items, after, key=key)
        except TypeError:  # a key of other types than this listing's, made up
            raise InvalidArgument([("page_token", f"not a token from {listing}")]) from None
    return _page_from(items[start : start + limit + 1], key, convert, limit, listing)


def _page_from(
    ahead: Sequence[T], key: Callable[[T], Key], convert: Callable[[T], M], limit: int, listing: str
) -> tuple[list[M], str]:
    """A page of at most ``limit`` of ``ahead`` (the items after the previous page, in
    order, and one more if there is one: it says whether more follow), converted, and
    the next page's token."""
    converted: list[M] = []
    size = 0
    for item in ahead[:limit]:
        message = convert(item)
        size += message.ByteSize()
        if converted and size > MAX_PAGE_BYTES:
            break  # it starts the next page
        converted.append(message)
    if len(converted) == len(ahead):
        return converted, ""
    last = key(ahead[len(converted) - 1])
    raw = json.dumps({"listing": listing, "after": last}).encode()
    return converted, base64.urlsafe_b64encode(raw).decode()


async def read_page(
    read: Callable[[str, int], Awaitable[list[T]]],
    key: Callable[[T], Key],
    convert: Callable[[T], M],
    page_size: int,
    page_token: str,
    listing: str,
) -> tuple[list[M], str]:
    """The page ``page_token`` asks for of a listing ordered by one name, read with
    ``read(after, limit)`` (the first ``limit`` items named after ``after``), converted,
    and the next page's token."""
    limit = _page_limit(page_size)
    ahead = await read(_after_name(page_token, listing), limit + 1)
    return _page_from(ahead, key, convert, limit, listing)


def _page_limit(page_size: int) -> int:
    """The most items a page of ``page_size`` holds (InvalidArgument past the maximum)."""
    if page_size > MAX_PAGE_SIZE:
        raise InvalidArgument([("page_size", f"must be at most {MAX_PAGE_SIZE}")])
    return page_size or MAX_PAGE_SIZE


def _after_name(page_token: str, listing: str) -> str:
    """For a listing ordered by one name: the name the page starts after ("" for the first)."""
    if not page_token:
        return ""
    after = _after(page_token, listing)
    # A NUL is in no name, and PostgreSQL refuses it as a parameter (as "unavailable").
    if len(after) != 1 or not isinstance(after[0], str) or "\x00" in after[0]:
        raise InvalidArgument([("page_token", f"not a token from {listing}")])
    return after[0]


def _after(token: str, listing: str) -> Key:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(raw, dict) and raw.get("listing") == listing:
            after = raw.get("after")
            if isinstance(after, list) and after:
                return after
    except (ValueError, UnicodeError, RecursionError):  # "[[[[...": JSON nested too deep
        pass
    raise InvalidArgument([("page_token", f"not a token from {listing}")])
