"""The standard services next to DTQ's: grpc.health.v1 and server reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.harness import InProcessCoordinator


def test_health_serves_overall_and_per_service(
    coordinator: InProcessCoordinator, channel: grpc.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dtq.v1.TaskService", "dtq.v1.WorkerService", "dtq.v1.AdminService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_health_lists_every_service_with_its_status(channel: grpc.Channel) -> None:
    # In the standard proto, not in grpcio-health-checking's servicer (dtq_server.health).
    health = health_pb2_grpc.HealthStub(channel)
    listed = health.List(health_pb2.HealthListRequest(), timeout=5).statuses
    assert {"", "dtq.v1.TaskService", "dtq.v1.WorkerService", "dtq.v1.AdminService"} <= set(listed)
    assert {s.status for s in listed.values()} == {health_pb2.HealthCheckResponse.SERVING}


def test_reflection_lists_the_dtq_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"dtq.v1.TaskService", "dtq.v1.WorkerService", "dtq.v1.AdminService"} <= names
    assert "grpc.health.v1.Health" in names
    # Any language can fetch the contract itself from the running server.
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="dtq.v1.TaskService")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert response.file_descriptor_response.file_descriptor_proto


def test_health_watch_streams_the_status(channel: grpc.Channel) -> None:
    # grpcio-health-checking's Watch writes with context.write(), not by yielding:
    # the guard in front of every method must let it through (RELIABILITY R11).
    health = health_pb2_grpc.HealthStub(channel)
    for service, status in (
        ("", health_pb2.HealthCheckResponse.SERVING),
        ("no.such.Service", health_pb2.HealthCheckResponse.SERVICE_UNKNOWN),
    ):
        call = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=5)
        try:
            assert next(call).status == status, service
        finally:
            call.cancel()
