"""The dtq-worker command, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
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
        "--log-level",
        "--log-format",
        "DTQ_COORDINATOR",
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
