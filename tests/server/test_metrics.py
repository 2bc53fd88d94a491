"""Prometheus metrics (``--metrics-listen``) of a real coordinator, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtq.v1 import worker_service_pb2
from dtq_client import Client
from tests import readme
from tests.harness import (
    HEARTBEAT_TIMEOUT_S,
    InProcessCoordinator,
    RawNode,
    server_config,
    succeeded,
    wait_until,
)


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[InProcessCoordinator]:
    config = server_config(tmp_path / "data", metrics_listen="127.0.0.1:0")
    running = InProcessCoordinator(config).start()
    try:
        yield running
    finally:
        running.stop()


def _page(coordinator: InProcessCoordinator) -> str:
    url = f"http://127.0.0.1:{coordinator.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _scrape(coordinator: InProcessCoordinator) -> dict[tuple[str, tuple[str, ...]], float]:
    """Every sample of the page: (name, label values) -> value."""
    page = _page(coordinator)
    return {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def test_metrics_show_queues_and_nodes_as_the_cli_does(metered: InProcessCoordinator) -> None:
    with Client(metered.address) as client:
        for i in range(3):
            client.submit("echo", i, queue="reports")
        client.pause_queue("reports")
    metrics = _scrape(metered)
    coordinator_table = readme.tables(readme.section("## Monitoring"))[0]
    assert readme.served_metric_names(_page(metered)) == readme.metric_names(coordinator_table)
    assert metrics[("dtq_up", ())] == 1
    assert metrics[("dtq_queue_tasks", ("reports", "queued"))] == 3
    assert metrics[("dtq_queue_tasks", ("reports", "succeeded"))] == 0
    assert metrics[("dtq_queue_paused", ("reports",))] == 1
    assert metrics[("dtq_nodes", ("active",))] == 0
    assert metrics[("process_resident_memory_bytes", ())] > 0  # the process's own
    node = RawNode(metered.address, node_id="metered", slots=4, auto_heartbeat=True)
    try:
        wait_until(lambda: _scrape(metered)[("dtq_nodes", ("active",))] == 1, 10, what="the node")
        assert _scrape(metered)[("dtq_node_slots", ())] == 4
    finally:
        node.close()


def test_metrics_count_what_fencing_refused(metered: InProcessCoordinator) -> None:
    refusals = ("dtq_updates_rejected_total", "dtq_stale_heartbeat_leases_total")
    before = _scrape(metered)
    assert before[(refusals[0], ("task_not_found",))] == 0  # reported before it happens
    assert before[("dtq_nodes_expired_total", ())] == 0
    zombie = RawNode(metered.address, node_id="zombie")
    try:
        forged = "00000000-0000-4000-8000-000000000000"
        zombie.report(succeeded(forged, 1, b"1"), succeeded(forged, 2, b"2"))
        acks: list[worker_service_pb2.TaskUpdateAck] = []
        while len(acks) < 2:
            acks += zombie.next("update_acks").update_acks.acks
        assert [a.reason for a in acks] == ["TASK_NOT_FOUND"] * 2
        zombie.heartbeat(1, ((forged, 3),))
        assert len(zombie.next("heartbeat_ack").heartbeat_ack.stale_leases) == 1
        metrics = _scrape(metered)
        assert metrics[(refusals[0], ("task_not_found",))] == 2
        assert metrics[(refusals[0], ("stale_attempt",))] == 0
        assert metrics[(refusals[1], ())] == 1
        # Silent past the heartbeat timeout: declared dead, and counted.
        wait_until(
            lambda: _scrape(metered)[("dtq_nodes_expired_total", ())] == 1,
            10 * HEARTBEAT_TIMEOUT_S,
            what="the silent node declared dead",
        )
    finally:
        zombie.close()


def test_metrics_beyond_loopback_need_tls_or_insecure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refusing to serve metrics in plaintext"):
        server_config(tmp_path, metrics_listen="0.0.0.0:9464")
    assert server_config(tmp_path, metrics_listen="0.0.0.0:9464", insecure=True)
