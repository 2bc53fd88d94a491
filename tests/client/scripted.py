"""A scripted coordinator for exercising the client's RPC code over real gRPC.

Each test sets ``handlers[method]`` to decide what the "coordinator" answers;
the real coordinator's behaviour is tested end to end elsewhere. Errors carry
a real ``google.rpc.Status`` in the trailer, as the coordinator's do.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from dtq.v1 import admin_service_pb2_grpc, task_pb2, task_service_pb2_grpc

Handler = Callable[[Any, grpc.ServicerContext], Any]


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    domain: str = "dtq.dev",
    violations: tuple[tuple[str, str], ...] = (),
) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo and BadRequest details like the coordinator's."""
    details: list[any_pb2.Any] = []
    if reason is not None:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata={"task_id": "t1"})
        )
        details.append(packed)
    if violations:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def abort(context: grpc.ServicerContext, status: status_pb2.Status) -> None:
    """End the call with ``status`` in the ``grpc-status-details-bin`` trailer."""
    context.abort_with_status(rpc_status.to_status(status))


def block_until_cancelled(context: grpc.ServicerContext, timeout_s: float = 10.0) -> None:
    """Hold a call open until the client cancels it or its deadline passes."""
    done = threading.Event()
    if context.add_callback(done.set):
        done.wait(timeout_s)


def task_message(
    task_id: str = "t1", state: task_pb2.TaskState = task_pb2.TASK_STATE_QUEUED, **fields: Any
) -> task_pb2.Task:
    """A dtq.v1.Task with sensible defaults."""
    fields.setdefault("type", "echo")
    fields.setdefault("queue", "default")
    fields.setdefault("max_attempts", 3)
    fields.setdefault("payload", task_pb2.Payload(data=b"{}", content_type="application/json"))
    return task_pb2.Task(id=task_id, state=state, **fields)


class ScriptedCoordinator(
    task_service_pb2_grpc.TaskServiceServicer, admin_service_pb2_grpc.AdminServiceServicer
):
    """Answers each RPC with ``handlers[name]`` and records every request."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.requests: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()

    def calls(self, name: str) -> list[Any]:
        """The requests received by ``name`` so far."""
        with self._lock:
            return list(self.requests[name])

    def _handle(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests[name].append(request)
        handler = self.handlers.get(name)
        if handler is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not scripted")
        return handler(request, context)

    def SubmitTask(self, request, context):
        return self._handle("SubmitTask", request, context)

    def SubmitTasks(self, request, context):
        return self._handle("SubmitTasks", request, context)

    def GetTask(self, request, context):
        return self._handle("GetTask", request, context)

    def WatchTask(self, request, context) -> Iterator[Any]:
        yield from self._handle("WatchTask", request, context)

    def CancelTask(self, request, context):
        return self._handle("CancelTask", request, context)

    def ListTasks(self, request, context):
        return self._handle("ListTasks", request, context)

    def ListNodes(self, request, context):
        return self._handle("ListNodes", request, context)

    def DrainNode(self, request, context):
        return self._handle("DrainNode", request, context)

    def ListQueues(self, request, context):
        return self._handle("ListQueues", request, context)


def start_server(coordinator: ScriptedCoordinator) -> tuple[grpc.Server, str]:
    """Serve ``coordinator`` (and a SERVING health service) on a free local port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(coordinator, server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(coordinator, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"
