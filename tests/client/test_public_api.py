from __future__ import annotations

import dtq_client

EXPECTED = {
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
}


def test_all_is_curated() -> None:
    # Adding to the public API is a decision: update EXPECTED on purpose.
    assert set(dtq_client.__all__) == EXPECTED
    assert len(dtq_client.__all__) == len(EXPECTED)


def test_every_public_name_exists_and_is_documented() -> None:
    for name in dtq_client.__all__:
        value = getattr(dtq_client, name)
        if callable(value):
            assert value.__doc__, name


def test_client_methods_are_documented() -> None:
    public = [name for name in vars(dtq_client.Client) if not name.startswith("_")]
    assert {"submit", "submit_many", "get", "wait", "watch", "cancel", "list_tasks"} <= set(public)
    assert {"iter_tasks", "nodes", "drain", "queues", "health", "close"} <= set(public)
    assert {"cancel_tasks", "retry", "purge"} <= set(public)
    assert {"pause_queue", "resume_queue", "set_queue_limit"} <= set(public)
    for name in public:
        assert getattr(dtq_client.Client, name).__doc__, name
