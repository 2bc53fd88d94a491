"""``dtq-client``: submit, inspect, cancel, retry and purge tasks; run schedules, queues, limits.

The CLI only parses arguments, calls :class:`dtq_client.Client` and prints the
result: data on stdout (``-o table|json|jsonl``), messages and errors on stderr.
:mod:`~dtq_client.cli.app` holds the group and what commands share, and
:mod:`~dtq_client.cli.specs` the options describing a task; the commands live
in :mod:`~dtq_client.cli.tasks` (one task, listing, groups),
:mod:`~dtq_client.cli.bulk` (retry and purge), :mod:`~dtq_client.cli.cluster`
(nodes, queues, rate limits, health) and :mod:`~dtq_client.cli.schedules`;
``ui``, the web dashboard, in :mod:`dtq_client.ui.command`.

Exit codes:

* 0 - success
* 1 - a waited or watched task ended FAILED or CANCELLED
* 2 - usage error (bad option or argument, invalid ``--payload`` JSON)
* 3 - RPC error: the coordinator answered with an error or could not be reached
  (the message shows the status code, reason and field violations)
* 4 - ``--wait``/``wait`` timed out before the task finished
* 5 - ``purge`` was not confirmed at its prompt (nothing was deleted)
* 130 - interrupted (Ctrl-C)
"""

from __future__ import annotations

import dtq.logs

# Imported for their side effect: each module registers its commands on the group.
from dtq_client.cli import bulk, cluster, schedules, tasks  # noqa: F401
from dtq_client.cli.app import ExitCode, cli, describe_rpc_error
from dtq_client.ui import command as _ui_command  # noqa: F401

__all__ = ["ExitCode", "cli", "describe_rpc_error", "main"]


def main() -> None:
    """The ``dtq-client`` console script."""
    dtq.logs.configure("warning")
    cli.main(prog_name="dtq-client")
