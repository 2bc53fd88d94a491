from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtq_client import payloads
from dtq_client.errors import PayloadError

# Standard JSON: no NaN or infinity (they are refused: see test_convert.py).
json_numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | json_numbers | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("", True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.dtq+json", True),
        ("application/octet-stream", False),
        ("text/plain", False),
    ],
)
def test_is_json(content_type: str, expected: bool) -> None:
    assert payloads.is_json(content_type) is expected


def test_values_encode_as_compact_json() -> None:
    assert payloads.encode({"x": 1, "y": [1, 2]}) == (b'{"x":1,"y":[1,2]}', "application/json")
    assert payloads.encode(None) == (b"null", "application/json")


def test_bytes_travel_untouched() -> None:
    assert payloads.encode(b"\x00\xff") == (b"\x00\xff", "application/octet-stream")
    assert payloads.encode(b"<a/>", "text/xml") == (b"<a/>", "text/xml")
    assert payloads.encode(bytearray(b"ab")) == (b"ab", "application/octet-stream")


def test_text_with_a_non_json_type_is_utf8() -> None:
    assert payloads.encode("héllo", "text/plain") == ("héllo".encode(), "text/plain")


def test_a_json_suffix_type_is_json_encoded_and_kept() -> None:
    assert payloads.encode([1], "application/vnd.x+json") == (b"[1]", "application/vnd.x+json")


def test_unencodable_values_raise_payload_error() -> None:
    with pytest.raises(PayloadError) as info:
        payloads.encode({"when": object()})
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(PayloadError):
        payloads.encode(3.5, "image/png")


def test_decode() -> None:
    assert payloads.decode(b'{"x":1}', "") == {"x": 1}
    assert payloads.decode(b"\x00", "application/octet-stream") == b"\x00"
    with pytest.raises(PayloadError):
        payloads.decode(b"{nope", "application/json")


@given(json_values)
def test_json_round_trip(value: object) -> None:
    data, content_type = payloads.encode(value)
    assert payloads.decode(data, content_type) == value
    assert data == json.dumps(value, separators=(",", ":")).encode()
