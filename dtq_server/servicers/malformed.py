"""Request bytes that are not a valid message get INVALID_ARGUMENT, quietly.

grpcio decodes each request before any servicer code runs. When the bytes do
not parse (random bytes, a truncated message, a wrong wire type, invalid UTF-8
in a string field, nesting past the parser's limit) it fails the call with
UNKNOWN, puts the parser's exception text in the status details, and logs a
full traceback per call: a peer sending garbage could fill the log and read
our internals (RELIABILITY B2, R13).

:class:`GuardedRegistrar` wraps every method's request deserializer so that
a message that does not parse becomes a :class:`Malformed` marker instead; the
method then ends with INVALID_ARGUMENT (``BadRequest`` field ``request``) and
one debug log line, without a traceback (a flood of garbage must not flood the
log either). For streaming requests (the worker stream) the marker fails the
stream the same way, whether it is the first message or a later one.

The same guard is where callers are checked when the coordinator has a tokens
file (:mod:`dtq_server.auth`): first, so a stranger learns nothing from how its
bytes parse, and once per call or stream, registered with the method.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog

from dtq_server.auth import CALLER, Gate
from dtq_server.call_cap import CallCap
from dtq_server.errors import CoordinatorError, InvalidArgument, Unauthenticated
from dtq_server.servicers.errors import Context, abort, to_status
from dtq_server.tokens import Identity

log = structlog.get_logger(__name__)
Deserializer = Callable[[bytes], Any]
if TYPE_CHECKING:  # the stubs make these generic; at run time they are plain classes
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler


class Malformed:
    """Stands in for a request message that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _error(method: str) -> InvalidArgument:
    return InvalidArgument([("request", f"is not a valid request message for {method}")])


def _safe(deserializer: Deserializer, method: str) -> Deserializer:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, and anything a parser may raise on garbage
            log.debug("rpc.malformed_request", method=method, error=type(exc).__name__)
            return Malformed(type(exc).__name__)

    return parse


