"""C1-C4: wall-clock jumps, skew and a restart across a clock change (RELIABILITY.md 2.7),
with Debian's libfaketime.

The fixture installs the ``faketime`` package (``apt-get``) when it is missing and
the tests run as root; otherwise every scenario is skipped with the reason.

libfaketime fakes ``CLOCK_MONOTONIC`` too unless told not to. A real NTP step or
an operator's ``date -s`` moves only the wall clock, so every faked process here
runs with ``FAKETIME_DONT_FAKE_MONOTONIC=1``: the scenarios move the wall clock
and nothing else, exactly what the coordinator must shrug off.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from dtq_client import TaskSpec, TaskState
from tests.chaos._b_helpers import (
    BRow,
    Cluster,
    T,
    finish,
    make_cluster_fixture,  # noqa: F401  (a fixture)
    row_fixture,  # noqa: F401  (a fixture)
    start_server_with,
    terminal,
    wait_nodes,
)
from tests.harness import wait_until

pytestmark = pytest.mark.chaos
MakeCluster = Callable[..., Cluster]
LIB_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"
JUMP_S = 3600
SKEW_S = 600


@functools.cache
def _install_faketime() -> str:
    """The path of libfaketime.so.1, installing Debian's ``faketime`` if needed; or why not."""
    found = glob.glob(LIB_GLOB)
    if found:
        return found[0]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "skip: libfaketime is not installed and this is not root with apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "faketime"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:  # stale package lists: refresh once, then try again
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    found = glob.glob(LIB_GLOB)
    if not found:
        return f"skip: apt-get install faketime failed: {done.stderr.strip()[-300:]}"
    return found[0]


@pytest.fixture
def libfaketime(row: BRow) -> str:
    """Path of libfaketime.so.1 (installed on demand); the scenario is skipped without it."""
    path = _install_faketime()
    if path.startswith("skip: "):
        row.skip(path.removeprefix("skip: "))
    return path


def faked_env(lib: str, **settings: str) -> dict[str, str]:
    """Environment that runs a process under libfaketime, wall clock only."""
    return {
        "LD_PRELOAD": lib,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        **settings,
    }


def log_clock_offset_s(log: str) -> float:
    """How far the last timestamped line of a dtq log is from the real clock, in seconds."""
    for line in reversed(log.splitlines()):
        stamp = line.split(" ", 1)[0]
        if stamp.endswith("Z") and "T" in stamp:
            logged = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            return logged - time.time()
    raise AssertionError("no timestamped log line")


def coordinator_offset_s(cluster: Cluster) -> float:
    """The coordinator's wall clock minus the real one, read from a probe task it stamps."""
    with cluster.client() as client:
        probe = client.submit("clock.probe", {})
        client.cancel(probe.id)
    assert probe.created_at is not None
    return probe.created_at.timestamp() - time.time()


def jump_scenario(make_cluster: MakeCluster, lib: str) -> tuple[Cluster, Path]:
    """A coordinator whose wall clock follows a timestamp file (``+0`` until the jump)."""
    clock = Path(os.environ.get("TMPDIR", "/tmp")) / f"dtq-faketime-{os.getpid()}-{time.time()}"
    clock.write_text("+0\n")
    env = faked_env(lib, FAKETIME_TIMESTAMP_FILE=str(clock), FAKETIME_CACHE_DURATION="1")
    cluster = make_cluster(env=env)
    assert abs(coordinator_offset_s(cluster)) < 60, "clock not faked yet"
    return cluster, clock


def hold_leases(
    cluster: Cluster, nodes: int, sleep_s: float, first_only: bool = False
) -> list[str]:
    """Start ``nodes`` nodes, give each one long task, and wait until all run."""
    node_ids = [f"n{i}" for i in range(nodes)]
    for node_id in node_ids:
        cluster.node(node_id, threads=1)
    with cluster.client() as client:
        wait_nodes(client, *node_ids)
        payload = {"sleep": sleep_s, "first_only": first_only}
        # One batch, one commit: one at a time, a slow disk (CI once took ~2 s per
        # commit) spread the starts past the first task's end, so they never all ran.
        specs = [TaskSpec("ok", {**payload, "i": i}) for i in range(nodes)]
        ids = [result.task.id for result in client.submit_many(specs)]
        wait_until(
            lambda: all(client.get(i).state is TaskState.RUNNING for i in ids), 20, what="running"
        )
    return ids


