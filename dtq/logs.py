"""Structured logging shared by the coordinator, worker nodes and the CLI.

Every component logs one line per event to stderr, either human-readable
(``console``) or one JSON object per line (``json``), through structlog::

    log = structlog.get_logger("dtq_server.dispatch")
    log.info("task.leased", task_id=..., attempt=2, node_id="host-1")

Nothing is configured at import time; each command calls :func:`configure`
once from its ``main``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
LOG_LEVELS = ("debug", "info", "warning", "error")


class _LossyStderr:
    """stderr that drops what it cannot write (a full disk, a closed pipe) instead of raising.

    A log call must never be what fails a request, or kills the coordinator's
    store writer thread while the disk its log shares with the database is full.
    """

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


def configure(level: str = "info", fmt: LogFormat = "console") -> None:
    """Route structlog and stdlib logging to stderr at ``level`` in ``fmt``."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (message and newline together): stderr writes through,
        # so print()'s two writes let lines of processes sharing a stderr interleave.
        logger_factory=structlog.WriteLoggerFactory(file=_LossyStderr()),  # type: ignore[arg-type]
        # The loggers are module globals used on every task: bind each once.
        cache_logger_on_first_use=True,
    )
    # grpc and other libraries log through the stdlib; give them the same look.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
