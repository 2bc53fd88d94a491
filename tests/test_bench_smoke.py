"""``make bench`` and ``make bench-affinity`` at small size still run end to end and report
numbers (never speed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("P1", "P2", "P3", "P4", "P5")


def run_bench(*args: str, timeout_s: float) -> str:
    """``python -m bench.<args>`` from the repository root; its output, once it exited 0."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_small_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    stdout = run_bench("bench.run", "--size", "small", "--json", str(out), timeout_s=280)
    assert "pass/fail" in stdout  # the table was printed
    results = json.loads(out.read_text())["results"]
    assert {name[:2] for name in results} == set(PARTS)
    for name, figure in results.items():
        assert figure["values"], name
        assert all(math.isfinite(v) for v in figure["values"]), name
        assert math.isfinite(figure["median"]), name
        assert figure["target"], name


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_on_postgres_runs_p1_on_a_database_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    stdout = run_bench(
        "bench.run", "--size", "small", "--postgres", "--only", "P1", "--json", str(out),
        timeout_s=110,
    )  # fmt: skip
    assert "PostgreSQL" in stdout
    report = json.loads(out.read_text())
    assert report["store"] == "PostgreSQL"
    databases = report["raw"]["postgres_databases"]  # one per coordinator the run started
    assert databases and len(set(databases)) == len(databases)
    assert {name[:2] for name in report["results"]} == {"P1"}
    assert all(math.isfinite(v) for f in report["results"].values() for v in f["values"])


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity")
    or len(os.sched_getaffinity(0)) < 2
    or shutil.which("taskset") is None,
    reason="pinning the coordinator needs Linux, taskset and two CPUs",
)
def test_bench_affinity_small_runs_both_ways_with_the_coordinator_on_one_cpu(
    tmp_path: Path,
) -> None:
    out = tmp_path / "affinity.json"
    stdout = run_bench("bench.affinity", "--size", "small", "--json", str(out), timeout_s=110)
    assert "one CPU vs scheduler" in stdout  # the table was printed
    report = json.loads(out.read_text())
    assert report["cpu"] in os.sched_getaffinity(0)
    results = report["results"]
    assert {name[:2] for name in results} == {"th", "P1", "P2", "P3"}
    for name, both in results.items():
        for way in ("scheduler", "one_cpu"):
            assert both[way] and all(math.isfinite(v) and v > 0 for v in both[way]), (name, way)
