"""``make run``: a coordinator and two demo worker nodes, stopped together on Ctrl-C.

Runs the real commands as child processes, exactly as an operator would:
``dtq-server`` on 127.0.0.1:50051 with its SQLite store in ./dtq-data, and two
``dtq-worker dtq_worker.demo:registry`` nodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ADDRESS = os.environ.get("DTQ_LISTEN", "127.0.0.1:50051")
HELP = f"""
DTQ is running: coordinator on {ADDRESS} (SQLite in ./dtq-data), two demo nodes.
From another terminal:

  . .venv/bin/activate
  dtq-client submit echo --payload '{{"x": 1}}' --wait -o json
  dtq-client submit sleep --payload '{{"seconds": 5}}'
  dtq-client list
  dtq-client nodes
  dtq-client queues

Ctrl-C stops everything.
"""


def main() -> int:
    port_file = Path("dtq-data") / "server.port"
    port_file.parent.mkdir(exist_ok=True)
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [str(BIN / "dtq-server"), "--listen", ADDRESS, "--port-file", str(port_file)]
    )
    children = [server]
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            print("dtq: the coordinator did not start", file=sys.stderr)
            server.kill()
            return 1
        time.sleep(0.05)
    for n in (1, 2):
        children.append(
            subprocess.Popen(
                [
                    str(BIN / "dtq-worker"),
                    "dtq_worker.demo:registry",
                    "--coordinator",
                    ADDRESS,
                    "--node-id",
                    f"demo-{n}",
                    "--threads",
                    "4",
                ]
            )
        )
    print(HELP, file=sys.stderr, flush=True)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    # Nodes first (they hand back unfinished work), then the coordinator.
    for child in [*children[1:], server]:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(40)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