@pytest.mark.scenario_id("C1")
@pytest.mark.timeout(120)
def test_c1_coordinator_wall_clock_jumps_forward(
    make_cluster: MakeCluster, row: BRow, libfaketime: str
) -> None:
    cluster, clock = jump_scenario(make_cluster, libfaketime)
    ids = hold_leases(cluster, 5, sleep_s=T + 3)
    with cluster.client() as client:
        # A task scheduled 30 s ahead on the coordinator's wall clock, before the jump.
        scheduled = client.submit("ok", {"scheduled": True}, delay_s=30.0)
        clock.write_text(f"+{JUMP_S}\n")
        wait_until(
            lambda: coordinator_offset_s(cluster) > JUMP_S - 60,
            10,
            interval_s=0.2,
            what="the coordinator's wall clock to jump",
        )
        time.sleep(T + 1)  # the scenario: a heartbeat timeout and more on the new clock
        for task_id in ids:
            done = terminal(client, task_id, 30)
            assert done.state is TaskState.SUCCEEDED
            assert (done.attempt, done.lease_expiries) == (1, 0), "no expiry, no redelivery"
        early = client.get(scheduled.id).state is not TaskState.QUEUED
        client.cancel(scheduled.id)
    log = cluster.server.log()
    assert "node.dead" not in log and "lease.lost" not in log
    offset = coordinator_offset_s(cluster)
    finish(
        row,
        cluster,
        jump_s=JUMP_S,
        wall_offset_seen_s=round(offset),
        lease_expiries=0,
        delayed_task_fired_early=early,
    )
    assert not early, "run_at/delay deadlines are monotonic once submitted"


@pytest.mark.scenario_id("C2")
@pytest.mark.timeout(120)
def test_c2_coordinator_wall_clock_jumps_back_then_a_node_dies(
    make_cluster: MakeCluster, row: BRow, libfaketime: str
) -> None:
    cluster, clock = jump_scenario(make_cluster, libfaketime)
    ids = hold_leases(cluster, 5, sleep_s=T + 4, first_only=True)
    with cluster.client() as client:
        cluster.node("spare", threads=1)
        wait_nodes(client, "spare")
        clock.write_text(f"-{JUMP_S}\n")
        wait_until(
            lambda: coordinator_offset_s(cluster) < -(JUMP_S - 60),
            10,
            interval_s=0.2,
            what="the coordinator's wall clock to jump back",
        )
        victim = next(p for p in cluster.procs if p.log_path.name == "node-n0.log")
        victim_task = next(i for i in ids if client.get(i).node_id == "n0")
        victim.kill9()
        killed_at = time.monotonic()
        wait_until(
            lambda: (t := client.get(victim_task)).node_id != "n0" and t.attempt == 2,
            T + 5,
            interval_s=0.02,
            what="the dead node's task re-leased",
        )
        redelivery_s = time.monotonic() - killed_at
        for task_id in ids:
            assert terminal(client, task_id, 30).state is TaskState.SUCCEEDED
        moved = client.get(victim_task)
        assert (moved.attempt, moved.lease_expiries) == (2, 1)
        others = [client.get(i) for i in ids if i != victim_task]
        assert all((t.attempt, t.lease_expiries) == (1, 0) for t in others)
    finish(
        row,
        cluster,
        redelivery_s=redelivery_s,
        limit_s=T + 1.0,
        jump_s=-JUMP_S,
        wall_offset_seen_s=round(coordinator_offset_s(cluster)),
    )


