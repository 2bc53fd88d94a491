"""DTQ worker nodes: run Python task handlers for a DTQ coordinator.

::

    from dtq_worker import Registry, TaskContext, NonRetryableError

    registry = Registry()

    @registry.task("email.send")
    def send(payload: dict, ctx: TaskContext) -> dict:
        ctx.report_progress(50, "rendering")
        return {"sent": True}

Run it with ``dtq-worker myapp.tasks`` (or :func:`run_node` from Python).
"""

from dtq_worker.config import WorkerConfig
from dtq_worker.context import TaskContext
from dtq_worker.errors import (
    CodecError,
    ConfigError,
    DuplicateTaskType,
    HandlerNotFound,
    InvalidTaskType,
    LifespanFailed,
    NonRetryableError,
    RegistrationRejected,
    RegistryLoadError,
    RestartIntensityExceeded,
    RetryAfter,
    SessionExpired,
    StreamBroken,
    StreamError,
    TaskCancelled,
    WorkerError,
)
from dtq_worker.node import Node, run_node
from dtq_worker.registry import Registry, load_registry

__all__ = [
    "CodecError",
    "ConfigError",
    "DuplicateTaskType",
    "HandlerNotFound",
    "InvalidTaskType",
    "LifespanFailed",
    "Node",
    "NonRetryableError",
    "RegistrationRejected",
    "Registry",
    "RegistryLoadError",
    "RestartIntensityExceeded",
    "RetryAfter",
    "SessionExpired",
    "StreamBroken",
    "StreamError",
    "TaskCancelled",
    "TaskContext",
    "WorkerConfig",
    "WorkerError",
    "load_registry",
    "run_node",
]
