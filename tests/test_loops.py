"""dtq.loops: which event loop a choice means, and running on it."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from dtq import loops
from dtq_server.config import ServerConfig
from dtq_worker.config import WorkerConfig
from dtq_worker.errors import ConfigError


async def _running() -> str:
    await asyncio.sleep(0)
    return loops.running()


def run_on_a_thread(choice: loops.EventLoop) -> str:
    """``loops.run`` on a fresh thread: Playwright's sync API (the UI tests) may have left
    an event loop running on pytest's own thread, where a second one cannot run."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(loops.run, _running(), choice).result(timeout=10)


def test_auto_is_uvloop_where_it_is_installed() -> None:
    assert loops.uvloop_installed()  # a dependency on every platform CI runs on
    assert loops.resolve("auto") == "uvloop"
    assert run_on_a_thread("auto") == "uvloop"


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_each_loop_runs_by_name(choice: loops.EventLoop) -> None:
    assert loops.resolve(choice) == choice
    assert run_on_a_thread(choice) == choice


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops, "uvloop_installed", lambda: False)
    assert loops.resolve("auto") == "asyncio"
    with pytest.raises(ValueError, match="uvloop is not installed"):
        loops.resolve("uvloop")


def test_an_unknown_loop_is_refused_by_both_configs() -> None:
    with pytest.raises(ValueError, match="event loop must be one of auto, uvloop, asyncio"):
        ServerConfig(event_loop="trio")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="event loop must be one of auto, uvloop, asyncio"):
        WorkerConfig(event_loop="trio")  # type: ignore[arg-type]
