"""A worker node's Prometheus metrics (``--metrics-listen``), scraped over HTTP."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtq_client import Client, TaskSpec, TaskState
from dtq_worker import ConfigError, Registry, TaskContext, WorkerConfig
from tests import handlers, readme
from tests.harness import InProcessCoordinator, wait_until
from tests.worker.nodes import RunningNode


def page(running: RunningNode) -> str:
    url = f"http://127.0.0.1:{running.node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def scrape(running: RunningNode, name: str, **labels: str) -> float:
    """The value of one sample of the node's page (0 if absent); ``node_id`` is implied."""
    page_ = page(running)
    if not name.startswith("process_"):
        labels = {"node_id": running.node_id, **labels}
    for family in text_string_to_metric_families(page_):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def boom(payload: Any, ctx: TaskContext) -> None:
    raise ValueError("no luck")


def until_cancelled(payload: Any, ctx: TaskContext) -> None:
    ctx.cancel_event.wait(30)
    ctx.raise_if_cancelled()


def test_metrics_count_outcomes_durations_and_threads(
    coordinator: InProcessCoordinator, run_node: Callable[..., RunningNode]
) -> None:
    registry = Registry()
    registry.register("echo", handlers.echo)
    registry.register("boom", boom)
    registry.register("hold", until_cancelled)
    registry.register("kill_thread", handlers.kill_thread)
    # The crashing task runs again at once until it is dead-lettered: no restart limit
    # here (four crashes in 22 ms would end the node, and its page).
    running = run_node(
        coordinator.address, registry, node_id="metered", metrics_listen="127.0.0.1:0",
        max_restarts=1000,
    )  # fmt: skip
    with Client(coordinator.address) as client:
        for i in range(3):
            assert client.submit_and_wait(TaskSpec("echo", i)).state is TaskState.SUCCEEDED
        failed = client.submit("boom", {}, max_attempts=1)
        assert client.wait(failed.id, timeout_s=10).state is TaskState.FAILED
        held = client.submit("hold", {})
        wait_until(lambda: scrape(running, "dtq_worker_tasks_running") == 1, 10)
        client.cancel(held.id)
        assert client.wait(held.id, timeout_s=10).state is TaskState.CANCELLED
        # A handler that kills its thread: each attempt is released (WORKER_DIED) and
        # requeued, until its lost leases dead-letter it.
        crashed = client.wait(client.submit("kill_thread", {}).id, timeout_s=20)
        assert crashed.state is TaskState.FAILED and crashed.lease_expiries >= 2

    def outcomes(task_type: str, outcome: str) -> float:
        return scrape(
            running, "dtq_worker_tasks_total", queue="default", type=task_type, outcome=outcome
        )

    assert outcomes("echo", "succeeded") == 3
    assert outcomes("boom", "failed") == 1
    assert outcomes("hold", "cancelled") == 1
    restarts = scrape(running, "dtq_worker_thread_restarts_total")
    wait_until(lambda: outcomes("kill_thread", "released") == restarts, 10, what="each crash")
    echo = {"queue": "default", "type": "echo"}
    assert scrape(running, "dtq_worker_task_duration_seconds_count", **echo) == 3
    assert scrape(running, "dtq_worker_task_duration_seconds_sum", **echo) > 0
    assert scrape(running, "dtq_worker_tasks_running") == 0
    assert scrape(running, "dtq_worker_threads") == 2
    assert scrape(running, "dtq_worker_threads_alive") == 2  # the dead ones were replaced
    assert scrape(running, "dtq_worker_up") == 1
    assert scrape(running, "process_resident_memory_bytes") > 0
    node_table = readme.tables(readme.section("## Monitoring"))[1]
    assert readme.served_metric_names(page(running)) == readme.metric_names(node_table)


def test_metrics_beyond_loopback_need_an_explicit_flag() -> None:
    with pytest.raises(ConfigError, match="refusing to serve metrics in plaintext"):
        WorkerConfig(metrics_listen="0.0.0.0:9464")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        WorkerConfig(metrics_listen="9464")
    assert WorkerConfig(metrics_listen="0.0.0.0:9464", metrics_insecure=True).metrics_listen
