"""TaskService: what applications call."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

from dtq.v1 import task_service_pb2 as pb
from dtq.v1 import task_service_pb2_grpc as pb_grpc
from dtq_server import offload, scopes
from dtq_server.coordinator import Coordinator
from dtq_server.errors import InvalidArgument
from dtq_server.models import TaskFilter, TaskRecord, TaskState
from dtq_server.piles import UnaryPiles
from dtq_server.servicers.convert import (
    fill_submitted,
    fill_task,
    spec_from_proto,
    task_to_proto,
)
from dtq_server.servicers.errors import Context, stream_boundary, unary_boundary
from dtq_server.servicers.submit_stream import answer_submits
from dtq_server.validation import QUEUE_RE, TYPE_RE, Violations, check_name, header_filter


class TaskServicer(pb_grpc.TaskServiceServicer):
    """Converts requests, calls the coordinator, converts responses."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        # Concurrent single submits share one batch insert (see dtq_server.piles).
        self._singles = UnaryPiles(coordinator)

    @unary_boundary
    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: Context
    ) -> pb.SubmitTaskResponse:
        if not request.HasField("task"):
            raise InvalidArgument([("task", "is required")])
        spec = spec_from_proto(request.task, scopes.submitter())
        scopes.check_queues((spec.queue,))
        record, created = await self._singles.submit(spec)
        response = pb.SubmitTaskResponse(created=created)
        fill_task(response.task, record)  # in place: no Task built and copied in
        return response

    @unary_boundary
    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: Context
    ) -> pb.SubmitTasksResponse:
        acks = _acks_wanted(request.answer)
        group_id = uuid.uuid4().hex if request.group else None
        count = len(request.tasks)
        scopes.check_queues(spec.queue for spec in request.tasks)
        by = scopes.submitter()
        specs = await offload.run(lambda: [spec_from_proto(s, by) for s in request.tasks], count)
        results = await self._coordinator.submit(specs, batch=True, group_id=group_id)
        if group_id is not None and results and not any(created for _, created in results):
            # A retried group submit (every key matched): the group is the stored one.
            group_id = results[0][0].group_id or group_id
        response = pb.SubmitTasksResponse(group_id=group_id or "")
        fill = _fill_acks if acks else _fill_results
        await offload.run(lambda: fill(response, results), count)
        return response

    @stream_boundary
    async def SubmitTaskStream(
        self, request_iterator: AsyncIterator[pb.SubmitTaskStreamRequest], context: Context
    ) -> AsyncIterator[pb.SubmitTaskStreamResponse]:
        async for response in answer_submits(self._coordinator, request_iterator):
            yield response

    @unary_boundary
    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        record = scopes.visible(await self._coordinator.get(request.task_id))
        response = pb.GetTaskResponse()
        fill_task(response.task, record)
        return response

    @stream_boundary
    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Context
    ) -> AsyncIterator[pb.WatchTaskResponse]:
        async for record in self._coordinator.watch(request.task_id):
            yield pb.WatchTaskResponse(task=task_to_proto(scopes.visible(record)))

    @stream_boundary
    async def SubmitAndWatchTask(
        self, request: pb.SubmitAndWatchTaskRequest, context: Context
    ) -> AsyncIterator[pb.SubmitAndWatchTaskResponse]:
        if not request.HasField("task"):
            raise InvalidArgument([("task", "is required")])
        spec = spec_from_proto(request.task, scopes.submitter())
        scopes.check_queues((spec.queue,))
        record, created = await self._singles.submit(spec)
        yield pb.SubmitAndWatchTaskResponse(task=task_to_proto(record), created=created)
        if record.state.is_terminal:  # a known key's task, already finished
            return
        # The watch starts with the task as it is now: no change can fall in between.
        # A new task starts from the submit's answer (no store read) if memory shows
        # no change since; a known key's task may have moved on, so it is read.
        known = record if created else None
        async for change in self._coordinator.watch(record.id, known):
            if change != record:
                yield pb.SubmitAndWatchTaskResponse(task=task_to_proto(change), created=created)

    @unary_boundary
    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Context
    ) -> pb.CancelTaskResponse:
        if scopes.restricted():  # look before cancelling what the caller may not see
            scopes.visible(await self._coordinator.get(request.task_id))
        record = await self._coordinator.cancel(request.task_id)
        response = pb.CancelTaskResponse()
        fill_task(response.task, record)
        return response

    @unary_boundary
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        task_filter = _filter(request.queue, request.type, request.state)
        if request.headers:
            task_filter = dataclasses.replace(task_filter, headers=header_filter(request.headers))
        records, token = await self._coordinator.list_tasks(
            task_filter, request.page_size, request.page_token
        )
        return pb.ListTasksResponse(
            tasks=[task_to_proto(r) for r in records], next_page_token=token
        )

    @unary_boundary
    async def CancelTasks(
        self, request: pb.CancelTasksRequest, context: Context
    ) -> pb.CancelTasksResponse:
        task_filter = _filter(request.queue, request.type, request.state)
        cancelled, requested = await self._coordinator.bulk.cancel_many(task_filter)
        return pb.CancelTasksResponse(cancelled=cancelled, cancel_requested=requested)

    @unary_boundary
    async def RetryTasks(
        self, request: pb.RetryTasksRequest, context: Context
    ) -> pb.RetryTasksResponse:
        task_filter = _filter(request.queue, request.type, request.state)
        outcome = await self._coordinator.bulk.retry(list(request.task_ids), task_filter)
        return pb.RetryTasksResponse(
            retried=outcome.retried,
            skipped_task_ids=outcome.skipped,
            truncated=outcome.truncated,
        )

    @unary_boundary
    async def PurgeTasks(
        self, request: pb.PurgeTasksRequest, context: Context
    ) -> pb.PurgeTasksResponse:
        task_filter = _filter(request.queue, request.type, request.state)
        return pb.PurgeTasksResponse(deleted=await self._coordinator.bulk.purge(task_filter))

    @unary_boundary
    async def GetGroup(self, request: pb.GetGroupRequest, context: Context) -> pb.GetGroupResponse:
        status = scopes.visible_group(await self._coordinator.group(request.group_id))
        counts = status.counts
        pending = counts.get(TaskState.QUEUED, 0) + counts.get(TaskState.WAITING, 0)
        running = counts.get(TaskState.LEASED, 0) + counts.get(TaskState.RUNNING, 0)
        succeeded = counts.get(TaskState.SUCCEEDED, 0)
        failed = counts.get(TaskState.FAILED, 0)
        cancelled = counts.get(TaskState.CANCELLED, 0)
        if pending or running:
            state = pb.GROUP_STATE_RUNNING
        elif failed:
            state = pb.GROUP_STATE_FAILED
        elif cancelled:
            state = pb.GROUP_STATE_CANCELLED
        else:
            state = pb.GROUP_STATE_SUCCEEDED
        return pb.GetGroupResponse(
            group_id=status.group_id, state=state, total=len(status.task_ids), pending=pending,
            running=running, succeeded=succeeded, failed=failed, cancelled=cancelled,
            task_ids=status.task_ids,
        )  # fmt: skip


