"""The asyncio DTQ client: :class:`AsyncClient`, :class:`~dtq_client.Client` for ``async`` code.

::

    from dtq_client import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as client:
        task = await client.submit("email.send", {"to": "ada@example.com"})
        done = await client.wait(task.id, timeout_s=60)
        print(done.state, done.result_value())

It runs on ``grpc.aio``: a call awaits its answer on the event loop, without
blocking it or borrowing a thread. Everything else is the blocking client's:
the same :class:`~dtq_client.ClientConfig`, deadlines and retries
(:func:`dtq_client.retry.async_retrying`, the same policy and codes), generated
idempotency keys, requests built and answers read by
:mod:`dtq_client.task_requests`, plain models and the :class:`~dtq_client.DtqError`
tree. Each call that is one unary RPC runs the same :class:`~dtq_client.plans.Plan`
as the blocking client's (see :mod:`dtq_client.calls`); the cluster and schedule
calls come from :mod:`dtq_client.cluster` and :mod:`dtq_client.schedules`, waiting
(``watch``, ``wait``) from :mod:`dtq_client.aio_watch`, pipelined submits
(:meth:`AsyncClient.submitter`) from :mod:`dtq_client.aio_submitter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal, Self, Unpack, overload

import grpc

from dtq.tls import ClientTls
from dtq.v1 import task_service_pb2
from dtq_client import aio_watch, convert, retry, task_requests
from dtq_client.aio_submitter import AsyncSubmitter
from dtq_client.aio_watch import WatchCalls
from dtq_client.calls import UNARY_CALLS_IN_FLIGHT
from dtq_client.cluster import AsyncClusterCalls
from dtq_client.config import DEFAULT_ADDRESS, ClientConfig, RetryPolicy
from dtq_client.connection import bearer_header, open_aio_channel
from dtq_client.errors import DeadlineExceeded, RpcError, Unavailable, WaitTimeout
from dtq_client.models import (
    CancelCounts,
    Group,
    RetryResult,
    SubmitAck,
    SubmitResult,
    SubmittedGroup,
    Task,
    TaskPage,
    TaskSpec,
    TaskState,
)
from dtq_client.schedules import AsyncScheduleCalls
from dtq_client.submit_options import Keys, SubmitOptions, spec_of
from dtq_client.submit_stream import DEFAULT_WINDOW


class AsyncClient(AsyncScheduleCalls, AsyncClusterCalls, WatchCalls):
    """A connection to a DTQ coordinator for asyncio code; ``async with`` it or await
    :meth:`close`.

    The arguments are :class:`~dtq_client.Client`'s, and so are the methods'
    names, arguments, answers and errors: each is a coroutine here (:meth:`watch`
    and :meth:`iter_tasks` are async generators). Create the client inside a
    coroutine, on the event loop that uses it: a ``grpc.aio`` channel belongs to
    the loop it was made on. ``channel`` lets the caller supply (and keep
    ownership of) an open ``grpc.aio`` channel; the token is sent all the same.

    It has every call of :class:`~dtq_client.Client`: submitting (one by one,
    in batches, or pipelined through a :meth:`submitter`), reading, cancelling
    (one task or in bulk), retrying, purging and waiting for tasks (``watch``
    and ``wait`` come from :class:`~dtq_client.aio_watch.WatchCalls`), groups,
    the cluster (nodes, queues, rate limits, health: from
    :class:`~dtq_client.cluster.AsyncClusterCalls`) and schedules (from
    :class:`~dtq_client.schedules.AsyncScheduleCalls`).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        tls: ClientTls | None = None,
        token: str | None = None,
        channel: grpc.aio.Channel | None = None,
        propagate_trace: bool = False,
    ) -> None:
        config = ClientConfig(
            address=address,
            timeout_s=timeout_s,
            retry=retry or RetryPolicy(),
            tls=tls,
            token=token,
            propagate_trace=propagate_trace,
        )
        self._setup(config, channel)

    @classmethod
    def from_config(cls, config: ClientConfig, *, channel: grpc.aio.Channel | None = None) -> Self:
        """A client configured by ``config``."""
        client = cls.__new__(cls)
        client._setup(config, channel)
        return client

    def _setup(self, config: ClientConfig, channel: grpc.aio.Channel | None) -> None:
        self.config = config
        self._new_key = Keys()
        self._owns_channel = channel is None
        if channel is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "create an AsyncClient inside a coroutine, on the event loop that uses it"
                ) from None
            channel = open_aio_channel(config)
        self._channel = channel
        self._open_stubs(channel)
        # The header the blocking client's BearerToken interceptor adds: metadata, not
        # call credentials, which gRPC sends only over TLS (loopback checks tokens too).
        self._metadata = None if config.token is None else (bearer_header(config.token),)
        self._unary_slots = asyncio.Semaphore(UNARY_CALLS_IN_FLIGHT)
        self._closed = False

    async def close(self) -> None:
        """Close the channel (unless the caller supplied it), ending the calls under way.
        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_channel:
            await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        type: str,
        payload: object = None,
        **options: Unpack[SubmitOptions],
    ) -> Task:
        """Submit one task and return it as stored; see :meth:`Client.submit
        <dtq_client.Client.submit>` (the same arguments, idempotency and errors)."""
        spec = spec_of(type, payload, options, self._new_key)
        return await self._run(task_requests.submit_task(spec, self._stamp))

    async def submit_and_wait(self, spec: TaskSpec, timeout_s: float | None = None) -> Task:
        """Submit one task, wait until it is terminal and return it, whatever its outcome.

        One SubmitAndWatchTask call, as :meth:`Client.submit_and_wait
        <dtq_client.Client.submit_and_wait>`: submitting follows :meth:`submit`'s
        rules, waiting :meth:`wait`'s (:class:`WaitTimeout` if ``timeout_s``
        passes first; None waits for ever). A task still running after
        ``config.timeout_s``, or a stream that breaks after the submit, is
        followed with :meth:`wait`.
        """
        if not spec.idempotency_key:
            spec = replace(spec, idempotency_key=self._new_key())
        request = task_service_pb2.SubmitAndWatchTaskRequest(task=convert.spec_to_proto(spec))
        self._stamp((request.task,))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        async def attempt() -> tuple[Task, AsyncGenerator[Task, None]]:
            call_s = self.config.timeout_s
            if deadline is not None:
                call_s = max(0.0, min(call_s, deadline - time.monotonic()))
            call = self._tasks.SubmitAndWatchTask(request, timeout=call_s, metadata=self._metadata)
            return await aio_watch.opened(call)

        retrying = retry.async_retrying(self.config.retry, retry.SUBMIT_CODES, deadline=deadline)
        started: tuple[Task, AsyncGenerator[Task, None]] = await retrying(attempt)
        task, rest = started  # from here on, only waiting is left
        async with contextlib.aclosing(rest):
            with contextlib.suppress(Unavailable, DeadlineExceeded):
                while not task.is_terminal:
                    task = await anext(rest)
        if task.is_terminal:
            return task
        if deadline is not None and deadline - time.monotonic() < task_requests.DEADLINE_SLACK_S:
            raise WaitTimeout(task.id, timeout_s, task)
        return await self.wait(task.id, None if deadline is None else deadline - time.monotonic())

    @overload
    async def submit_many(
        self, specs: Iterable[TaskSpec], *, answer: Literal["task"] = "task"
    ) -> list[SubmitResult]: ...

    @overload
    async def submit_many(
        self, specs: Iterable[TaskSpec], *, answer: Literal["ack"]
    ) -> list[SubmitAck]: ...

    async def submit_many(
        self, specs: Iterable[TaskSpec], *, answer: Literal["task", "ack"] = "task"
    ) -> list[SubmitResult] | list[SubmitAck]:
        """Submit many tasks, returning one answer per spec in order.

        As :meth:`Client.submit_many <dtq_client.Client.submit_many>`: a
        :class:`SubmitResult` per spec, or a :class:`SubmitAck` with
        ``answer="ack"``; batches of at most ``config.submit_batch_size`` tasks
        and about ``config.submit_batch_bytes``, each stored atomically. If the
        first batch fails its error is raised as is (nothing was stored); if a
        later one fails, :class:`SubmitManyError` says what was stored and what
        to resubmit. The batches are sent one after the other.
        """
        acks = task_requests.wants_acks(answer)
        specs = list(specs)
        # Encode every payload before sending anything, so a bad one stores nothing.
        messages = task_requests.keyed_messages(specs, self._new_key)
        self._stamp(messages)
        results: list[Any] = []  # SubmitResult or SubmitAck, as asked
        try:
            for request in task_requests.submit_batches(messages, self.config, acks=acks):
                response: task_service_pb2.SubmitTasksResponse = await self._unary(
                    self._tasks.SubmitTasks, request, retry.SUBMIT_CODES
                )
                results += task_requests.batch_answers(request, response, acks=acks)
        except RpcError as exc:
            if not results:
                raise
            error = task_requests.partial_failure(exc, specs, messages, results, acks=acks)
            raise error from exc
        return results

    def submitter(self, window: int = DEFAULT_WINDOW) -> AsyncSubmitter:
        """An :class:`AsyncSubmitter`: many concurrent submits over one stream.

        ``async with client.submitter() as submitter:`` then, from any number of
        coroutines, ``ack = await submitter.submit(type, payload, **options)``:
        each returns a :class:`SubmitAck` once its task is committed, or raises
        the error :meth:`submit` would. At most ``window`` submits are unanswered;
        a further one waits for room. A stream that breaks is reopened and what
        was unanswered resent, safely (idempotency keys). Leaving the block
        waits for every answer. See :mod:`dtq_client.aio_submitter`, also for
        what cancelling a caller does.
        """
        return AsyncSubmitter(self._tasks, self.config, self._metadata, window)

    async def submit_group(self, specs: Iterable[TaskSpec]) -> SubmittedGroup:
        """Submit tasks as one group, whose aggregate status :meth:`get_group` reports.

        ONE request, as :meth:`Client.submit_group <dtq_client.Client.submit_group>`:
        all are stored, in one group, or none is.
        """
        return await self._run(task_requests.submit_group(specs, self._stamp, self._new_key))

    async def get_group(self, group_id: str) -> Group:
        """The aggregate status of a group; :class:`GroupNotFound` if no task is in it."""
        return await self._run(task_requests.get_group(group_id))

    # --- reading and cancelling ----------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        """The task with ``task_id``; :class:`TaskNotFound` if there is none."""
        return await self._run(task_requests.get_task(task_id))

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task and return it.

        A queued task is cancelled at once; a dispatched one gets
        ``cancel_requested`` and ends CANCELLED once its node stops it.
        :class:`TaskTerminal` if it already succeeded or failed.
        """
        return await self._run(task_requests.cancel_task(task_id))

    async def cancel_tasks(
        self,
        queue: str | None = None,
        type: str | None = None,
        state: TaskState | str | None = None,
    ) -> CancelCounts:
        """See :meth:`Client.cancel_tasks <dtq_client.Client.cancel_tasks>`."""
        return await self._run(task_requests.cancel_tasks(queue, type, state))

    async def retry(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        queue: str | None = None,
        type: str | None = None,
        state: TaskState | str | None = None,
    ) -> RetryResult:
        """See :meth:`Client.retry <dtq_client.Client.retry>`."""
        return await self._run(task_requests.retry_tasks(task_ids, queue, type, state))

    async def purge(
        self,
        state: TaskState | str,
        *,
        queue: str | None = None,
        type: str | None = None,
    ) -> int:
        """See :meth:`Client.purge <dtq_client.Client.purge>`."""
        return await self._run(task_requests.purge_tasks(state, queue, type))

    async def list_tasks(
        self,
        queue: str | None = None,
        state: TaskState | str | None = None,
        type: str | None = None,
        limit: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> list[Task]:
        """Up to ``limit`` tasks matching the filters, newest first.

        ``headers``: only tasks carrying each of these headers with that value.
        """
        page_size = task_requests.page_size(limit)
        found: list[Task] = []
        pages = self.iter_tasks(
            queue=queue, state=state, type=type, page_size=page_size, headers=headers
        )
        async with contextlib.aclosing(pages) as tasks:
            async for task in tasks:
                found.append(task)
                if len(found) == limit:
                    break
        return found

    async def iter_tasks(
        self,
        queue: str | None = None,
        state: TaskState | str | None = None,
        type: str | None = None,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[Task, None]:
        """Every task matching the filters, newest first, fetched a page at a time."""
        token = ""
        while True:
            page = await self.list_tasks_page(
                queue=queue,
                state=state,
                type=type,
                page_size=page_size,
                headers=headers,
                page_token=token,
            )
            for task in page.tasks:
                yield task
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def list_tasks_page(
        self,
        queue: str | None = None,
        state: TaskState | str | None = None,
        type: str | None = None,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
        page_token: str = "",
    ) -> TaskPage:
        """One page of the tasks matching the filters, newest first, and the next page's
        token; see :meth:`Client.list_tasks_page <dtq_client.Client.list_tasks_page>`."""
        plan = task_requests.list_tasks(queue, state, type, page_size, headers, page_token)
        return await self._run(plan)
