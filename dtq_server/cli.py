"""``dtq-server``: run a coordinator."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import cast

import click

import dtq
from dtq import logs, loops
from dtq.cli_types import FiniteFloat
from dtq.tls import ServerTls, TlsConfigError
from dtq_server import collector
from dtq_server.app import serve
from dtq_server.config import ServerConfig
from dtq_server.failpoints import Failpoints
from dtq_server.store.base import StoreCorrupt
from dtq_server.tokens import TokenBook, TokenFileError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--listen",
    envvar="DTQ_LISTEN",
    default="127.0.0.1:50051",
    show_default=True,
    help="Address to serve on (port 0 picks a free port). [env: DTQ_LISTEN]",
)
@click.option(
    "--tls-cert",
    envvar="DTQ_TLS_CERT",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM certificate chain: serve TLS (with --tls-key). [env: DTQ_TLS_CERT]",
)
@click.option(
    "--tls-key",
    envvar="DTQ_TLS_KEY",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM private key of --tls-cert. [env: DTQ_TLS_KEY]",
)
@click.option(
    "--tls-client-ca",
    envvar="DTQ_TLS_CLIENT_CA",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM CA bundle: require client certificates signed by it (mTLS). [env: DTQ_TLS_CLIENT_CA]",
)
@click.option(
    "--tls-node-identity",
    envvar="DTQ_TLS_NODE_IDENTITY",
    is_flag=True,
    default=False,
    help="With --tls-client-ca: a node may register only a node id its client certificate "
    "names (SAN, or CN without SANs). [env: DTQ_TLS_NODE_IDENTITY]",
)
@click.option(
    "--tokens-file",
    envvar="DTQ_TOKENS_FILE",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TOML file of token hashes and roles (make entries with dtq-token): every call "
    "must then carry a token its role allows. [env: DTQ_TOKENS_FILE]",
)
@click.option(
    "--metrics-listen",
    envvar="DTQ_METRICS_LISTEN",
    default=None,
    help="Serve Prometheus metrics at http(s)://HOST:PORT/metrics (off by default; "
    "HTTPS with --tls-cert). [env: DTQ_METRICS_LISTEN]",
)
@click.option(
    "--health-unauthenticated/--health-needs-token",
    envvar="DTQ_HEALTH_UNAUTHENTICATED",
    default=None,
    help="With --tokens-file: whether grpc.health.v1 checks need no token "
    "(default: only on a loopback --listen). [env: DTQ_HEALTH_UNAUTHENTICATED]",
)
@click.option(
    "--insecure",
    envvar="DTQ_INSECURE",
    is_flag=True,
    default=False,
    help="Allow plaintext on a non-loopback --listen (refused otherwise). [env: DTQ_INSECURE]",
)
@click.option(
    "--data-dir",
    envvar="DTQ_DATA_DIR",
    default="dtq-data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the SQLite database. [env: DTQ_DATA_DIR]",
)
@click.option(
    "--database-url",
    envvar="DTQ_DATABASE_URL",
    default=None,
    help="Keep the queue in PostgreSQL (postgresql://user@host:port/db) instead of SQLite; "
    "several coordinators may share one database: one leads, the others stand by and take "
    "over. [env: DTQ_DATABASE_URL]",
)
@click.option(
    "--synchronous",
    envvar="DTQ_SYNCHRONOUS",
    default="FULL",
    show_default=True,
    type=click.Choice(["FULL", "NORMAL"], case_sensitive=False),
    help="SQLite durability: FULL survives power loss, NORMAL only crashes. [env: DTQ_SYNCHRONOUS]",
)
@click.option(
    "--heartbeat-interval",
    envvar="DTQ_HEARTBEAT_INTERVAL",
    default=2.0,
    show_default=True,
    type=FiniteFloat(min=0.05),
    help="Seconds between node heartbeats. [env: DTQ_HEARTBEAT_INTERVAL]",
)
@click.option(
    "--heartbeat-timeout",
    envvar="DTQ_HEARTBEAT_TIMEOUT",
    default=10.0,
    show_default=True,
    type=FiniteFloat(min=0.2),
    help="Silence after which a node is dead. [env: DTQ_HEARTBEAT_TIMEOUT]",
)
@click.option(
    "--shutdown-grace",
    envvar="DTQ_SHUTDOWN_GRACE",
    default=10.0,
    show_default=True,
    type=FiniteFloat(min=0),
    help="Seconds results are still accepted after SIGTERM. [env: DTQ_SHUTDOWN_GRACE]",
)
@click.option(
    "--max-attempts",
    envvar="DTQ_MAX_ATTEMPTS",
    default=3,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Default attempts per task. [env: DTQ_MAX_ATTEMPTS]",
)
@click.option(
    "--max-lease-expiries",
    envvar="DTQ_MAX_LEASE_EXPIRIES",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Lost leases before a task is dead-lettered. [env: DTQ_MAX_LEASE_EXPIRIES]",
)
@click.option(
    "--retry-backoff",
    envvar="DTQ_RETRY_BACKOFF",
    default=1.0,
    show_default=True,
    type=FiniteFloat(min=0.001),
    help="Default first retry delay in seconds. [env: DTQ_RETRY_BACKOFF]",
)
@click.option(
    "--retry-backoff-max",
    envvar="DTQ_RETRY_BACKOFF_MAX",
    default=300.0,
    show_default=True,
    type=FiniteFloat(min=0.001),
    help="Longest retry delay in seconds. [env: DTQ_RETRY_BACKOFF_MAX]",
)
@click.option(
    "--max-payload-bytes",
    envvar="DTQ_MAX_PAYLOAD_BYTES",
    default=1024 * 1024,
    show_default=True,
    type=click.IntRange(1, 4 * 1024 * 1024 - 64 * 1024),
    help="Largest payload accepted. [env: DTQ_MAX_PAYLOAD_BYTES]",
)
@click.option(
    "--max-result-bytes",
    envvar="DTQ_MAX_RESULT_BYTES",
    default=1024 * 1024,
    show_default=True,
    type=click.IntRange(1, 4 * 1024 * 1024 - 64 * 1024),
    help="Largest result accepted. [env: DTQ_MAX_RESULT_BYTES]",
)
@click.option(
    "--max-connection-age",
    envvar="DTQ_MAX_CONNECTION_AGE",
    default=None,
    type=FiniteFloat(min=1.0),
    help="Rotate client connections after this many seconds (GOAWAY; nodes resume their "
    "sessions). Default: never. [env: DTQ_MAX_CONNECTION_AGE]",
)
@click.option(
    "--max-connection-age-grace",
    envvar="DTQ_MAX_CONNECTION_AGE_GRACE",
    default=30.0,
    show_default=True,
    type=FiniteFloat(min=0.0),
    help="Seconds calls on a rotated connection may still run. [env: DTQ_MAX_CONNECTION_AGE_GRACE]",
)
@click.option(
    "--result-ttl",
    envvar="DTQ_RESULT_TTL",
    default=7 * 86400.0,
    show_default=True,
    type=FiniteFloat(min=1.0),
    help="Seconds finished tasks are kept when they do not say. [env: DTQ_RESULT_TTL]",
)
@click.option(
    "--max-call-time",
    envvar="DTQ_MAX_CALL_TIME",
    default=60.0,
    show_default=True,
    type=FiniteFloat(min=0),
    help="Seconds a unary call may run, whatever deadline its client set (or none): then "
    "DEADLINE_EXCEEDED (MAX_CALL_TIME). Streams are not capped. 0: no cap. "
    "[env: DTQ_MAX_CALL_TIME]",
)
@click.option(
    "--strict-task-types/--no-strict-task-types",
    envvar="DTQ_STRICT_TASK_TYPES",
    default=False,
    show_default=True,
    help="Refuse submits of a (queue, type) no node has ever declared (FAILED_PRECONDITION "
    "UNKNOWN_TASK_TYPE) instead of queuing them for a node that may never come. "
    "[env: DTQ_STRICT_TASK_TYPES]",
)
@click.option(
    "--port-file",
    envvar="DTQ_PORT_FILE",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bound host:port here once serving. [env: DTQ_PORT_FILE]",
)
@click.option(
    "--log-level",
    envvar="DTQ_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(logs.LOG_LEVELS),
    help="[env: DTQ_LOG_LEVEL]",
)
@click.option(
    "--event-loop",
    envvar="DTQ_EVENT_LOOP",
    default="auto",
    show_default=True,
    type=click.Choice(loops.EVENT_LOOPS),
    help="The asyncio loop: auto is uvloop when installed (less CPU per task). "
    "[env: DTQ_EVENT_LOOP]",
)
@click.option(
    "--log-format",
    envvar="DTQ_LOG_FORMAT",
    default="console",
    show_default=True,
    type=click.Choice(["console", "json"]),
    help="[env: DTQ_LOG_FORMAT]",
)
@click.version_option(dtq.__version__, prog_name="dtq-server")
def main(
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    tls_node_identity: bool,
    tokens_file: Path | None,
    metrics_listen: str | None,
    health_unauthenticated: bool | None,
    insecure: bool,
    data_dir: Path,
    database_url: str | None,
    synchronous: str,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    shutdown_grace: float,
    max_attempts: int,
    max_lease_expiries: int,
    retry_backoff: float,
    retry_backoff_max: float,
    max_payload_bytes: int,
    max_result_bytes: int,
    max_connection_age: float | None,
    max_connection_age_grace: float,
    result_ttl: float,
    max_call_time: float,
    strict_task_types: bool,
    port_file: Path | None,
    event_loop: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run a DTQ coordinator: the durable queue and the registry of worker nodes.

    Stops gracefully on SIGTERM or SIGINT: health turns NOT_SERVING, submits
    are refused, results are accepted for the shutdown grace, then it exits 0.
    Exits 1 if the database is unusable (it never overwrites an existing file).
    With --database-url, a coordinator that another one leads waits, without
    listening, until it can take over.
    """
    logs.configure(log_level, "json" if log_format == "json" else "console")
    try:
        config = ServerConfig(
            listen=listen,
            tls=server_tls(tls_cert, tls_key, tls_client_ca, tls_node_identity),
            insecure=insecure,
            tokens_file=tokens_file,
            metrics_listen=metrics_listen,
            health_unauthenticated=health_unauthenticated,
            data_dir=data_dir,
            database_url=database_url or None,
            synchronous="NORMAL" if synchronous.upper() == "NORMAL" else "FULL",
            heartbeat_interval_s=heartbeat_interval,
            heartbeat_timeout_s=heartbeat_timeout,
            shutdown_grace_s=shutdown_grace,
            default_max_attempts=max_attempts,
            max_lease_expiries=max_lease_expiries,
            retry_backoff_s=retry_backoff,
            retry_backoff_max_s=retry_backoff_max,
            max_payload_bytes=max_payload_bytes,
            max_result_bytes=max_result_bytes,
            max_connection_age_s=max_connection_age,
            max_connection_age_grace_s=max_connection_age_grace,
            result_ttl_s=result_ttl,
            max_call_s=max_call_time or None,
            strict_task_types=strict_task_types,
            port_file=port_file,
            event_loop=cast(loops.EventLoop, event_loop),
            # Fault injection for tests only, so an environment variable and no flag.
            failpoints=Failpoints.parse(os.environ.get("DTQ_FAILPOINT", "")),
        )
        if config.tls is not None:
            config.tls.credentials()  # unusable files fail now, before the store opens
        if config.tokens_file is not None:
            TokenBook(config.tokens_file)  # likewise a tokens file that does not parse
    except ValueError as exc:  # TlsConfigError included
        raise click.UsageError(str(exc)) from exc
    collector.tune()
    try:
        loops.run(serve(config), config.event_loop)
    except (StoreCorrupt, TlsConfigError, TokenFileError) as exc:
        click.echo(f"dtq-server: refusing to start: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"dtq-server: {exc}", err=True)
        sys.exit(1)


def server_tls(
    cert: Path | None, key: Path | None, client_ca: Path | None, node_identity: bool = False
) -> ServerTls | None:
    """The TLS the flags ask for; ValueError when they do not go together."""
    if node_identity and client_ca is None:
        raise ValueError("--tls-node-identity needs --tls-client-ca (mTLS)")
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    return ServerTls(cert, key, client_ca, node_identity)
