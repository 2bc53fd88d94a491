"""A registry with a lifespan and a middleware, for tests: they record their setup,
teardown and every task they wrap in a file.

``TEST_LIFESPAN_LOG`` names the file (one ``EVENT PID`` line each, appended);
with ``TEST_LIFESPAN_FAIL`` set, the setup raises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dtq_worker import Registry, TaskContext

LOG_ENV = "TEST_LIFESPAN_LOG"
FAIL_ENV = "TEST_LIFESPAN_FAIL"
SETUP_ERROR = "no database today"

registry = Registry()


def record(event: str) -> None:
    """Append ``EVENT PID`` to the log file (one write: lines from processes do not mix)."""
    with Path(os.environ[LOG_ENV]).open("a") as log:
        log.write(f"{event} {os.getpid()}\n")


def events(path: Path) -> list[tuple[str, int]]:
    """The ``(event, pid)`` lines recorded so far."""
    if not path.exists():
        return []
    return [(e, int(pid)) for e, pid in (line.split() for line in path.read_text().splitlines())]


@registry.lifespan
def resources() -> Iterator[dict[str, Any]]:
    record("setup")
    if os.environ.get(FAIL_ENV):
        raise RuntimeError(SETUP_ERROR)
    try:
        yield {"made_in": os.getpid()}
    finally:
        record("teardown")


@registry.middleware
def count_tasks(
    call_next: Callable[[Any, TaskContext], Any], payload: Any, ctx: TaskContext
) -> Any:
    record("task")
    return call_next(payload, ctx)


@registry.task("whoami")
def whoami(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """The process that ran the task and the resources it saw, after ``sleep`` seconds."""
    time.sleep(float((payload or {}).get("sleep", 0)))
    return {"pid": os.getpid(), "resources": ctx.resources}