async def _checked(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise _error(method)
        yield request


async def _admit(gate: Gate, method: str, context: Context) -> Identity | None:
    """Let the call in (and remember who made it), or end it UNAUTHENTICATED /
    PERMISSION_DENIED before its handler runs."""
    try:
        identity = gate.admit(
            method, context.invocation_metadata() or (), context.peer(), context.peer_identities
        )
    except CoordinatorError as exc:
        await abort(context, to_status(exc))
    CALLER.set(identity)
    return identity


async def _revocable(
    gate: Gate, identity: Identity | None, context: Context, responses: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """``responses``, ended UNAUTHENTICATED if the token that opened the stream is revoked;
    RESOURCE_EXHAUSTED at once if the token holds all the streams it may."""
    try:
        gate.check_room(identity)
    except CoordinatorError as exc:
        await abort(context, to_status(exc))
    with gate.revocable(identity):
        try:
            async for response in responses:
                yield response
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or not gate.was_revoked():
                raise
            task.uncancel()  # the cancel was the revocation's: end with a status instead
            await abort(context, to_status(Unauthenticated()))


async def _awaited(writes: Awaitable[None]) -> AsyncIterator[None]:
    """A handler that writes its own responses, as a stream of nothing (for ``_revocable``)."""
    await writes
    return
    yield  # an async generator


def _guard(
    handler: Handler, method: str, gate: Gate | None = None, cap: CallCap | None = None
) -> Handler:
    """The same handler, with malformed requests answered INVALID_ARGUMENT and, with a
    ``gate``, callers checked first (so a stranger's garbage says nothing about parsing);
    with a ``cap``, unary calls end after its time at most (RELIABILITY R10)."""
    assert handler.request_deserializer is not None
    parse = _safe(handler.request_deserializer, method)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)

        async def unary(request: Any, context: Context) -> Any:
            if gate is not None:
                await _admit(gate, method, context)
            if isinstance(request, Malformed):
                await abort(context, to_status(_error(method)))
            if cap is None:
                return await unary_unary(request, context)
            return await cap.run(unary_unary(request, context), context)

        return grpc.unary_unary_rpc_method_handler(cast(Any, unary), parse, serialize)
    if handler.unary_stream is not None and inspect.iscoroutinefunction(handler.unary_stream):
        writer = cast(Callable[[Any, Context], Awaitable[None]], handler.unary_stream)

        async def written_stream(request: Any, context: Context) -> None:
            # Its handler sends with context.write() (grpcio-health-checking's Watch): a
            # coroutine, not a generator, and the guard must be one too.
            identity = await _admit(gate, method, context) if gate is not None else None
            if isinstance(request, Malformed):
                await abort(context, to_status(_error(method)))
            if gate is None:
                return await writer(request, context)
            async for _ in _revocable(gate, identity, context, _awaited(writer(request, context))):
                pass

        return grpc.unary_stream_rpc_method_handler(cast(Any, written_stream), parse, serialize)
    if handler.unary_stream is not None:
        unary_stream = cast(Callable[[Any, Context], AsyncIterator[Any]], handler.unary_stream)

        async def server_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            responses = unary_stream(request, context)  # not started until iterated
            if gate is not None:
                identity = await _admit(gate, method, context)
                responses = _revocable(gate, identity, context, responses)
            if isinstance(request, Malformed):
                await abort(context, to_status(_error(method)))
            async for response in responses:
                yield response

        return grpc.unary_stream_rpc_method_handler(cast(Any, server_stream), parse, serialize)
    if handler.stream_unary is not None:
        stream_unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.stream_unary)

        async def client_stream(requests: AsyncIterator[Any], context: Context) -> Any:
            if gate is not None:
                await _admit(gate, method, context)
            try:
                return await stream_unary(_checked(requests, method), context)
            except InvalidArgument as exc:
                await abort(context, to_status(exc))

        return grpc.stream_unary_rpc_method_handler(cast(Any, client_stream), parse, serialize)
    stream_stream = cast(Callable[[Any, Context], AsyncIterator[Any]], handler.stream_stream)

    async def bidi(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        responses = stream_stream(_checked(requests, method), context)
        if gate is not None:
            identity = await _admit(gate, method, context)
            responses = _revocable(gate, identity, context, responses)
        try:
            async for response in responses:
                yield response
        except InvalidArgument as exc:  # a malformed first message; later ones end the
            await abort(context, to_status(exc))  # worker stream through its reader

    return grpc.stream_stream_rpc_method_handler(cast(Any, bidi), parse, serialize)


class GuardedRegistrar:
    """Stands in for the server in the generated ``add_*Servicer_to_server`` functions.

    Each method is registered with its guard once, at start-up. (An interceptor
    did the same per call: on single submits the interception alone cost more
    than the servicer's own work.)
    """

    def __init__(
        self, server: grpc.aio.Server, gate: Gate | None = None, cap: CallCap | None = None
    ) -> None:
        self._server = server
        self._gate = gate
        self._cap = cap
        self._unregistered: set[str] = set()
        self._methods: list[str] = []

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        """The generated code's first call; its dictionary follows in the next one."""
        for handler in handlers:
            self._unregistered.add(cast(Any, handler).service_name())

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        """Register every method of ``service`` with its guard."""
        if self._gate is not None and any(
            h.request_deserializer is None for h in handlers.values()
        ):  # such a method would skip the guard, and with it the token check
            raise RuntimeError(f"{service} has a method the guard cannot wrap")
        guarded = {
            name: handler
            if handler.request_deserializer is None
            else _guard(handler, f"/{service}/{name}", self._gate, self._cap)
            for name, handler in handlers.items()
        }
        self._methods += [f"/{service}/{name}" for name in handlers]
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, guarded),)
        )
        # Registered methods skip the generic lookup (grpcio >= 1.62; not in the stubs yet).
        cast(Any, self._server).add_registered_method_handlers(service, guarded)
        self._unregistered.discard(service)

    def check(self) -> None:
        """Fail start-up if a service came only as a generic handler (it would be missing)."""
        if self._unregistered:
            raise RuntimeError(f"services registered without their methods: {self._unregistered}")
        if self._gate is not None:
            self._gate.require(self._methods)
