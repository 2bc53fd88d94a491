"""Call plans: a unary call described once, made by either client.

Most of the client's calls are one unary RPC: build a request from the
arguments (checking them first), call one method of one service with the
status codes worth retrying, and turn the response into a plain model. A
:class:`Plan` holds exactly that, and the functions that make plans
(:mod:`dtq_client.task_requests`, :mod:`dtq_client.cluster_requests`,
:mod:`dtq_client.schedule_requests`) are the one place each request is built
and each answer read. Two thin runners make the call:
:meth:`Calls._run <dtq_client.calls.Calls._run>` blocks, and
:meth:`AsyncCalls._run <dtq_client.calls.AsyncCalls._run>` awaits on ``grpc.aio``;
so :class:`~dtq_client.Client` and :class:`~dtq_client.AsyncClient` differ only
in how they wait for an answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import grpc
from google.protobuf.message import Message

T = TypeVar("T")

Service = Literal["tasks", "admin", "schedules", "health"]
"""The service a call belongs to: ``dtq.v1`` TaskService, AdminService or
ScheduleService, or the standard ``grpc.health.v1.Health``."""


@dataclass(frozen=True)
class Plan(Generic[T]):
    """One unary call, ready to make: what to call, with what, and how to read the answer."""

    service: Service
    """Whose stub makes the call."""
    rpc: str
    """The method of that service, such as ``"ListNodes"``."""
    request: Message
    """The request, built and checked from the caller's arguments."""
    codes: frozenset[grpc.StatusCode]
    """The status codes on which a failed attempt is retried (see :mod:`dtq_client.retry`)."""
    answer: Callable[[Any], T]
    """Turns the response message into what the client method returns."""


def no_answer(response: object) -> None:
    """The answer of a call whose response says nothing more than that it succeeded."""
