"""Assembling and running a coordinator: gRPC server, health, reflection, signals.

``CoordinatorServer`` is kept apart from ``serve`` (grpc's examples do the
same) so tests can start one in-process on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from dtq import loops
from dtq.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from dtq_server.auth import Gate, load_policy
from dtq_server.call_cap import CallCap
from dtq_server.config import MiB, ServerConfig
from dtq_server.coordinator import Coordinator
from dtq_server.health import Health
from dtq_server.metrics import serve_metrics
from dtq_server.servicers.admin_service import AdminServicer
from dtq_server.servicers.malformed import GuardedRegistrar
from dtq_server.servicers.schedule_service import ScheduleServicer
from dtq_server.servicers.task_service import TaskServicer
from dtq_server.servicers.worker_service import WorkerServicer
from dtq_server.store import SqliteStore, Store
from dtq_server.tokens import TokenBook

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    schedule_service_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Transport limits and keepalive policy (RELIABILITY R6-R8).

    The server pings idle nodes every 30 s to find dead connections, and allows
    client pings every 5 s: our nodes and clients ping every 10 s, so they never
    earn a GOAWAY ``too_many_pings``.
    """
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", 2 * config.max_message_bytes),
        ("grpc.max_metadata_size", 16 * 1024),
        ("grpc.max_concurrent_streams", 256),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # gRPC 1.85 waits for a ping's ack for ping_timeout (default 60 s), not for
        # keepalive_timeout: without this a black-holed node's connection lived ~90 s.
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.so_reuseport", 0),
        # A peer that connects and never completes the HTTP/2 handshake (acks our
        # SETTINGS) is dropped after 10 s instead of gRPC's default of 60 s (B3).
        ("grpc.http2.settings_timeout", 10_000),
    ]
    if config.max_connection_age_s is not None:
        # Rotating connections spreads clients over coordinators behind a balancer;
        # nodes reconnect and resume their sessions, so no lease is lost (N8).
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
        ]
    return options


