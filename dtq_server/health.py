"""grpc.health.v1 for the coordinator: grpcio-health-checking's servicer, plus List.

The standard ``health.proto`` has ``List`` (every service and its status), but
the packaged servicer answers it UNIMPLEMENTED; a generated client in any
language that lists before it checks would be told the method does not exist.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer


class Health(HealthServicer):  # type: ignore[misc]  # the package ships no types for it
    """Check and Watch as packaged; List from the same statuses."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """Every service with a status ("" is the server as a whole)."""
        response = health_pb2.HealthListResponse()
        for service, status in self._server_status.items():
            response.statuses[service].status = status
        return response
