"""The asyncio event loop the coordinator and the worker nodes run on.

Most of a coordinator's time under load is the event loop's own work
(scheduling callbacks, waking tasks, reading gRPC completions), not DTQ's.
uvloop (libuv, in Cython) does that work for less CPU: on the 2-core bench
machine, 6 % more end-to-end tasks/s (median of 9 runs each) and 2-14 % more
concurrent unary submits (three interleaved pairs), A/B in the commit that
brought it. It is used where it is installed (it is a dependency everywhere
but Windows); ``asyncio`` is the escape hatch if a deployment ever meets a
uvloop bug. Nothing in DTQ depends on which loop runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoop = Literal["auto", "uvloop", "asyncio"]
"""``auto`` is uvloop when it is installed, else asyncio's own loop."""
EVENT_LOOPS: tuple[EventLoop, ...] = ("auto", "uvloop", "asyncio")


def uvloop_installed() -> bool:
    """True if uvloop can be imported."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: EventLoop) -> Literal["uvloop", "asyncio"]:
    """The loop ``choice`` means here; ValueError if it is unknown, or asks for uvloop
    where there is none."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio"
    if uvloop_installed():
        return "uvloop"
    if choice == "uvloop":
        raise ValueError("event loop uvloop: uvloop is not installed (pip install uvloop)")
    return "asyncio"


def _factory(loop: Literal["uvloop", "asyncio"]) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None  # asyncio.Runner's default: the policy's new loop
    import uvloop  # noqa: PLC0415 - here, not on top: it is not installable on Windows

    return uvloop.new_event_loop


def running() -> str:
    """The name of the running loop's implementation (for the start-up log line)."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def run(main: Coroutine[Any, Any, T], choice: EventLoop) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` resolves to."""
    with asyncio.Runner(loop_factory=_factory(resolve(choice))) as runner:
        return runner.run(main)
