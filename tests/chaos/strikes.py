"""Faults struck at seeded moments for as long as a soak lasts (L2, L3)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from tests.chaos.cluster import ChaosCluster, Fault
from tests.harness import HEARTBEAT_TIMEOUT_S

T = HEARTBEAT_TIMEOUT_S
KINDS = ("node.kill9", "node.sigstop", "proxy.blackhole", "coordinator.kill9", "proxy.reset")
"""Every kind :func:`strike` knows."""


def strike(cluster: ChaosCluster, kind: str, node: str) -> Fault:
    """Inject one fault of ``kind`` (on ``node`` unless it is the coordinator's) and undo it."""
    if kind == "node.kill9":
        fault = cluster.kill_node(node)
        time.sleep(1.0)  # the service manager's restart delay
        cluster.restart_node(node)
    elif kind == "node.sigstop":
        fault = cluster.pause_node(node)
        time.sleep(T + 2)  # the pause is the fault
        cluster.resume_node(node)
    elif kind == "proxy.blackhole":
        fault = cluster.blackhole(node)
        time.sleep(T + 3)  # the partition is the fault
        cluster.heal(node)
    elif kind == "coordinator.kill9":
        fault = cluster.kill_coordinator()
        cluster.restart_coordinator()
    elif kind == "proxy.reset":
        fault = cluster.reset(node)
    else:
        raise ValueError(f"no such fault: {kind}")
    return fault


def strike_for(
    cluster: ChaosCluster,
    rng: random.Random,
    kinds: Sequence[str],
    nodes: Sequence[str],
    spacing: tuple[float, float],
    duration_s: float,
    label: str,
) -> list[Fault]:
    """Strike a fault chosen by ``rng`` every ``spacing`` s until ``duration_s`` is over."""
    started = time.monotonic()
    struck: list[Fault] = []
    next_at = started + rng.uniform(*spacing)
    while next_at < started + duration_s:
        time.sleep(max(0.0, next_at - time.monotonic()))  # the spacing is the scenario
        kind, node = rng.choice(kinds), rng.choice(nodes)
        fault = strike(cluster, kind, node)
        struck.append(fault)
        target = "" if kind.startswith("coord") else node
        print(f"[{label}] {fault.at - started:6.1f} s  {kind} {target}")
        next_at = max(time.monotonic(), next_at) + rng.uniform(*spacing)
    time.sleep(max(0.0, started + duration_s - time.monotonic()))
    return struck
