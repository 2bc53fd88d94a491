"""Middleware: functions a registry runs around every handler, sync or async."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from dtq_worker import NonRetryableError, Registry, TaskContext
from dtq_worker.models import Failed, Outcome, Payload, Succeeded
from dtq_worker.runner import Runner
from tests.worker.fakes import RecordingReporter, make_job, on_thread

CallNext = Callable[[Any, TaskContext], Any]


def run(registry: Registry, type_: str, payload: bytes = b"{}") -> Outcome:
    """Run one task as a worker thread would."""
    runner = Runner(registry, RecordingReporter(), max_result_bytes=4096)
    return on_thread(lambda: runner.run(make_job(type_, payload)))


def result(outcome: Outcome) -> Any:
    assert isinstance(outcome, Succeeded), outcome
    return json.loads(outcome.result.data)


def test_middleware_wraps_every_handler_first_added_outermost() -> None:
    registry = Registry()
    calls: list[str] = []

    @registry.middleware
    def outer(call_next: CallNext, payload: Any, ctx: TaskContext) -> Any:
        calls.append(f"outer {ctx.type}")
        return {"outer": call_next(payload, ctx)}

    @registry.middleware
    def inner(call_next: CallNext, payload: Any, ctx: TaskContext) -> Any:
        calls.append("inner")
        return {"inner": call_next({**payload, "seen": True}, ctx)}

    @registry.task("plain")
    def plain(payload: Any, ctx: TaskContext) -> Any:
        return payload

    @registry.task("async")
    async def async_(payload: Any, ctx: TaskContext) -> Any:
        await asyncio.sleep(0)
        return payload

    for type_ in ("plain", "async"):  # an async handler's result, not its coroutine
        outcome = run(registry, type_, b'{"n": 1}')
        assert result(outcome) == {"outer": {"inner": {"n": 1, "seen": True}}}
    assert calls == ["outer plain", "inner", "outer async", "inner"]


def test_middleware_sees_failures_and_may_turn_or_skip_them() -> None:
    registry = Registry()

    @registry.middleware
    def translate(call_next: CallNext, payload: Any, ctx: TaskContext) -> Any:
        if payload.get("skip"):
            return "skipped"  # the handler never runs
        try:
            return call_next(payload, ctx)
        except KeyError as exc:
            raise NonRetryableError(f"bad input: missing {exc}") from exc

    @registry.task("lookup")
    async def lookup(payload: Any, ctx: TaskContext) -> Any:
        return payload["key"]

    @registry.task("boom")
    async def boom(payload: Any, ctx: TaskContext) -> Any:
        raise ValueError("no luck")

    failed = run(registry, "lookup")
    assert isinstance(failed, Failed) and not failed.error.retryable
    assert (failed.error.type, failed.error.message) == (
        "NonRetryableError",
        "bad input: missing 'key'",
    )
    assert result(run(registry, "lookup", b'{"skip": true}')) == "skipped"
    boomed = run(registry, "boom")
    assert isinstance(boomed, Failed) and boomed.error.retryable
    # The traceback reads from the middleware to where the coroutine raised, without
    # the node's frames or the event loop's in between.
    frames = [line for line in boomed.error.traceback.splitlines() if "File " in line]
    assert [f.rsplit(" in ", 1)[1] for f in frames] == ["translate", "boom"]


def test_a_middleware_must_be_a_plain_callable() -> None:
    registry = Registry()

    async def coroutine(call_next: CallNext, payload: Any, ctx: TaskContext) -> Any:
        return call_next(payload, ctx)

    with pytest.raises(TypeError, match="plain function"):
        registry.middleware(coroutine)
    with pytest.raises(TypeError, match="callable"):
        registry.middleware("log")  # type: ignore[type-var]
    assert registry.middleware_chain == ()


def test_without_middleware_results_are_unchanged() -> None:
    registry = Registry()

    @registry.task("echo")
    def echo(payload: Any, ctx: TaskContext) -> Any:
        return payload

    assert run(registry, "echo", b'{"a": 1}') == Succeeded(Payload(b'{"a":1}', "application/json"))
