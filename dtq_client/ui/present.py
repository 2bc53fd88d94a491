"""How values look on the pages: times, ages, durations, and payloads bounded in size.

Pure functions of the client's models, registered as Jinja filters by
:mod:`dtq_client.ui.templating`. They return plain strings: escaping them is the
templates' job (autoescape), so nothing here builds HTML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from dtq_client import payloads
from dtq_client.models import Schedule

_BINARY_PREVIEW_BYTES = 256
"""Bytes of a binary value shown in hex."""


class ValueKind(StrEnum):
    """How a payload or result was shown."""

    EMPTY = "empty"
    JSON = "json"
    TEXT = "text"
    BINARY = "binary"


@dataclass(frozen=True)
class Shown:
    """A payload, result or long text as the page shows it."""

    kind: ValueKind
    text: str
    size: int
    """The value's size in bytes."""
    truncated: bool = False
    """True when ``text`` shows only the start of the value."""


def show_bytes(data: bytes | None, content_type: str, limit: int) -> Shown:
    """``data`` as text: pretty JSON when it decodes as such, else UTF-8, else a hex preview.

    At most ``limit`` characters of text are kept (hex: 256 bytes).
    """
    if not data:
        return Shown(ValueKind.EMPTY, "", 0)
    if payloads.is_json(content_type):
        try:
            value = json.loads(data)
        except ValueError:  # not JSON after all: show what it is below
            pass
        else:
            pretty = json.dumps(value, indent=2, ensure_ascii=False)
            return _bounded(ValueKind.JSON, pretty, len(data), limit)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        preview = data[:_BINARY_PREVIEW_BYTES].hex(" ")
        return Shown(ValueKind.BINARY, preview, len(data), len(data) > _BINARY_PREVIEW_BYTES)
    return _bounded(ValueKind.TEXT, text, len(data), limit)


def show_text(text: str, limit: int) -> Shown:
    """A long text (an error message, a traceback) cut to ``limit`` characters."""
    if not text:
        return Shown(ValueKind.EMPTY, "", 0)
    return _bounded(ValueKind.TEXT, text, len(text.encode()), limit)


def _bounded(kind: ValueKind, text: str, size: int, limit: int) -> Shown:
    if len(text) <= limit:
        return Shown(kind, text, size)
    return Shown(kind, text[:limit], size, truncated=True)


def fmt_time(moment: datetime | None) -> str:
    """``2030-01-02 03:04:05 UTC``, or an em dash for None."""
    if moment is None:
        return "\u2014"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_age(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago (``5 s ago``) or how far ahead (``in 3 min``) ``moment`` is; "" for None."""
    if moment is None:
        return ""
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    span = fmt_seconds(abs(delta), whole=True)
    return f"{span} ago" if delta >= 0 else f"in {span}"


def fmt_seconds(seconds: float | None, *, whole: bool = False) -> str:
    """A duration in the largest fitting unit: ``750 ms``, ``12 s``, ``4 min``, ``2 h``, ``3 d``."""
    if seconds is None:
        return "\u2014"
    if seconds < 1 and not whole:
        return f"{seconds * 1000:.0f} ms"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s" if whole or seconds >= 10 else f"{seconds:.1f} s"


def fmt_bytes(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``2.0 MiB``."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def fmt_limit(value: float) -> str:
    """A queue limit, or an em dash for 0 (no limit)."""
    if not value:
        return "\u2014"
    return f"{value:g}"


def fmt_timing(schedule: Schedule) -> str:
    """When a schedule fires: ``cron 0 3 * * *`` or ``every 30 s``."""
    if schedule.cron is not None:
        return f"cron {schedule.cron}"
    if schedule.interval_s is not None:
        interval = schedule.interval_s
        return f"every {fmt_seconds(interval, whole=float(interval).is_integer())}"
    return "\u2014"
