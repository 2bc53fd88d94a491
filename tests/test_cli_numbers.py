"""Every float option of the three commands refuses NaN and the infinities.

click's FloatRange lets NaN through its bounds (every comparison with NaN is
false), and ``inf`` where it has no upper one: ``dtq-server --heartbeat-timeout
nan`` served with a node timeout no silence ever passed, ``dtq-client ui
--refresh nan`` served a page that fetched itself without pause, and
``dtq-client submit --delay inf`` died with a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dtq.cli_types import FiniteFloat
from dtq_client.cli import cli as client_cli
from dtq_client.ui import UiConfig, UiConfigError
from dtq_server.cli import main as server_main
from dtq_worker.cli import main as worker_main
from tests.harness import server_config

pytestmark = pytest.mark.timeout(30)


def test_every_float_option_is_a_finite_one() -> None:
    commands: list[click.Command] = [server_main, worker_main, client_cli]
    seen = 0
    while commands:
        command = commands.pop()
        if isinstance(command, click.Group):
            commands += command.commands.values()
        for param in command.params:
            if isinstance(param.type, click.FloatRange) or param.type is click.FLOAT:
                assert isinstance(param.type, FiniteFloat), (command.name, param.name)
                seen += 1
    assert seen >= 20  # the server's, the worker's and the client's


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("command", "args"),
    [
        (server_main, ["--heartbeat-timeout"]),
        (server_main, ["--shutdown-grace"]),
        (server_main, ["--result-ttl"]),
        (worker_main, ["dtq_worker.demo", "--rpc-timeout"]),
        (worker_main, ["dtq_worker.demo", "--shutdown-grace"]),
        (client_cli, ["ui", "--refresh"]),
        (client_cli, ["submit", "echo", "--delay"]),
        (client_cli, ["rate-limits", "set", "key"]),
    ],
)
def test_nan_and_infinities_are_usage_errors(
    command: click.Command, args: list[str], value: str
) -> None:
    result = CliRunner().invoke(command, [*args, value])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_the_configs_refuse_nan_given_in_code(tmp_path: Path) -> None:
    """What the options guard, the frozen configs check again for callers in code."""
    for field in ("heartbeat_interval_s", "heartbeat_timeout_s"):
        with pytest.raises(ValueError, match="heartbeat"):
            server_config(tmp_path, **{field: math.nan})
    for field in ("shutdown_grace_s", "result_ttl_s", "max_connection_age_s", "sweep_interval_s"):
        for value in (math.nan, math.inf, -1.0):
            with pytest.raises(ValueError, match=f"{field} must be a finite number"):
                server_config(tmp_path, **{field: value})
    with pytest.raises(UiConfigError, match="refresh_s"):
        UiConfig(refresh_s=math.nan)