@pytest.mark.scenario_id("C3")
@pytest.mark.timeout(120)
def test_c3_node_clock_skew_has_no_effect(
    make_cluster: MakeCluster, row: BRow, libfaketime: str
) -> None:
    """Two nodes at once, one 10 min ahead and one 10 min behind the coordinator."""
    cluster = make_cluster()
    skews = {"ahead": SKEW_S, "behind": -SKEW_S}
    nodes = {
        name: cluster.node(name, threads=2, env=faked_env(libfaketime, FAKETIME=f"{skew:+d}"))
        for name, skew in skews.items()
    }
    with cluster.client() as client:
        wait_nodes(client, *skews)
        # Some tasks outlast the heartbeat timeout: only heartbeats keep their leases.
        sleeps = [T + 1 if i < 4 else 0.2 for i in range(16)]
        ids = [client.submit("ok", {"sleep": s, "i": i}).id for i, s in enumerate(sleeps)]
        ran_on = set()
        for task_id in ids:
            done = terminal(client, task_id, 60)
            assert done.state is TaskState.SUCCEEDED
            assert (done.attempt, done.lease_expiries) == (1, 0)
            ran_on.add(done.node_id)
        assert ran_on == set(skews) and all(node.alive() for node in nodes.values())
    offsets = {name: round(log_clock_offset_s(node.log())) for name, node in nodes.items()}
    for name, skew in skews.items():
        assert abs(offsets[name] - skew) < 60, f"{name}'s clock was not skewed: {offsets}"
    log = cluster.server.log()
    assert "node.dead" not in log and "resume_refused" not in log
    finish(row, cluster, node_skews_s=skews, node_offsets_seen_s=offsets)


def logged_at(log: str, event: str) -> float:
    """The timestamp (epoch seconds, on the logging process's clock) of ``event``'s first line."""
    for line in log.splitlines():
        stamp, _, rest = line.partition(" ")
        if rest.split("] ", 1)[-1].startswith(event + " "):
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"no {event} in the log")


@pytest.mark.scenario_id("C4")
@pytest.mark.timeout(120)
def test_c4_coordinator_restarts_an_hour_ahead(
    make_cluster: MakeCluster, row: BRow, libfaketime: str
) -> None:
    """kill -9 the coordinator, restart it with its wall clock 1 h ahead: the leases from
    before get a fresh grace of T from the restart, then expire as usual.

    n0 and n1 resume their sessions and keep their leases; n2 is killed with the
    coordinator, so its lease can only expire. Its expiry is timed on the restarted
    coordinator's own log (one clock, an hour ahead throughout), from the recovery
    that starts the grace to the session's end.
    """
    cluster = make_cluster()
    ids = hold_leases(cluster, 3, sleep_s=T + 4, first_only=True)
    with cluster.client() as client:
        on = {client.get(task_id).node_id: task_id for task_id in ids}
    victim = next(p for p in cluster.procs if p.log_path.name == "node-n2.log")
    victim.kill9()
    cluster.server.kill9()
    cluster.server = start_server_with(
        cluster.server.data_dir,
        listen=cluster.server.address,
        env=faked_env(libfaketime, FAKETIME=f"+{JUMP_S}"),
        log_path=cluster.server.data_dir / "server-restarted.log",
    )
    assert cluster.server.alive(), cluster.server.log()
    cluster.node("spare", threads=1)
    with cluster.client() as client:
        moved = terminal(client, on["n2"], 30)
        kept = [terminal(client, on[node_id], 30) for node_id in ("n0", "n1")]
    offset = coordinator_offset_s(cluster)
    assert offset > JUMP_S - 60, "the restarted coordinator runs an hour ahead"
    assert all(t.state is TaskState.SUCCEEDED for t in (moved, *kept))
    assert all((t.attempt, t.lease_expiries) == (1, 0) for t in kept), "resumed, not expired"
    assert (moved.attempt, moved.lease_expiries, moved.node_id) == (2, 1, "spare")
    log = cluster.server.log()
    recovered = logged_at(log, "coordinator.recovered")
    expired_s = logged_at(log, "node.dead") - recovered
    released_s = logged_at(log, "lease.lost") - recovered
    tick_s = min(0.25, T / 8)  # ServerConfig.reaper_tick_s
    # (The grace starts as the sessions are rebuilt, a moment before the line is logged.)
    assert expired_s >= T - 0.05, (
        f"n2's session ended {expired_s:.2f} s after the restart: no grace"
    )
    finish(
        row,
        cluster,
        redelivery_s=expired_s,
        limit_s=T + tick_s + 0.5,
        jump_s=JUMP_S,
        wall_offset_seen_s=round(offset),
        lease_requeued_after_s=round(released_s, 2),
    )
