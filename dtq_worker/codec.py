"""Payload codecs: handler values <-> bytes plus a media type.

JSON is the default both ways (an empty content type on the wire means JSON);
``bytes`` travel untouched as ``application/octet-stream``. The encoding is
the one the Python client uses, so values round-trip between the two.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from dtq_worker.errors import CodecError
from dtq_worker.models import Payload

JSON = "application/json"
"""The default content type."""

OCTET_STREAM = "application/octet-stream"
"""The content type of a ``bytes`` result."""

# One encoder for every result, as the client keeps one for payloads: json.dumps with
# separators builds a JSONEncoder per call (~1 µs, as much as encoding a small value).
# Standard JSON only, as the client's: NaN and Infinity are not JSON for other languages.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@functools.lru_cache(maxsize=64)
def is_json(content_type: str) -> bool:
    """True for an empty content type, ``application/json`` and ``*+json`` types."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("", JSON) or media_type.endswith("+json")


def decode(payload: Payload) -> Any:
    """The handler's input: JSON-decoded for JSON payloads, raw ``bytes`` otherwise.

    An empty JSON payload (a task submitted without one) decodes to None.
    """
    if not is_json(payload.content_type):
        return payload.data
    if not payload.data:
        return None
    try:
        return json.loads(payload.data)
    # JSONDecodeError and UnicodeDecodeError are ValueErrors. RecursionError: a submitter's
    # deeply nested payload must fail its task, not kill the worker thread decoding it.
    except (ValueError, RecursionError) as exc:
        raise CodecError(f"payload is not valid JSON: {exc}") from exc


def encode(value: object) -> Payload:
    """A handler's return value on the wire: ``bytes`` raw, anything else as compact JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return Payload(bytes(value), OCTET_STREAM)
    try:
        data = _COMPACT_JSON.encode(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise CodecError(f"result is not JSON-serialisable: {exc}") from exc
    return Payload(data, JSON)
