"""How the pages show values: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dtq_client import Schedule, TaskSpec
from dtq_client.output import format_some
from dtq_client.ui.listing import QueryError, StaleToken, TaskQuery
from dtq_client.ui.present import (
    ValueKind,
    fmt_age,
    fmt_seconds,
    fmt_timing,
    show_bytes,
    show_text,
)

pytestmark = pytest.mark.timeout(5)


def test_json_is_pretty_printed_and_bounded() -> None:
    shown = show_bytes(b'{"a":[1,2],"s":"<b>"}', "application/json", 1000)
    assert shown.kind is ValueKind.JSON
    assert shown.text == '{\n  "a": [\n    1,\n    2\n  ],\n  "s": "<b>"\n}'
    assert not shown.truncated
    big = show_bytes(b'"' + b"x" * 500 + b'"', "application/json", 100)
    assert big.truncated
    assert len(big.text) == 100
    assert big.size == 502


def test_other_values_show_as_text_or_hex() -> None:
    assert show_bytes(b"not json", "application/json", 100).kind is ValueKind.TEXT
    assert show_bytes("h\u00e9".encode(), "text/plain", 100).text == "h\u00e9"
    binary = show_bytes(bytes(range(256)) * 2, "application/octet-stream", 100)
    assert binary.kind is ValueKind.BINARY
    assert binary.text.startswith("00 01 02")
    assert binary.truncated
    assert show_bytes(None, "", 100).kind is ValueKind.EMPTY
    assert show_text("", 10).kind is ValueKind.EMPTY
    assert show_text("x" * 20, 10).text == "x" * 10


def test_ages_and_durations() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert fmt_age(now - timedelta(seconds=5), now) == "5 s ago"
    assert fmt_age(now + timedelta(minutes=10), now) == "in 10 min"
    assert fmt_age(now - timedelta(hours=3), now) == "3 h ago"
    assert fmt_age(None, now) == ""
    assert fmt_seconds(0.25) == "250 ms"
    assert fmt_seconds(2.5) == "2.5 s"
    assert fmt_seconds(90) == "90 s"
    assert fmt_seconds(3 * 86_400) == "3 d"


def test_schedule_timing() -> None:
    spec = TaskSpec("echo")
    assert fmt_timing(Schedule(name="a", task=spec, cron="0 3 * * *")) == "cron 0 3 * * *"
    assert fmt_timing(Schedule(name="b", task=spec, interval_s=30)) == "every 30 s"
    assert fmt_timing(Schedule(name="c", task=spec, interval_s=3600)) == "every 60 min"


def test_task_query_from_url_parameters() -> None:
    params = {"queue": " q ", "state": "FAILED", "header": "k=a=b", "page_token": "MTI6YWJj"}
    query = TaskQuery.from_params(params)
    assert query == TaskQuery(queue="q", state="failed", header="k=a=b", page_token="MTI6YWJj")
    assert query.headers == {"k": "a=b"}  # the value is everything after the first "="
    assert query.params(page_token="") == {"queue": "q", "state": "failed", "header": "k=a=b"}
    assert TaskQuery().params() == {}
    assert TaskQuery().headers is None
    bad_params = (
        {"state": "nope"},
        {"type": "t" * 201},
        {"header": "no-value"},
        {"header": "=v"},
        {"header": "k" * 65 + "=v"},
    )
    for bad in bad_params:
        with pytest.raises(QueryError):
            TaskQuery.from_params(bad)
    with pytest.raises(StaleToken) as stale:
        TaskQuery.from_params({"queue": "q", "page_token": "not a token"})
    assert stale.value.query == TaskQuery(queue="q")


def test_long_lists_of_names_are_cut_and_counted() -> None:
    assert format_some([]) == ""
    assert format_some(["a", "b"]) == "a, b"
    names = [f"q{i}" for i in range(25)]
    assert format_some(names[:20]) == ", ".join(names[:20])
    assert format_some(names) == ", ".join(names[:20]) + " and 5 more"
    assert format_some(names, shown=1) == "q0 and 24 more"
    assert format_some(names[:3], separator=",") == "q0,q1,q2"
