"""The synchronous DTQ client.

::

    from dtq_client import Client

    with Client("127.0.0.1:50051") as client:
        task = client.submit("email.send", {"to": "ada@example.com"})
        done = client.wait(task.id, timeout_s=60)
        print(done.state, done.result_value())

Every call has a deadline (``timeout_s``, 10 s by default) and is retried on
UNAVAILABLE with exponential backoff and jitter (see :mod:`dtq_client.retry`).
Submits are always idempotent: a spec without an idempotency key gets a fresh
one, so a retry after an ambiguous failure (a lost response, a deadline) returns
the task the first attempt created instead of creating a second one.
A client is thread-safe; share one per process.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Literal, Protocol, Self, Unpack, overload

import grpc

from dtq.tls import ClientTls
from dtq.v1 import task_service_pb2
from dtq_client import convert, retry, task_requests
from dtq_client.batching import send_ahead
from dtq_client.cluster import ClusterCalls
from dtq_client.config import DEFAULT_ADDRESS, ClientConfig, RetryPolicy
from dtq_client.connection import open_channel
from dtq_client.errors import (
    DeadlineExceeded,
    ProtocolError,
    RpcError,
    Unavailable,
    WaitTimeout,
    translate_rpc_errors,
)
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
from dtq_client.schedules import ScheduleCalls
from dtq_client.submit_options import Keys, SubmitOptions, spec_of
from dtq_client.submit_stream import DEFAULT_WINDOW
from dtq_client.submitter import Submitter


class _TaskStreamCall(Protocol):
    """A WatchTask or SubmitAndWatchTask call: messages that carry a task, and cancel()."""

    def __iter__(
        self,
    ) -> Iterator[
        task_service_pb2.WatchTaskResponse | task_service_pb2.SubmitAndWatchTaskResponse
    ]: ...

    def cancel(self) -> bool: ...


class Client(ScheduleCalls, ClusterCalls):
    """A connection to a DTQ coordinator; use it as a context manager or call :meth:`close`.

    ``tls`` connects over TLS (:class:`dtq.tls.ClientTls`: the CA to trust, and a
    certificate to present for mTLS); ``token`` is sent with every call, to a
    coordinator that checks tokens (never in plaintext beyond loopback unless
    :attr:`ClientConfig.allow_insecure_token`). ``channel`` lets the caller supply (and keep
    ownership of) an open channel; otherwise the client opens one with
    :func:`dtq_client.create_channel`.
    Task calls are defined here; those about the cluster (nodes, queues, rate
    limits) and schedules come from :class:`~dtq_client.cluster.ClusterCalls`
    and :class:`~dtq_client.schedules.ScheduleCalls`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        tls: ClientTls | None = None,
        token: str | None = None,
        channel: grpc.Channel | None = None,
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
    def from_config(cls, config: ClientConfig, *, channel: grpc.Channel | None = None) -> Self:
        """A client configured by ``config``."""
        client = cls.__new__(cls)
        client._setup(config, channel)
        return client

    def _setup(self, config: ClientConfig, channel: grpc.Channel | None) -> None:
        self.config = config
        self._new_key = Keys()
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else open_channel(config)
        self._open_stubs(self._channel)
        self._closed = threading.Event()

    def close(self) -> None:
        """Close the channel (unless the caller supplied it). Safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- submitting ----------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: object = None,
        **options: Unpack[SubmitOptions],
    ) -> Task:
        """Submit one task and return it as stored.

        The keywords are :class:`SubmitOptions`: a :class:`TaskSpec`'s fields (see
        it for each); a keyword that is not one of them raises TypeError.

        With ``depends_on`` (ids of existing tasks) the task is WAITING until
        they all succeed; if one fails or is cancelled, the task fails
        (``DEPENDENCY_FAILED``) or, with ``on_dependency_failure="cancel"``, is
        cancelled, and so on down the tasks depending on it.

        ``headers`` (such as ``{"traceparent": ..., "tenant": ...}``) are stored
        with the task and handed to its handler as ``ctx.headers``.

        With an ``idempotency_key`` that an earlier task used, that task is
        returned; :class:`AlreadyExists` if its spec differs. ``run_at`` and
        ``delay_s`` are not part of that comparison (``delay_s`` counts from
        each submit, so a retried submit could never match otherwise).
        """
        spec = spec_of(type, payload, options, self._new_key)
        return self._run(task_requests.submit_task(spec, self._stamp))

    def submit_and_wait(self, spec: TaskSpec, timeout_s: float | None = None) -> Task:
        """Submit one task, block until it is terminal and return it, whatever its outcome.

        What :meth:`submit` then :meth:`wait` do, in one call: the coordinator
        streams the task from its commit to its end, so the result arrives
        without the round trip of opening a watch after the submit's answer
        (a large part of the time to the result of a short task). Submitting
        follows :meth:`submit`'s rules: a generated idempotency key if the spec
        has none, retries on UNAVAILABLE and DEADLINE_EXCEEDED, its errors
        before the task is stored. Waiting follows :meth:`wait`'s:
        :class:`WaitTimeout` if ``timeout_s`` passes first (None waits for
        ever). The call itself lasts at most ``config.timeout_s``; a task still
        running then (or a stream that breaks after the submit) is followed
        with :meth:`wait`.
        """
        if not spec.idempotency_key:
            spec = replace(spec, idempotency_key=self._new_key())
        request = task_service_pb2.SubmitAndWatchTaskRequest(task=convert.spec_to_proto(spec))
        self._stamp((request.task,))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def attempt() -> tuple[Task, Generator[Task, None, None]]:
            call_s = self.config.timeout_s
            if deadline is not None:
                call_s = max(0.0, min(call_s, deadline - time.monotonic()))
            stream = _follow(self._tasks.SubmitAndWatchTask(request, timeout=call_s))
            return next(stream), stream

        retrying = retry.retrying(self.config.retry, retry.SUBMIT_CODES, deadline=deadline)
        stored, rest = retrying(attempt)  # from here on, only waiting is left
        task = stored
        with contextlib.closing(rest), contextlib.suppress(Unavailable, DeadlineExceeded):
            for task in itertools.chain([stored], rest):
                if task.is_terminal:
                    return task
        if deadline is not None and deadline - time.monotonic() < task_requests.DEADLINE_SLACK_S:
            raise WaitTimeout(task.id, timeout_s, task)
        return self.wait(task.id, None if deadline is None else deadline - time.monotonic())

    @overload
    def submit_many(
        self, specs: Iterable[TaskSpec], *, answer: Literal["task"] = "task"
    ) -> list[SubmitResult]: ...

    @overload
    def submit_many(
        self, specs: Iterable[TaskSpec], *, answer: Literal["ack"]
    ) -> list[SubmitAck]: ...

    def submit_many(
        self, specs: Iterable[TaskSpec], *, answer: Literal["task", "ack"] = "task"
    ) -> list[SubmitResult] | list[SubmitAck]:
        """Submit many tasks, returning one answer per spec in order.

        With ``answer="task"`` (the default) each answer is a :class:`SubmitResult`
        holding the whole stored task, payload included; with ``answer="ack"`` a
        :class:`SubmitAck` (id, created, state), which costs the coordinator and
        this client a fraction of the work for large batches.

        Specs are sent in batches of at most ``config.submit_batch_size`` tasks
        and about ``config.submit_batch_bytes``; each batch is stored
        atomically. If the first batch fails its error is raised as is (nothing
        was stored); if a later one fails, :class:`SubmitManyError` says what was
        stored and what to resubmit.
        """
        acks = task_requests.wants_acks(answer)
        specs = list(specs)
        # Encode every payload before sending anything, so a bad one stores nothing.
        messages = task_requests.keyed_messages(specs, self._new_key)
        self._stamp(messages)
        requests = task_requests.submit_batches(messages, self.config, acks=acks)
        results: list[Any] = []  # SubmitResult or SubmitAck, as asked
        # closing(): leaving early (an error) waits for the batch under way, there and then.
        answers = contextlib.closing(send_ahead(self._send_batch, requests))
        try:
            with answers as pairs:
                for request, response in pairs:
                    results += task_requests.batch_answers(request, response, acks=acks)
        except RpcError as exc:
            if not results:
                raise
            error = task_requests.partial_failure(exc, specs, messages, results, acks=acks)
            raise error from exc
        return results

    def _send_batch(
        self, request: task_service_pb2.SubmitTasksRequest
    ) -> task_service_pb2.SubmitTasksResponse:
        response: task_service_pb2.SubmitTasksResponse = self._unary(
            self._tasks.SubmitTasks, request, retry.SUBMIT_CODES
        )
        return response

    def submitter(self, window: int = DEFAULT_WINDOW) -> Submitter:
        """A :class:`Submitter`: submit task after task without a round trip each.

        Each :meth:`Submitter.submit` returns a future at once; it resolves to a
        :class:`SubmitAck` once the task is committed (or to the error
        :meth:`submit` would raise). At most ``window`` submits are unanswered
        at a time; a further submit blocks until one is answered. A stream that
        breaks is reopened and what was unanswered resent, safely (idempotency
        keys). Use it as a context manager: leaving waits for every answer.
        """
        return Submitter(self._tasks, self.config, window)

    def submit_group(self, specs: Iterable[TaskSpec]) -> SubmittedGroup:
        """Submit tasks as one group, whose aggregate status :meth:`get_group` reports.

        Unlike :meth:`submit_many` the specs go in ONE request (so at most
        10,000 of them, within the transport's message size): all are stored,
        in one group, or none is. Specs may depend on tasks submitted before,
        not on each other (their ids are not known yet).
        """
        return self._run(task_requests.submit_group(specs, self._stamp, self._new_key))

    def get_group(self, group_id: str) -> Group:
        """The aggregate status of a group; :class:`GroupNotFound` if no task is in it."""
        return self._run(task_requests.get_group(group_id))

    # --- reading and cancelling ----------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """The task with ``task_id``; :class:`TaskNotFound` if there is none."""
        return self._run(task_requests.get_task(task_id))

    def cancel(self, task_id: str) -> Task:
        """Cancel a task and return it.

        A queued task is cancelled at once; a dispatched one gets
        ``cancel_requested`` and ends CANCELLED once its node stops it.
        :class:`TaskTerminal` if it already succeeded or failed.
        """
        return self._run(task_requests.cancel_task(task_id))

    def cancel_tasks(
        self,
        queue: str | None = None,
        type: str | None = None,
        state: TaskState | str | None = None,
    ) -> CancelCounts:
        """Cancel every unfinished task matching the filters, like :meth:`cancel` does one.

        At least one of ``queue`` and ``type`` is required (:class:`InvalidArgument`
        otherwise), so that no call cancels everything by accident. ``state``
        narrows it to waiting, queued, leased or running tasks. Returns
        ``(cancelled, cancel_requested)``: waiting and queued tasks cancelled at
        once, and dispatched ones whose nodes were asked to stop them. Waiting
        tasks are cancelled before their dependencies, so they end CANCELLED
        whatever their ``on_dependency_failure``.
        """
        return self._run(task_requests.cancel_tasks(queue, type, state))

    def retry(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        queue: str | None = None,
        type: str | None = None,
        state: TaskState | str | None = None,
    ) -> RetryResult:
        """Send failed (dead-lettered) or cancelled tasks back to their queue.

        Either ``task_ids`` (tasks in another state, or unknown, are skipped
        and listed in ``skipped_task_ids``) or a filter: every task of
        ``queue`` and/or ``type`` in ``state``, FAILED by default or CANCELLED;
        the coordinator retries at most 10,000 per call and says ``truncated``
        when more remain. A retried task gets a fresh attempt budget; its
        attempt number keeps counting, so the next dispatch is a new attempt.
        """
        return self._run(task_requests.retry_tasks(task_ids, queue, type, state))

    def purge(
        self,
        state: TaskState | str,
        *,
        queue: str | None = None,
        type: str | None = None,
    ) -> int:
        """Delete the finished tasks in ``state`` of ``queue`` and/or ``type``; return how many.

        ``state`` must be succeeded, failed or cancelled (:class:`InvalidArgument`
        otherwise); without a queue or type, every task in that state goes.
        """
        return self._run(task_requests.purge_tasks(state, queue, type))

    def list_tasks(
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
        tasks = self.iter_tasks(
            queue=queue, state=state, type=type, page_size=page_size, headers=headers
        )
        return list(itertools.islice(tasks, min(limit, sys.maxsize)))  # islice's own limit

    def iter_tasks(
        self,
        queue: str | None = None,
        state: TaskState | str | None = None,
        type: str | None = None,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[Task]:
        """Every task matching the filters, newest first, fetched a page at a time."""
        token = ""
        while True:
            page = self.list_tasks_page(
                queue=queue,
                state=state,
                type=type,
                page_size=page_size,
                headers=headers,
                page_token=token,
            )
            yield from page.tasks
            if not page.next_page_token:
                return
            token = page.next_page_token

    def list_tasks_page(
        self,
        queue: str | None = None,
        state: TaskState | str | None = None,
        type: str | None = None,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
        page_token: str = "",
    ) -> TaskPage:
        """One page of the tasks matching the filters, newest first.

        For callers that page themselves (a web page's "older" link): pass the
        page's ``next_page_token`` with the same filters for the next one. A token
        stays valid while tasks are added or finish (it marks a place in
        submission order, not an offset); one from other filters is refused
        (:class:`InvalidArgument`).
        """
        plan = task_requests.list_tasks(queue, state, type, page_size, headers, page_token)
        return self._run(plan)

    # --- waiting -------------------------------------------------------------------------

    def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Block until the task is terminal and return it, whatever its outcome.

        Raises :class:`WaitTimeout` if ``timeout_s`` passes first (None waits
        for ever). A failed or cancelled task is returned, not raised.
        """
        with contextlib.closing(self.watch(task_id, timeout_s=timeout_s)) as changes:
            for task in changes:
                if task.is_terminal:
                    return task
        raise ProtocolError(f"the watch of task {task_id} ended before a terminal state")

    def watch(self, task_id: str, timeout_s: float | None = None) -> Generator[Task, None, None]:
        """Yield the task's current state, then each change, ending after a terminal state.

        A stream that breaks with UNAVAILABLE is reopened, with backoff while
        the coordinator stays unreachable, for up to ``config.retry.total_s``
        (then :class:`Unavailable` is raised); the reopened stream's first state
        is skipped if nothing changed meanwhile. Raises :class:`WaitTimeout` if
        ``timeout_s`` passes before the task is terminal.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: Task | None = None
        while True:
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise WaitTimeout(task_id, timeout_s, last)
            try:
                first, rest = self._open_watch(task_id, deadline)
            except DeadlineExceeded as exc:
                task_requests.raise_if_expired(exc, deadline, WaitTimeout(task_id, timeout_s, last))
                continue
            # closing(): a consumer that stops early ends the call now, not at garbage collection.
            with contextlib.closing(rest):
                try:
                    for task in itertools.chain([first], rest):
                        if task != last:
                            last = task
                            yield task
                        if task.is_terminal:
                            return
                except Unavailable:
                    # The stream had worked, so reopen it with a fresh retry budget, after a
                    # short pause so that a coordinator ending streams early is not hammered.
                    time.sleep(self.config.retry.initial_backoff_s)
                except DeadlineExceeded as exc:
                    timeout = WaitTimeout(task_id, timeout_s, last)
                    task_requests.raise_if_expired(exc, deadline, timeout)

    def _open_watch(
        self, task_id: str, deadline: float | None
    ) -> tuple[Task, Generator[Task, None, None]]:
        """Open a WatchTask stream and read its first state, retrying UNAVAILABLE."""

        def attempt() -> tuple[Task, Generator[Task, None, None]]:
            slice_s = self.config.watch_renew_s
            if deadline is not None:
                slice_s = max(0.0, min(slice_s, deadline - time.monotonic()))
            stream = self._watch_stream(task_id, slice_s)
            return next(stream), stream

        # Reconnecting is bounded by time (retry.total_s), not by attempts, so that a
        # long wait rides out a coordinator restart.
        retrying = retry.retrying(
            self.config.retry, retry.READ_CODES, deadline=deadline, count_attempts=False
        )
        return retrying(attempt)

    def _watch_stream(self, task_id: str, timeout_s: float) -> Generator[Task, None, None]:
        """One WatchTask call; Unavailable if it ends before a terminal state."""
        request = task_service_pb2.WatchTaskRequest(task_id=task_id)
        return _follow(self._tasks.WatchTask(request, timeout=timeout_s))


def _follow(call: _TaskStreamCall) -> Generator[Task, None, None]:
    """The tasks a WatchTask or SubmitAndWatchTask call streams, ending after a terminal
    one; Unavailable if the call ends before that."""
    try:
        with translate_rpc_errors():
            for response in call:
                task = convert.task_from_proto(response.task)
                if task.is_terminal:
                    _finish(call)
                    yield task
                    return
                yield task
    finally:
        call.cancel()  # ends the call when the consumer stops early; a no-op otherwise
    raise Unavailable(grpc.StatusCode.UNAVAILABLE, "watch stream ended early")


def _finish(call: Iterable[object]) -> None:
    """Read a watch call to its end after the terminal state, which the coordinator follows
    at once with its status: cancelling instead races that status, and grpc then logs an
    error on the coordinator for a stream that ended normally."""
    with contextlib.suppress(grpc.RpcError):
        for _ in call:
            pass