def _fill_acks(response: pb.SubmitTasksResponse, results: list[tuple[TaskRecord, bool]]) -> None:
    add = response.acks.add
    for record, created in results:
        fill_submitted(add(), record, created)


def _fill_results(response: pb.SubmitTasksResponse, results: list[tuple[TaskRecord, bool]]) -> None:
    add = response.results.add
    for record, created in results:
        fill_task(add(created=created).task, record)


def _acks_wanted(answer: int) -> bool:
    """True for ``SUBMIT_ANSWER_ACK``; False for the whole task (the default)."""
    if answer not in pb.SubmitAnswer.values():
        raise InvalidArgument([("answer", f"unknown value {answer}")])
    return answer == pb.SUBMIT_ANSWER_ACK


def _filter(queue: str, type_: str, state: int) -> TaskFilter:
    """A TaskFilter from request fields (empty/0 = any).

    A queue or type no task can have is refused, not looked for: a typo is told at
    once, and PostgreSQL refuses (as unavailable) a parameter holding a NUL.
    """
    v = Violations()
    if queue:
        check_name(v, "queue", queue, QUEUE_RE, "queue")
    if type_:
        check_name(v, "type", type_, TYPE_RE, "type")
    v.raise_if_any()
    task_state = None
    if state:
        try:
            task_state = TaskState(state)
        except ValueError:
            raise InvalidArgument([("state", f"unknown state {state}")]) from None
    return TaskFilter(queue=queue or None, state=task_state, type=type_ or None)
