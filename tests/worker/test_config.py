"""WorkerConfig defaults and validation."""

from __future__ import annotations

import math
import os
import socket

import pytest

from dtq_worker import ConfigError, WorkerConfig


def test_defaults() -> None:
    config = WorkerConfig()
    assert config.coordinator == "127.0.0.1:50051"
    assert (config.threads, config.queues) == (4, ("default",))
    assert config.node_id == f"{socket.gethostname()}-{os.getpid()}"
    assert (config.max_restarts, config.restart_period_s, config.shutdown_grace_s) == (3, 5.0, 30.0)
    assert config.max_result_bytes == 1024 * 1024
    assert config.prefetch == "auto"


@pytest.mark.parametrize(
    "overrides",
    [
        {"threads": 0},
        {"threads": 10_001},
        {"queues": ()},
        {"queues": ("bad queue",)},
        {"node_id": ""},
        {"max_restarts": -1},
        {"restart_period_s": 0},
        {"rpc_timeout_s": -1},
        {"rpc_timeout_s": math.nan},  # NaN passed `<= 0` checks
        {"progress_interval_s": math.inf},
        {"shutdown_grace_s": math.nan},
        {"task_timeout_s": math.nan},
        {"log_level": "loud"},
        {"prefetch": -1},
        {"prefetch": 10_001},
        {"prefetch": "some"},
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        WorkerConfig(**overrides)  # type: ignore[arg-type]
