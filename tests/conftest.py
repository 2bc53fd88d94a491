"""Shared fixtures: an in-process coordinator and raw gRPC stubs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dtq import logs
from dtq.v1 import admin_service_pb2_grpc, task_service_pb2_grpc
from tests.harness import InProcessCoordinator, server_config


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
