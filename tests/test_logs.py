"""dtq.logs: every event is one line, written with one call."""

from __future__ import annotations

import json
import sys

import structlog

from dtq import logs


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_event_is_one_write_of_one_line() -> None:
    # Processes that share a stderr (make run's coordinator and nodes) write through
    # it unbuffered: a line written in two calls can be split by another's line.
    recorder, real = _Recorder(), sys.stderr
    sys.stderr = recorder
    try:
        logs.configure("info", "json")
        structlog.get_logger("test").info("tasks.handed_back", count=7, prefetch=0)
    finally:
        sys.stderr = real
        logs.configure("debug", "console")  # the session's setting (tests/conftest.py)
    [line] = recorder.writes
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["event"] == "tasks.handed_back"
