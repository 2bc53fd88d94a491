import datetime

from dtq.v1 import task_pb2 as _task_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("register", "heartbeat", "updates", "leave")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    register: RegisterNode
    heartbeat: Heartbeat
    updates: TaskUpdates
    leave: Leave
    def __init__(self, register: _Optional[_Union[RegisterNode, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., updates: _Optional[_Union[TaskUpdates, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class RegisterNode(_message.Message):
    __slots__ = ("node_id", "hostname", "pid", "version", "task_types", "queues", "slots", "resume_session_id", "leases", "prefetch")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    pid: int
    version: str
    task_types: _containers.RepeatedScalarFieldContainer[str]
    queues: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    resume_session_id: str
    leases: _containers.RepeatedCompositeFieldContainer[_task_pb2.Lease]
    prefetch: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., task_types: _Optional[_Iterable[str]] = ..., queues: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., resume_session_id: _Optional[str] = ..., leases: _Optional[_Iterable[_Union[_task_pb2.Lease, _Mapping]]] = ..., prefetch: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sequence", "leases", "supervisor_restarts", "node_time", "prefetch")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    NODE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    leases: _containers.RepeatedCompositeFieldContainer[_task_pb2.Lease]
    supervisor_restarts: int
    node_time: _timestamp_pb2.Timestamp
    prefetch: int
    def __init__(self, sequence: _Optional[int] = ..., leases: _Optional[_Iterable[_Union[_task_pb2.Lease, _Mapping]]] = ..., supervisor_restarts: _Optional[int] = ..., node_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prefetch: _Optional[int] = ...) -> None: ...

class TaskUpdates(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[TaskUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[TaskUpdate, _Mapping]]] = ...) -> None: ...

class TaskUpdate(_message.Message):
    __slots__ = ("lease", "started", "progress", "succeeded", "failed", "released")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    lease: _task_pb2.Lease
    started: TaskStarted
    progress: _task_pb2.TaskProgress
    succeeded: TaskSucceeded
    failed: TaskFailed
    released: TaskReleased
    def __init__(self, lease: _Optional[_Union[_task_pb2.Lease, _Mapping]] = ..., started: _Optional[_Union[TaskStarted, _Mapping]] = ..., progress: _Optional[_Union[_task_pb2.TaskProgress, _Mapping]] = ..., succeeded: _Optional[_Union[TaskSucceeded, _Mapping]] = ..., failed: _Optional[_Union[TaskFailed, _Mapping]] = ..., released: _Optional[_Union[TaskReleased, _Mapping]] = ...) -> None: ...

class TaskStarted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskSucceeded(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _task_pb2.Payload
    def __init__(self, result: _Optional[_Union[_task_pb2.Payload, _Mapping]] = ...) -> None: ...

class TaskFailed(_message.Message):
    __slots__ = ("error", "cancelled", "retry_after")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    error: _task_pb2.TaskError
    cancelled: bool
    retry_after: _duration_pb2.Duration
    def __init__(self, error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ..., cancelled: _Optional[bool] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TaskReleased(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("registered", "assignments", "cancel", "drain", "heartbeat_ack", "update_acks")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ACKS_FIELD_NUMBER: _ClassVar[int]
    registered: NodeRegistered
    assignments: TaskAssignments
    cancel: CancelTasks
    drain: DrainRequested
    heartbeat_ack: HeartbeatAck
    update_acks: TaskUpdateAcks
    def __init__(self, registered: _Optional[_Union[NodeRegistered, _Mapping]] = ..., assignments: _Optional[_Union[TaskAssignments, _Mapping]] = ..., cancel: _Optional[_Union[CancelTasks, _Mapping]] = ..., drain: _Optional[_Union[DrainRequested, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., update_acks: _Optional[_Union[TaskUpdateAcks, _Mapping]] = ...) -> None: ...

class NodeRegistered(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "heartbeat_timeout", "resumed", "stale_leases", "max_result_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    STALE_LEASES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    heartbeat_timeout: _duration_pb2.Duration
    resumed: bool
    stale_leases: _containers.RepeatedCompositeFieldContainer[_task_pb2.Lease]
    max_result_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resumed: _Optional[bool] = ..., stale_leases: _Optional[_Iterable[_Union[_task_pb2.Lease, _Mapping]]] = ..., max_result_bytes: _Optional[int] = ...) -> None: ...

class TaskAssignment(_message.Message):
    __slots__ = ("lease", "type", "queue", "payload", "max_attempts", "create_time", "execution_timeout", "priority", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEASE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    lease: _task_pb2.Lease
    type: str
    queue: str
    payload: _task_pb2.Payload
    max_attempts: int
    create_time: _timestamp_pb2.Timestamp
    execution_timeout: _duration_pb2.Duration
    priority: int
    headers: _containers.ScalarMap[str, str]
    def __init__(self, lease: _Optional[_Union[_task_pb2.Lease, _Mapping]] = ..., type: _Optional[str] = ..., queue: _Optional[str] = ..., payload: _Optional[_Union[_task_pb2.Payload, _Mapping]] = ..., max_attempts: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., priority: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskAssignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[TaskAssignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[TaskAssignment, _Mapping]]] = ...) -> None: ...

class CancelTasks(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[_task_pb2.Lease]
    def __init__(self, leases: _Optional[_Iterable[_Union[_task_pb2.Lease, _Mapping]]] = ...) -> None: ...

class DrainRequested(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("sequence", "stale_leases")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STALE_LEASES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    stale_leases: _containers.RepeatedCompositeFieldContainer[_task_pb2.Lease]
    def __init__(self, sequence: _Optional[int] = ..., stale_leases: _Optional[_Iterable[_Union[_task_pb2.Lease, _Mapping]]] = ...) -> None: ...

class TaskUpdateAck(_message.Message):
    __slots__ = ("lease", "accepted", "reason", "message")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    lease: _task_pb2.Lease
    accepted: bool
    reason: str
    message: str
    def __init__(self, lease: _Optional[_Union[_task_pb2.Lease, _Mapping]] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TaskUpdateAcks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[TaskUpdateAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[TaskUpdateAck, _Mapping]]] = ...) -> None: ...
