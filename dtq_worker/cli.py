"""``dtq-worker MODULE[:ATTR]``: run a worker node for the handlers of a Registry.

Exit codes: 0 clean shutdown, 1 the coordinator refused the node, 2 bad usage
(including a MODULE[:ATTR] that cannot be loaded), 70 worker threads died too
often (restart intensity exceeded).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import cast

import click

from dtq import __version__, logs, loops
from dtq.cli_types import FiniteFloat
from dtq.connect_flags import connect_options
from dtq.tls import ClientTls, TlsConfigError
from dtq_worker.config import (
    DEFAULT_COORDINATOR,
    DEFAULT_PREFETCH_BUFFER_BYTES,
    MAX_SLOTS,
    Isolation,
    Prefetch,
    WorkerConfig,
    default_node_id,
)
from dtq_worker.errors import ConfigError, RegistryLoadError
from dtq_worker.node import Node
from dtq_worker.registry import load_registry

# Every option shows the environment variable it also reads (flags > env > defaults).
option = functools.partial(click.option, show_envvar=True)


def _queues(value: str) -> tuple[str, ...]:
    return tuple(q.strip() for q in value.split(",") if q.strip())


def _prefetch(ctx: click.Context, param: click.Parameter, value: str) -> Prefetch:
    """``--prefetch``: ``auto`` or a count."""
    if value == "auto":
        return "auto"
    try:
        count = int(value)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_SLOTS:
        raise click.BadParameter(f"{value!r} is not 'auto' or a number 0-{MAX_SLOTS}")
    return count


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("target", metavar="MODULE[:ATTR]")
@option(
    "--coordinator",
    envvar="DTQ_COORDINATOR",
    default=DEFAULT_COORDINATOR,
    help="Coordinator address, host:port (or a gRPC target naming several: "
    "ipv4:h1:p1,h2:p2, for coordinators sharing a PostgreSQL database).",
)
@connect_options
@option(
    "--threads",
    envvar="DTQ_THREADS",
    type=click.IntRange(1, 10_000),
    default=4,
    help="Worker threads (= slots: tasks run at once).",
)
@option(
    "--prefetch",
    envvar="DTQ_PREFETCH",
    default="auto",
    callback=_prefetch,
    help="Tasks to hold beyond the slots, so a freed thread starts its next task at once: "
    "0-10000, or auto (what the threads finish in a round trip to the coordinator: "
    "short tasks are held, long ones not, and held ones that turn out long are handed "
    "back). 0 never holds more than can run.",
)
@option(
    "--prefetch-buffer-bytes",
    envvar="DTQ_PREFETCH_BUFFER_BYTES",
    type=click.IntRange(min=0),
    default=DEFAULT_PREFETCH_BUFFER_BYTES,
    help="With --prefetch auto: payload bytes the held tasks may take, at the mean size "
    "of recent payloads (fewer large tasks are held).",
)
@option(
    "--queues",
    envvar="DTQ_QUEUES",
    default="default",
    help="Comma-separated queues to take tasks from.",
)
@option(
    "--node-id",
    envvar="DTQ_NODE_ID",
    default=None,
    show_default="HOSTNAME-PID",
    help="Node id, unique per process.",
)
@option(
    "--max-restarts",
    envvar="DTQ_MAX_RESTARTS",
    type=click.IntRange(min=0),
    default=3,
    help="Worker-thread restarts allowed per --restart-period; one more exits 70.",
)
@option(
    "--restart-period",
    envvar="DTQ_RESTART_PERIOD",
    type=FiniteFloat(min=0, min_open=True),
    default=5.0,
    help="Restart-intensity window, seconds.",
)
@option(
    "--shutdown-grace",
    envvar="DTQ_SHUTDOWN_GRACE",
    type=FiniteFloat(min=0),
    default=30.0,
    help="On SIGTERM or drain, seconds running tasks get to finish before they are released.",
)
@option(
    "--isolation",
    envvar="DTQ_ISOLATION",
    type=click.Choice(["thread", "process"]),
    default="thread",
    help="Run handlers on the worker threads, or in one child process per thread "
    "(a hung handler can then be killed, and a segfault costs one child).",
)
@option(
    "--tracing/--no-tracing",
    envvar="DTQ_TRACING",
    default=False,
    help="Run each task inside an OpenTelemetry span, a child of the trace context its "
    "headers carry (needs opentelemetry-api; spans go where the process's SDK sends them).",
)
@option(
    "--metrics-listen",
    envvar="DTQ_METRICS_LISTEN",
    default=None,
    metavar="HOST:PORT",
    show_default="off",
    help="Serve Prometheus metrics at HOST:PORT/metrics: task outcomes and durations by "
    "queue and type, threads, restarts (plain HTTP: loopback unless --metrics-insecure).",
)
@option(
    "--metrics-insecure",
    envvar="DTQ_METRICS_INSECURE",
    is_flag=True,
    default=False,
    help="Allow --metrics-listen beyond loopback, on a network you trust.",
)
@option(
    "--event-loop",
    envvar="DTQ_EVENT_LOOP",
    type=click.Choice(loops.EVENT_LOOPS),
    default="auto",
    help="The asyncio loop: auto is uvloop when installed (less CPU per task).",
)
@option(
    "--task-timeout",
    envvar="DTQ_TASK_TIMEOUT",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    show_default="no limit",
    help="Seconds one handler may run before its attempt fails TIMED_OUT (retryable).",
)
@option(
    "--reconnect-backoff-max",
    envvar="DTQ_RECONNECT_BACKOFF_MAX",
    type=FiniteFloat(min=0, min_open=True),
    default=5.0,
    help="Longest pause, seconds, between attempts to reach the coordinator (while the "
    "node holds a session, at most a quarter of its heartbeat timeout).",
)
@option(
    "--rpc-timeout",
    envvar="DTQ_RPC_TIMEOUT",
    type=FiniteFloat(min=0, min_open=True),
    default=10.0,
    help="Seconds to wait for the coordinator's answer to a registration, the last acks "
    "and the close.",
)
@option(
    "--progress-interval",
    envvar="DTQ_PROGRESS_INTERVAL",
    type=FiniteFloat(min=0, min_open=True),
    default=0.5,
    help="At most one progress update per task per this many seconds (the latest wins).",
)
@option(
    "--max-result-bytes",
    envvar="DTQ_MAX_RESULT_BYTES",
    type=click.IntRange(min=1),
    default=1024 * 1024,
    help="Largest encoded result; a larger one fails RESULT_TOO_LARGE. The coordinator's "
    "smaller limit wins once registered.",
)
@option(
    "--log-level",
    envvar="DTQ_LOG_LEVEL",
    type=click.Choice(logs.LOG_LEVELS),
    default="info",
    help="Least severe log level shown.",
)
@option(
    "--log-format",
    envvar="DTQ_LOG_FORMAT",
    type=click.Choice(["console", "json"]),
    default="console",
    help="Log lines for humans, or one JSON object per line.",
)
@click.version_option(__version__, "-V", "--version", prog_name="dtq-worker")
def main(
    target: str,
    coordinator: str,
    tls: ClientTls | None,
    token: str | None,
    threads: int,
    prefetch: Prefetch,
    prefetch_buffer_bytes: int,
    queues: str,
    node_id: str | None,
    max_restarts: int,
    restart_period: float,
    shutdown_grace: float,
    isolation: str,
    tracing: bool,
    metrics_listen: str | None,
    metrics_insecure: bool,
    event_loop: str,
    task_timeout: float | None,
    reconnect_backoff_max: float,
    rpc_timeout: float,
    progress_interval: float,
    max_result_bytes: int,
    log_level: str,
    log_format: str,
) -> None:
    """Run a DTQ worker node for the handlers registered in MODULE[:ATTR].

    ATTR names a dtq_worker.Registry and defaults to "registry", e.g.
    "dtq-worker myapp.tasks" or "dtq-worker myapp.tasks:registry".
    """
    logs.configure(log_level, cast(logs.LogFormat, log_format))
    try:
        config = WorkerConfig(
            coordinator=coordinator,
            tls=tls,
            token=token,
            threads=threads,
            prefetch=prefetch,
            prefetch_buffer_bytes=prefetch_buffer_bytes,
            queues=_queues(queues),
            node_id=node_id or default_node_id(),
            max_restarts=max_restarts,
            restart_period_s=restart_period,
            shutdown_grace_s=shutdown_grace,
            isolation=cast(Isolation, isolation),
            tracing=tracing,
            metrics_listen=metrics_listen,
            metrics_insecure=metrics_insecure,
            event_loop=cast(loops.EventLoop, event_loop),
            task_timeout_s=task_timeout,
            reconnect_backoff_max_s=reconnect_backoff_max,
            rpc_timeout_s=rpc_timeout,
            progress_interval_s=progress_interval,
            max_result_bytes=max_result_bytes,
            log_level=log_level,
            log_format=cast(logs.LogFormat, log_format),
        )
        if config.tls is not None:
            config.tls.credentials()  # unreadable files fail now, not at the first connect
    except (ConfigError, TlsConfigError) as exc:
        raise click.UsageError(str(exc)) from exc
    # Like `python -m`, find the user's modules in the current directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        registry = load_registry(target)
    except RegistryLoadError as exc:
        raise click.BadParameter(str(exc), param_hint="MODULE[:ATTR]") from exc
    try:
        node = Node(config, registry)
    except ConfigError as exc:  # e.g. handlers process isolation cannot pickle
        raise click.UsageError(str(exc)) from exc
    sys.exit(node.run())
