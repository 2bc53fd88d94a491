"""Payload codecs: Python values <-> bytes plus a media type.

The coordinator never decodes payloads. The Python client and worker default
to compact JSON; ``bytes`` travel untouched. An empty content type on the wire
means JSON (see ``dtq.v1.Payload``).
"""

from __future__ import annotations

import json

from dtq_client.errors import PayloadError

JSON = "application/json"
"""The default content type."""

OCTET_STREAM = "application/octet-stream"
"""The content type of ``bytes`` sent without one."""

# One encoder for every payload: json.dumps with separators builds a new one per call,
# which costs more than encoding a small payload. Standard JSON only: Python writes NaN
# and Infinity by default, which no other language's JSON parser reads (a worker in
# JavaScript or Go could not decode the task).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def is_json(content_type: str) -> bool:
    """True for an empty content type, ``application/json`` and ``*+json`` types."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("", JSON) or media_type.endswith("+json")


def encode(value: object, content_type: str | None = None) -> tuple[bytes, str]:
    """Encode ``value`` and return ``(data, content_type)``.

    ``bytes`` are sent as-is (``application/octet-stream`` unless a content type
    is given). Other values are JSON-encoded compactly when the content type is
    JSON or not given; a ``str`` with another content type is sent as UTF-8.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), content_type or OCTET_STREAM
    if content_type is None or is_json(content_type):
        try:
            data = _COMPACT_JSON.encode(value).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise PayloadError(f"payload is not JSON-serialisable: {exc}") from exc
        return data, content_type or JSON
    if isinstance(value, str):
        return value.encode(), content_type
    raise PayloadError(
        f"cannot encode {type(value).__name__} as {content_type!r}: pass bytes for non-JSON types"
    )


def decode(data: bytes, content_type: str) -> object:
    """Decode a JSON payload to a value; return any other payload as bytes."""
    if not is_json(content_type):
        return data
    try:
        return json.loads(data)
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; RecursionError: a result
    # (from a node in any language) nested deeper than Python's parser goes.
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from exc
