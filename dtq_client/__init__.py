"""The DTQ client: submit tasks to a DTQ coordinator, wait for them, and inspect the cluster.

::

    from dtq_client import Client

    with Client("127.0.0.1:50051") as client:
        task = client.submit("echo", {"x": 1})
        print(client.wait(task.id).result_value())

Everything here is plain Python: models are frozen dataclasses, errors derive
from :class:`DtqError`, and no protobuf or ``grpc.RpcError`` reaches the caller.
The ``dtq-client`` command (:mod:`dtq_client.cli`) is built on the same client.
"""

from __future__ import annotations

from dtq import __version__
from dtq_client.client import Client
from dtq_client.config import DEFAULT_ADDRESS, ClientConfig, RetryPolicy
from dtq_client.connection import create_channel
from dtq_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DtqError,
    FailedPrecondition,
    InvalidArgument,
    NodeNotFound,
    NotFound,
    PayloadError,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    RpcError,
    SubmitManyError,
    TaskNotFound,
    TaskTerminal,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from dtq_client.models import (
    CancelCounts,
    Lease,
    Node,
    NodeState,
    Progress,
    QueueStats,
    SubmitResult,
    Task,
    TaskError,
    TaskSpec,
    TaskState,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "AlreadyExists",
    "CancelCounts",
    "Client",
    "ClientConfig",
    "DeadlineExceeded",
    "DtqError",
    "FailedPrecondition",
    "InvalidArgument",
    "Lease",
    "Node",
    "NodeNotFound",
    "NodeState",
    "NotFound",
    "PayloadError",
    "PermissionDenied",
    "Progress",
    "ProtocolError",
    "QueueStats",
    "ResourceExhausted",
    "RetryPolicy",
    "RpcError",
    "SubmitManyError",
    "SubmitResult",
    "Task",
    "TaskError",
    "TaskNotFound",
    "TaskSpec",
    "TaskState",
    "TaskTerminal",
    "Unauthenticated",
    "Unavailable",
    "WaitTimeout",
    "__version__",
    "create_channel",
]
