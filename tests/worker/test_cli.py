"""The dtq-worker command, run as a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dtq

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dtq_worker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=environ,
        check=False,
    )


def test_help_lists_the_options() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in (
        "MODULE[:ATTR]",
        "--coordinator",
        "--threads",
        "--queues",
        "--node-id",
        "--max-restarts",
        "--restart-period",
        "--shutdown-grace",
        "--reconnect-backoff-max",
        "--rpc-timeout",
        "--progress-interval",
        "--max-result-bytes",
        "--log-level",
        "--log-format",
        "DTQ_COORDINATOR",
        "DTQ_RECONNECT_BACKOFF_MAX",
    ):
        assert option in result.stdout, option


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert dtq.__version__ in result.stdout


def test_a_module_that_does_not_exist_exits_2() -> None:
    result = _run("no_such_module_for_dtq_tests")
    assert result.returncode == 2
    assert "cannot import 'no_such_module_for_dtq_tests'" in result.stderr


def test_an_attribute_that_is_not_a_registry_exits_2() -> None:
    result = _run("dtq_worker.demo:echo")
    assert result.returncode == 2
    assert "not a dtq_worker.Registry" in result.stderr


def test_modules_are_found_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text("registry = 42\n")
    result = _run("mytasks", cwd=tmp_path)
    assert result.returncode == 2
    assert "mytasks:registry is a int" in result.stderr  # imported, then rejected


def test_bad_settings_from_the_environment_exit_2() -> None:
    result = _run("dtq_worker.demo", DTQ_THREADS="0")
    assert result.returncode == 2
    assert "--threads" in result.stderr


def test_prefetch_is_auto_or_a_count() -> None:
    for value in ("lots", "-1", "10001"):
        result = _run("dtq_worker.demo", "--prefetch", value)
        assert result.returncode == 2, (value, result.stderr)
        assert "'auto' or a number 0-10000" in result.stderr, (value, result.stderr)
    result = _run("dtq_worker.demo", DTQ_PREFETCH="many")
    assert result.returncode == 2
    assert "DTQ_PREFETCH" in result.stderr


def test_bad_transport_settings_exit_2_naming_the_option() -> None:
    for option, value in (
        ("--reconnect-backoff-max", "0"),
        ("--rpc-timeout", "-1"),
        ("--progress-interval", "0"),
        ("--max-result-bytes", "0"),
    ):
        result = _run("dtq_worker.demo", option, value)
        assert result.returncode == 2, (option, result.stderr)
        assert option in result.stderr, (option, result.stderr)


def test_reconnect_backoff_max_bounds_the_pauses_between_attempts() -> None:
    # Nothing listens on this port: the node keeps trying, never pausing longer.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{reserved.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtq_worker", "dtq_worker.demo", "--coordinator", address,
             "--reconnect-backoff-max", "0.2", "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("DTQ_")},
                 "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        pauses: list[float] = []
        try:
            assert proc.stderr is not None
            deadline = time.monotonic() + 20
            while len(pauses) < 8 and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                if line.startswith("{") and '"coordinator.unreachable"' in line:
                    pauses.append(json.loads(line)["retry_in_s"])
        finally:
            proc.terminate()
            proc.wait(10)
    assert len(pauses) == 8, pauses
    assert max(pauses) <= 0.2, pauses
