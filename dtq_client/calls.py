"""What every group of :class:`~dtq_client.Client` calls shares.

The client's calls are split by concept: tasks in :mod:`dtq_client.client`,
the cluster (nodes, queues, rate limits) in :mod:`dtq_client.cluster` and
periodic schedules in :mod:`dtq_client.schedules`. Each group is a mixin of
:class:`Calls`, which holds the configuration, the stubs and the one way to
make a unary call; :class:`~dtq_client.Client` combines them and sets them up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from dtq.v1 import (
    admin_service_pb2_grpc,
    schedule_service_pb2_grpc,
    task_pb2,
    task_service_pb2_grpc,
)
from dtq_client import retry, tracing
from dtq_client.config import ClientConfig
from dtq_client.errors import translate_rpc_errors

_R = TypeVar("_R")


class Calls:
    """The state every call group uses; :class:`~dtq_client.Client` initialises it."""

    config: ClientConfig
    _tasks: task_service_pb2_grpc.TaskServiceStub
    _admin: admin_service_pb2_grpc.AdminServiceStub
    _schedules: schedule_service_pb2_grpc.ScheduleServiceStub
    _health: health_pb2_grpc.HealthStub

    def _open_stubs(self, channel: grpc.Channel) -> None:
        """Create the stubs of every service on ``channel``."""
        # The generated stubs are untyped; each call annotates its response.
        self._tasks = task_service_pb2_grpc.TaskServiceStub(channel)  # type: ignore[no-untyped-call]
        self._admin = admin_service_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        self._schedules = schedule_service_pb2_grpc.ScheduleServiceStub(channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(channel)

    def _stamp(self, specs: Iterable[task_pb2.TaskSpec]) -> None:
        """With ``propagate_trace``, carry the caller's trace context in the specs' headers."""
        if self.config.propagate_trace:
            tracing.stamp(specs)

    def _unary(
        self,
        method: Callable[..., _R],
        request: object,
        codes: frozenset[grpc.StatusCode],
    ) -> _R:
        """Call ``method`` with a deadline, translating errors and retrying ``codes``."""

        def attempt() -> _R:
            with translate_rpc_errors():
                return method(request, timeout=self.config.timeout_s)

        return retry.retrying(self.config.retry, codes)(attempt)