class CoordinatorServer:
    """One running coordinator: store, domain core and gRPC server."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.health = Health()
        self.store: Store
        if config.database_url is not None:
            # Only here: psycopg is the optional extra dtq[postgres].
            from dtq_server.store.postgres import PostgresStore  # noqa: PLC0415

            self.store = PostgresStore(
                config.database_url,
                self._store_health,
                config.result_ttl_s,
                on_leadership_lost=self._leadership_lost,
            )
        else:
            self.store = SqliteStore(
                config.db_path, config.synchronous, self._store_health, config.result_ttl_s
            )
        self.lost_leadership = asyncio.Event()
        """Set when another coordinator took over the shared database (PostgreSQL)."""
        self.coordinator = Coordinator(config, self.store, self._set_health)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._revocations: asyncio.Task[None] | None = None
        """With tokens: the sweep that ends streams of revoked tokens."""
        self._cap_sweep: asyncio.Task[None] | None = None
        """With --max-call-time: the sweep that ends unary calls past it."""
        self._metrics: WSGIServer | None = None
        self.metrics_port = 0
        """The port ``/metrics`` is served on (with ``--metrics-listen``)."""

    @property
    def address(self) -> str:
        """host:port actually bound."""
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Open the store, load unfinished work and start serving."""
        self._loop = asyncio.get_running_loop()
        # Created here, not in __init__: a grpc.aio server binds to the running loop.
        self.server = server = grpc.aio.server(options=server_options(self.config))
        await self.store.open()
        await self.coordinator.start()
        # Every service is registered through the guard (malformed.py), never directly.
        gate = None
        if self.config.tokens_file is not None:
            tokens = TokenBook(self.config.tokens_file)
            gate = Gate(tokens, load_policy(), anyone_admitted=self.config.health_is_open)
            self._revocations = asyncio.get_running_loop().create_task(gate.watch_revocations())
        cap = None
        if self.config.max_call_s is not None:
            cap = CallCap(self.config.max_call_s)
            self._cap_sweep = asyncio.get_running_loop().create_task(cap.sweep_forever())
        guarded = GuardedRegistrar(server, gate, cap)
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TaskServicer(self.coordinator), guarded
        )
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            WorkerServicer(self.coordinator.sessions, self.config), guarded
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
            AdminServicer(self.coordinator), guarded
        )
        schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ScheduleServicer(self.coordinator.scheduler), guarded
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
        # enable_server_reflection picks its servicer by the server's class: register by hand.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            ReflectionServicer(
                (
                    *SERVICE_NAMES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                )
            ),
            guarded,
        )
        guarded.check()
        if self.config.tls is None:
            self.port = server.add_insecure_port(self.config.listen)
        else:
            self.port = server.add_secure_port(self.config.listen, self.config.tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        await self._set_all(SERVING)
        if self.config.metrics_listen is not None:
            self._metrics = serve_metrics(self.config, self.coordinator, self._loop)
            self.metrics_port = self._metrics.server_port
            log.info("metrics.serving", port=self.metrics_port)
        if self.config.port_file is not None:
            _write_atomically(self.config.port_file, self.address)
        log.info(
            "coordinator.serving",
            address=self.address,
            store=_store_description(self.config),
            tls=_tls_mode(self.config),
            tokens=self.config.tokens_file is not None,
            heartbeat_timeout_s=self.config.heartbeat_timeout_s,
            event_loop=loops.running(),
        )

    async def start_or_stop(self, stop: asyncio.Event) -> bool:
        """:meth:`start`, unless ``stop`` is set first (a standby waiting to lead);
        True if it started."""
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if starting.done():
            starting.result()  # raises what start raised
            return True
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return False

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful, idempotent shutdown.

        Health goes NOT_SERVING and submits are refused at once; results of
        running tasks are still applied for ``grace_s`` while nodes finish; then
        streams end (nodes reconnect to the next coordinator and resume their
        leases), the server stops and the store closes.
        """
        if self._stopped:
            return
        self._stopped = True
        for sweep in (self._revocations, self._cap_sweep):
            if sweep is not None:
                sweep.cancel()
        self.coordinator.begin_shutdown()
        await self.health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        log.info("coordinator.stopping", grace_s=grace)
        await self.coordinator.stop(grace)
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.shutdown)  # waits for its serving loop
            self._metrics.server_close()
        if self.server is not None:
            await self.server.stop(1.0)
        await self.store.close()
        log.info("coordinator.stopped")

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in ("", *SERVICE_NAMES):
            await self.health.set(service, status)

    def _set_health(self, serving: bool) -> None:
        if not self._stopped:
            asyncio.get_running_loop().create_task(
                self._set_all(SERVING if serving else NOT_SERVING)
            )

    def _leadership_lost(self) -> None:
        # Called on the store's writer thread: hop onto the event loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.lost_leadership.set)

    def _store_health(self, ok: bool) -> None:
        # Called on the store's writer thread: hop onto the event loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.coordinator.store_result, ok)


def _tls_mode(config: ServerConfig) -> str:
    if config.tls is None:
        return "off"
    return "mtls" if config.tls.client_ca is not None else "tls"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _store_description(config: ServerConfig) -> str:
    """Where the queue is kept, for the log (a database URL without its password)."""
    if config.database_url is None:
        return f"sqlite:{config.db_path} synchronous={config.synchronous}"
    url = urlsplit(config.database_url)
    host = url.hostname or ""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.username or ''}@{host}{port}{url.path}"


async def serve(config: ServerConfig) -> None:
    """Run a coordinator until SIGTERM or SIGINT, then shut down gracefully.

    With a shared database, a coordinator that loses the lead (another one took
    over while it was cut off from the database) stops serving and stands by
    again, with its memory of the queue rebuilt from the database when it next leads.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while True:
        server = CoordinatorServer(config)
        if not await server.start_or_stop(stop):
            log.info("coordinator.signal", serving=False)
            return
        lost = asyncio.ensure_future(server.lost_leadership.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((lost, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            stopping.cancel()
        if stop.is_set():
            log.info("coordinator.signal")
            await server.stop()
            return
        log.warning("coordinator.stepping_down", reason="another coordinator took the lead")
        await server.stop(grace_s=0)


__all__ = ["CoordinatorServer", "MiB", "serve", "server_options"]
