"""Shared fixtures: an in-process coordinator, raw gRPC stubs and a real PostgreSQL."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dtq import logs
from dtq.v1 import admin_service_pb2_grpc, task_service_pb2_grpc
from tests import harness
from tests.harness import InProcessCoordinator, Proc, server_config
from tests.postgres import PostgresBinariesNotFound, PostgresServer


@pytest.fixture(autouse=True, scope="session")
def _plain_logs() -> None:
    """In-process coordinators log like the real command does (plain, one line per event)."""
    logs.configure("debug", "console")


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[InProcessCoordinator]:
    """A real coordinator with a real SQLite file, served on 127.0.0.1:0."""
    running = InProcessCoordinator(server_config(tmp_path / "data")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def channel(coordinator: InProcessCoordinator) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(coordinator.address) as ch:
        yield ch


@pytest.fixture
def tasks(channel: grpc.Channel) -> task_service_pb2_grpc.TaskServiceStub:
    return task_service_pb2_grpc.TaskServiceStub(channel)


@pytest.fixture
def admin(channel: grpc.Channel) -> admin_service_pb2_grpc.AdminServiceStub:
    return admin_service_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture
def processes() -> Iterator[list[Proc]]:
    """Child processes a test starts; all are killed at the end (stopped ones too)."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def make_coordinator(tmp_path: Path) -> Iterator[Callable[..., InProcessCoordinator]]:
    """Start coordinators with config overrides; all are stopped at the end."""
    started: list[InProcessCoordinator] = []

    def make(**overrides: Any) -> InProcessCoordinator:
        running = InProcessCoordinator(server_config(tmp_path / "data", **overrides)).start()
        started.append(running)
        return running

    yield make
    for running in started:
        if not running.stopped:
            running.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs a real PostgreSQL server started by the fixtures"
    )
    config.addinivalue_line(
        "markers", "sqlite_only: about the SQLite file itself (left out of the PostgreSQL pass)"
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session, started by the first test that asks.

    Missing binaries fail the test rather than skip it: a skipped store test is one
    that silently never runs in CI (``make test`` installs them).
    """
    try:
        server = PostgresServer()
    except PostgresBinariesNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test on the session's server; dropped afterwards."""
    # Named after the test so a server log line points at its test; the suffix keeps
    # parametrised and repeated runs apart within PostgreSQL's 63-byte identifier limit.
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)


STORE_ENV = "DTQ_TEST_STORE"
"""``postgres``: every coordinator a test starts keeps its queue in PostgreSQL (a fresh
database per test) instead of SQLite. ``make test`` runs the store-level suites
that way too, so both stores answer to the same tests."""


@pytest.fixture(autouse=True)
def _store_under_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ.get(STORE_ENV, "sqlite") != "postgres":
        return
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setattr(harness, "DATABASE_URL", url)
