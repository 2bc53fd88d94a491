"""What every group of client calls shares, and the two ways to make a unary call.

The client's calls are split by concept: tasks in :mod:`dtq_client.client`
(and :mod:`dtq_client.aio`), the cluster (nodes, queues, rate limits) in
:mod:`dtq_client.cluster` and periodic schedules in :mod:`dtq_client.schedules`.
Each group is a mixin of :class:`Calls`, which makes a call and blocks for its
answer, or of :class:`AsyncCalls`, which awaits it on ``grpc.aio``; both hold
the configuration and the stubs (:class:`CallState`) and run a
:class:`~dtq_client.plans.Plan` the same way. :class:`~dtq_client.Client` and
:class:`~dtq_client.AsyncClient` combine the groups and set them up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

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
from dtq_client.models import Page
from dtq_client.plans import Plan

_R = TypeVar("_R")
_STUB_ATTRIBUTES = {
    "tasks": "_tasks",
    "admin": "_admin",
    "schedules": "_schedules",
    "health": "_health",
}
"""The attribute holding each service's stub (looked up per call, not rebuilt as a dict)."""
UNARY_CALLS_IN_FLIGHT = 128
"""Unary calls an AsyncClient keeps open at once; more wait their turn in the client.

The coordinator allows 256 streams per connection, and grpc.aio does not hold back
the streams beyond it: gathering 2,000 ``submit`` calls on one client had a few
hundred refused (UNAVAILABLE, RST_STREAM REFUSED_STREAM), more than the retry policy
could absorb as they all retried together. Half of the limit leaves room for the
client's own streams (watches, submitters)."""
_T = TypeVar("_T")


class CallState:
    """The configuration and stubs every call group uses, blocking or asyncio."""

    config: ClientConfig
    _tasks: task_service_pb2_grpc.TaskServiceStub
    _admin: admin_service_pb2_grpc.AdminServiceStub
    _schedules: schedule_service_pb2_grpc.ScheduleServiceStub
    _health: health_pb2_grpc.HealthStub

    def _open_stubs(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        """Create the stubs of every service on ``channel`` (the generated stubs take either)."""
        # The generated stubs are untyped; each call annotates its response.
        self._tasks = task_service_pb2_grpc.TaskServiceStub(channel)  # type: ignore[no-untyped-call]
        self._admin = admin_service_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        self._schedules = schedule_service_pb2_grpc.ScheduleServiceStub(channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(channel)

    def _stamp(self, specs: Iterable[task_pb2.TaskSpec]) -> None:
        """With ``propagate_trace``, carry the caller's trace context in the specs' headers."""
        if self.config.propagate_trace:
            tracing.stamp(specs)

    def _method(self, plan: Plan[Any]) -> Callable[..., Any]:
        """The stub method that makes ``plan``'s call."""
        stub = getattr(self, _STUB_ATTRIBUTES[plan.service])
        method: Callable[..., Any] = getattr(stub, plan.rpc)
        return method


class Calls(CallState):
    """Blocking calls: :class:`~dtq_client.Client`'s groups."""

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

    def _run(self, plan: Plan[_T]) -> _T:
        """Make the call ``plan`` describes, block for its answer and return it read."""
        return plan.answer(self._unary(self._method(plan), plan.request, plan.codes))

    def _run_pages(self, page: Callable[[str], Plan[Page[_T]]]) -> list[_T]:
        """Every item of a paged listing: ``page(token)`` plans the call for one page."""
        items: list[_T] = []
        token = ""
        while True:
            answer = self._run(page(token))
            items += answer.items
            token = answer.next_page_token
            if not token:
                return items


class AsyncCalls(CallState):
    """Asyncio calls: :class:`~dtq_client.AsyncClient`'s groups."""

    _metadata: tuple[tuple[str, str], ...] | None
    """What every call carries besides its request: the token, if any. (The blocking
    client's channel adds it with an interceptor instead.)"""
    _unary_slots: asyncio.Semaphore
    """At most :data:`UNARY_CALLS_IN_FLIGHT` unary calls open on the channel at once."""

    async def _unary(
        self,
        method: Callable[..., Awaitable[_R]],
        request: object,
        codes: frozenset[grpc.StatusCode],
    ) -> _R:
        """Call ``method`` with a deadline and the token, translating errors and retrying
        ``codes``."""

        async def attempt() -> _R:
            async with self._unary_slots:  # the deadline runs from the call's start
                with translate_rpc_errors():
                    return await method(
                        request, timeout=self.config.timeout_s, metadata=self._metadata
                    )

        result: _R = await retry.async_retrying(self.config.retry, codes)(attempt)
        return result

    async def _run(self, plan: Plan[_T]) -> _T:
        """Make the call ``plan`` describes, await its answer and return it read."""
        return plan.answer(await self._unary(self._method(plan), plan.request, plan.codes))

    async def _run_pages(self, page: Callable[[str], Plan[Page[_T]]]) -> list[_T]:
        """Every item of a paged listing: ``page(token)`` plans the call for one page."""
        items: list[_T] = []
        token = ""
        while True:
            answer = await self._run(page(token))
            items += answer.items
            token = answer.next_page_token
            if not token:
                return items
