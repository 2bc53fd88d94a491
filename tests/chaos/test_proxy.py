"""The fault proxy itself, against a plain TCP echo server on loopback."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import Direction, FaultProxy
from tests.harness import wait_until


class _Echo(socketserver.BaseRequestHandler):
    """Echoes every byte back and counts what it received."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, EchoServer)
        try:
            while data := self.request.recv(65536):
                server.received += len(data)
                if server.echo:
                    self.request.sendall(data)
        except ConnectionResetError:
            pass  # the proxy's reset() reached this side too


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received = 0
        self.echo = True

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address) as running:
        yield running


def connect(proxy: FaultProxy) -> socket.socket:
    host, port = proxy.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(2)
    return sock


def roundtrip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def silent(sock: socket.socket, wait_s: float = 0.3) -> bool:
    """True if nothing arrives within ``wait_s`` and the socket stays open."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b"never"  # b"" (closed) or data both mean "not silent"
    except TimeoutError:
        return True
    finally:
        sock.settimeout(2)


@pytest.mark.timeout(30)
def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
    # The proxy counts a chunk once its write drained, which may be after the peer read it.
    wait_until(
        lambda: proxy.forwarded[Direction.UP] == proxy.forwarded[Direction.DOWN] == 200_000,
        5,
        what="the byte counts",
    )


@pytest.mark.timeout(30)
def test_blackhole_discards_keeps_open_then_heal_resets_damaged_streams(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as old:
        assert roundtrip(old) == b"ping"
        proxy.blackhole()
        old.sendall(b"lost")
        assert silent(old)
        wait_until(lambda: proxy.discarded[Direction.UP] == 4, 5, what="bytes discarded")
        with connect(proxy) as during:  # new connections are black-holed too
            during.sendall(b"lost too")
            assert silent(during)
            proxy.pass_through()
            # Bytes are missing from both streams: they are reset, not resumed.
            with pytest.raises(ConnectionResetError):
                roundtrip(old)
            with pytest.raises(ConnectionResetError):
                roundtrip(during)
    with connect(proxy) as fresh:
        assert roundtrip(fresh) == b"ping"
    assert echo.received == 8  # "ping" twice; nothing discarded ever reached the server


@pytest.mark.timeout(30)
def test_one_way_blackhole_passes_up_and_drops_down(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        proxy.blackhole_one_way(Direction.DOWN)
        sock.sendall(b"hello")
        wait_until(lambda: echo.received == 5, 5, what="bytes reached the server")
        assert silent(sock)
    with connect(proxy) as sock:
        proxy.blackhole_one_way(Direction.UP)
        sock.sendall(b"dropped")
        assert silent(sock)
        assert echo.received == 5


@pytest.mark.timeout(30)
def test_reset_sends_rst_to_both_sides(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            roundtrip(sock)
        # The proxy forgets the connection when its pipe task sees the abort, which may be
        # just after the client has already seen the RST.
        wait_until(lambda: proxy.connections == 0, 5, what="the proxy to drop the connection")
    with connect(proxy) as sock:  # the proxy itself keeps passing
        assert roundtrip(sock) == b"ping"


@pytest.mark.timeout(30)
def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.latency(100)
    with connect(proxy) as sock:
        started = time.monotonic()
        assert roundtrip(sock) == b"ping"
        assert time.monotonic() - started >= 0.2  # 100 ms up, 100 ms down


@pytest.mark.timeout(30)
def test_bandwidth_paces_the_stream(proxy: FaultProxy, echo: EchoServer) -> None:
    echo.echo = False
    proxy.bandwidth(200)  # kB/s
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"y" * 200_000)
        wait_until(lambda: echo.received == 200_000, 10, what="all bytes through")
        assert time.monotonic() - started >= 0.6  # 1 s at 200 kB/s, minus one chunk of slack
