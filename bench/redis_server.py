"""A throw-away Redis server for ``make bench-peers``: loopback, free port, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from bench.cluster import stop_processes, wait_for


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(binary: str = "redis-server") -> Iterator[str]:
    """Start ``redis-server`` on a free loopback port with RDB and AOF off; yield its URL.

    The peers are measured as their own benchmarks describe them: Redis without
    fsync. Stopped (SIGTERM; it saves nothing) when the block exits.
    """
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} not found: install Debian's redis-server package")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        proc = subprocess.Popen(
            [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp, "--logfile", "", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def up() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
                return _pong(port)

            wait_for(up, 20, "redis-server", interval_s=0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_processes([proc])
