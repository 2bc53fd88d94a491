"""The DTQ client: submit tasks to a DTQ coordinator, wait for them, and inspect the cluster.

::

    from dtq_client import Client, TaskSpec

    with Client("127.0.0.1:50051") as client:
        task = client.submit("echo", {"x": 1})
        client.submit("report.build", {}, depends_on=[task.id])  # runs once the echo succeeded
        print(client.wait(task.id).result_value())
        client.create_schedule("nightly", TaskSpec("report.build"), cron="0 3 * * *")

:class:`AsyncClient` is the same client for asyncio code (``await client.submit(...)``).
Everything here is plain Python: models are frozen dataclasses, errors derive
from :class:`DtqError`, and no protobuf or ``grpc.RpcError`` reaches the caller.
The ``dtq-client`` command (:mod:`dtq_client.cli`) is built on the same client.
"""

from __future__ import annotations

from dtq import __version__
from dtq.tls import ClientTls
from dtq_client.aio import AsyncClient
from dtq_client.aio_submitter import AsyncSubmitter
from dtq_client.client import Client
from dtq_client.config import DEFAULT_ADDRESS, ClientConfig, RetryPolicy
from dtq_client.connection import create_channel
from dtq_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DtqError,
    FailedPrecondition,
    GroupNotFound,
    InvalidArgument,
    NodeNotFound,
    NotFound,
    PayloadError,
    PermissionDenied,
    ProtocolError,
    QueueFull,
    ResourceExhausted,
    RpcError,
    ScheduleExists,
    ScheduleNotFound,
    SubmitManyError,
    TaskNotFound,
    TaskTerminal,
    Unauthenticated,
    Unavailable,
    UnknownTaskType,
    WaitTimeout,
)
from dtq_client.models import (
    CancelCounts,
    DependencyFailure,
    Group,
    GroupState,
    Lease,
    MissedTicks,
    Node,
    NodeState,
    Page,
    Progress,
    QueueStats,
    RateLimit,
    RetryResult,
    Schedule,
    SubmitAck,
    SubmitResult,
    SubmittedGroup,
    Task,
    TaskError,
    TaskPage,
    TaskSpec,
    TaskState,
)
from dtq_client.submit_options import SubmitOptions
from dtq_client.submitter import Submitter

__all__ = [
    "DEFAULT_ADDRESS",
    "AlreadyExists",
    "AsyncClient",
    "AsyncSubmitter",
    "CancelCounts",
    "Client",
    "ClientConfig",
    "ClientTls",
    "DeadlineExceeded",
    "DependencyFailure",
    "DtqError",
    "FailedPrecondition",
    "Group",
    "GroupNotFound",
    "GroupState",
    "InvalidArgument",
    "Lease",
    "MissedTicks",
    "Node",
    "NodeNotFound",
    "NodeState",
    "NotFound",
    "Page",
    "PayloadError",
    "PermissionDenied",
    "Progress",
    "ProtocolError",
    "QueueFull",
    "QueueStats",
    "RateLimit",
    "ResourceExhausted",
    "RetryPolicy",
    "RetryResult",
    "RpcError",
    "Schedule",
    "ScheduleExists",
    "ScheduleNotFound",
    "SubmitAck",
    "SubmitManyError",
    "SubmitOptions",
    "SubmitResult",
    "SubmittedGroup",
    "Submitter",
    "Task",
    "TaskError",
    "TaskNotFound",
    "TaskPage",
    "TaskSpec",
    "TaskState",
    "TaskTerminal",
    "Unauthenticated",
    "Unavailable",
    "UnknownTaskType",
    "WaitTimeout",
    "__version__",
    "create_channel",
]
