from __future__ import annotations

import inspect

import dtq_client

EXPECTED = {
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
    "Page",
    "NotFound",
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
    # The methods come from Client and its call groups (ClusterCalls, ScheduleCalls).
    public = [name for name in dir(dtq_client.Client) if not name.startswith("_")]
    assert {"submit", "submit_many", "get", "wait", "watch", "cancel", "list_tasks"} <= set(public)
    assert {"iter_tasks", "list_tasks_page", "nodes", "drain", "queues", "health", "close"} <= set(
        public
    )
    assert {"cancel_tasks", "retry", "purge", "submit_group", "get_group"} <= set(public)
    assert "submitter" in public
    assert {"pause_queue", "resume_queue", "set_queue_limit", "set_queue_rate_limit"} <= set(public)
    assert {"set_rate_limit", "delete_rate_limit", "rate_limits"} <= set(public)
    schedules = {"create_schedule", "get_schedule", "list_schedules", "delete_schedule"}
    assert schedules | {"pause_schedule", "resume_schedule"} <= set(public)
    for name in public:
        assert getattr(dtq_client.Client, name).__doc__, name


def test_async_client_mirrors_client() -> None:
    # The same calls, arguments and defaults as the blocking client, each documented.
    public = {name for name in dir(dtq_client.AsyncClient) if not name.startswith("_")}
    tasks = {"submit", "submit_and_wait", "submit_many", "submit_group", "get_group", "get"}
    assert tasks | {"cancel", "list_tasks", "iter_tasks", "watch", "wait", "health"} <= public
    assert public <= {name for name in dir(dtq_client.Client) if not name.startswith("_")}
    for name in public:
        method = getattr(dtq_client.AsyncClient, name)
        assert method.__doc__, name
        if callable(method) and name != "from_config":
            expected = inspect.signature(getattr(dtq_client.Client, name)).parameters
            assert inspect.signature(method).parameters == expected, name
