"""Serving the UI with uvicorn on a socket bound up front.

:class:`UiServer` binds (and listens on) its socket when it is created, so the
port is known before anything is served, port 0 included: ``dtq-client ui``
prints it, tests connect to it. :meth:`UiServer.run` serves in the foreground
until SIGINT/SIGTERM, then returns (so ``dtq-client ui`` exits 0, as
``dtq-server`` does); :meth:`UiServer.start` serves on a thread of its own
until :meth:`UiServer.stop`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from dtq_client.ui.settings import UiConfig

_STARTUP_TIMEOUT_S = 10.0
_GRACEFUL_SHUTDOWN_S = 5
"""Longest wait for requests under way when stopping (the page's refreshes are short)."""


class UiServer:
    """The UI's HTTP server: one uvicorn server on one listening socket."""

    def __init__(self, app: ASGIApp, config: UiConfig) -> None:
        self._socket = _listen(config.host, config.port)
        self.host = config.host
        self.port: int = self._socket.getsockname()[1]
        """The bound port (the one picked, for port 0)."""
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,  # the process's logging (dtq.logs) is already set up
                access_log=False,
                lifespan="off",
                proxy_headers=False,  # no proxy is trusted to say who the client is
                server_header=False,
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then finish the requests under way and return."""
        try:
            with self._stop_signals():
                self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the server, and nothing more.

        uvicorn handles them while it serves, then raises the signal again once
        it has shut down, to end the process the default way (status -15, or
        KeyboardInterrupt); with these handlers in place the process goes on
        and exits normally. One arriving before uvicorn listens stops it too.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread receives signals
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            self._server.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self) -> UiServer:
        """Serve on a background thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self.run, name="dtq-ui", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the UI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop a server :meth:`start` ran and wait for its thread. Safe to call twice."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_GRACEFUL_SHUTDOWN_S + 5)


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6, as the host resolves) and listening."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
