"""A small asyncio TCP fault proxy: the network between a node (or client) and the coordinator.

No toxiproxy server is packaged here (RELIABILITY.md 2.0), so the chaos tests
put this between the two ends instead. It listens on ``127.0.0.1:0``, runs its
own event loop on a daemon thread, and forwards every accepted connection to
``target``. Faults are switched at run time and apply to every connection, old
and new:

- ``pass_through()``: forward both ways (the default);
- ``blackhole()`` / ``blackhole_one_way(direction)``: keep the sockets open,
  read and discard, forward nothing (toxiproxy's ``timeout=0`` toxic);
- ``reset()``: RST both sides of every open connection (SO_LINGER 0, then close);
- ``latency(ms)`` and ``bandwidth(kbps)``: delay, or pace, what is forwarded.

Healing (any call that stops black-holing a direction) resets the connections
that lost bytes meanwhile: TCP would have retransmitted them after a real
partition, but here they are gone, and feeding the rest of a byte stream with a
hole in it to an HTTP/2 peer would test our framing, not our fault handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

CHUNK_BYTES = 64 * 1024
T = TypeVar("T")


class Direction(StrEnum):
    """Which way bytes flow through the proxy."""

    UP = "up"
    """From the connecting side (node or client) to the target (coordinator)."""
    DOWN = "down"
    """From the target back to the connecting side."""


@dataclass(frozen=True)
class Faults:
    """The faults currently applied to every connection."""

    blackhole: frozenset[Direction] = frozenset()
    latency_s: float = 0.0
    bandwidth_bps: float | None = None
    """Bytes per second per direction and connection; None is unlimited."""


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: the accepted socket and the one to the target."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None
    """None while the connection waits in a black hole for the target."""
    poisoned: set[Direction] = field(default_factory=set)
    """Directions in which bytes were discarded: the stream cannot be resumed."""
    closed: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once both sockets are closed."""

    def abort(self) -> None:
        """RST both sides (SO_LINGER 0 makes close() send RST instead of FIN)."""
        if self.closed:
            return
        self.closed = True
        self.ended.set()
        for writer in (self.client, self.server):
            if writer is not None:
                send_rst(writer)


def send_rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection with an RST, as a dropped connection looks to its peer
    (SO_LINGER 0 makes closing send RST instead of FIN)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy to ``target`` (``host:port``) with switchable faults; see the module doc."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.faults = Faults()
        self.address = ""
        """``127.0.0.1:port`` to connect to instead of the target (set by :meth:`start`)."""
        self.accepted = 0
        self.forwarded = {Direction.UP: 0, Direction.DOWN: 0}
        self.discarded = {Direction.UP: 0, Direction.DOWN: 0}
        self._pipes: set[_Pipe] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None

    # --- lifecycle (any thread) ---------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on an ephemeral loopback port and start forwarding."""
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    def close(self) -> None:
        """Stop listening and RST every open connection. Idempotent."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for pipe in list(self._pipes):
                pipe.abort()
            # Finish every forwarding task before the loop stops, so none is left to
            # be garbage-collected half-run (which warns, and can break interpreter exit).
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- faults (any thread; in effect when the call returns) ---------------------------

    def pass_through(self) -> None:
        """Forward everything, at full speed ("pass")."""
        self._set(Faults())

    def blackhole(self) -> None:
        """Forward nothing either way; the sockets stay open and reads are discarded."""
        self._set(replace(self.faults, blackhole=frozenset(Direction)))

    def blackhole_one_way(self, direction: Direction) -> None:
        """Discard what flows in ``direction`` only."""
        self._set(replace(self.faults, blackhole=frozenset({direction})))

    def latency(self, ms: float) -> None:
        """Deliver every chunk ``ms`` milliseconds after it was read (order is kept)."""
        self._set(replace(self.faults, latency_s=ms / 1000))

    def bandwidth(self, kbps: float | None) -> None:
        """Pace each direction of each connection to ``kbps`` kB/s (None: unlimited)."""
        self._set(replace(self.faults, bandwidth_bps=None if kbps is None else kbps * 1000))

    def reset(self) -> int:
        """RST both sides of every open connection; returns how many there were."""

        async def reset_all() -> int:
            pipes = list(self._pipes)
            for pipe in pipes:
                pipe.abort()
            return len(pipes)

        return self._call(reset_all())

    def upstream_ports(self) -> set[int]:
        """Local ports of the proxy's sockets to the target (how the target sees them)."""

        async def ports() -> set[int]:
            found = set()
            for pipe in self._pipes:
                name = pipe.server.get_extra_info("sockname") if pipe.server else None
                if name:
                    found.add(int(name[1]))
            return found

        return self._call(ports())

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return self._call(self._count())

    async def _count(self) -> int:
        return len(self._pipes)

    def _set(self, faults: Faults) -> None:
        async def apply() -> None:
            healed = self.faults.blackhole - faults.blackhole
            self.faults = faults
            for pipe in list(self._pipes):
                if pipe.poisoned & healed:
                    pipe.abort()

        self._call(apply())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- forwarding (proxy loop) --------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if Direction.UP in self.faults.blackhole:
            # A real black hole drops the SYN too: the target must not see this
            # connection. Swallow what the client sends; healing resets it.
            await self._swallow(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()  # the target is down: refuse like it would
            return
        pipe = _Pipe(client=writer, server=up_writer)
        self._pipes.add(pipe)
        try:
            await asyncio.gather(
                self._pump(pipe, Direction.UP, reader, up_writer),
                self._pump(pipe, Direction.DOWN, up_reader, writer),
            )
            if pipe.poisoned & self.faults.blackhole:
                # One side hung up inside the black hole: the other must not hear of it
                # (no FIN or RST crosses a partition). Hold its socket until healed.
                await pipe.ended.wait()
        finally:
            self._pipes.discard(pipe)
            pipe.abort()

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(client=writer, server=None, poisoned={Direction.UP})
        self._pipes.add(pipe)
        try:
            while not pipe.closed:
                try:
                    data = await reader.read(CHUNK_BYTES)
                except OSError:
                    return
                if not data:
                    return
                self.discarded[Direction.UP] += len(data)
        finally:
            self._pipes.discard(pipe)
            pipe.abort()

    async def _pump(
        self,
        pipe: _Pipe,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Read one direction; forward, delay or discard per the faults at read time."""
        # Bounded, so a paced or delayed direction pushes back on its sender as TCP would.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)
        sender = asyncio.create_task(self._send(pipe, direction, queue, writer))
        loop = asyncio.get_running_loop()
        try:
            while not pipe.closed:
                try:
                    data = await reader.read(CHUNK_BYTES)
                except OSError:
                    pipe.abort()  # a reset on one side reaches the other
                    return
                if pipe.closed:
                    return
                if direction in self.faults.blackhole:
                    pipe.poisoned.add(direction)
                    self.discarded[direction] += len(data)
                    if not data:
                        return  # a black hole passes no FIN either; keep the other side open
                    continue
                await queue.put((loop.time() + self.faults.latency_s, data))
                if not data:
                    await sender  # deliver what is queued, then the half-close
                    return
        finally:
            if not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    async def _send(
        self,
        pipe: _Pipe,
        direction: Direction,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if direction in self.faults.blackhole:  # switched on while the chunk waited
                pipe.poisoned.add(direction)
                self.discarded[direction] += len(data)
                continue
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except OSError:
                pipe.abort()
                return
            self.forwarded[direction] += len(data)
            bps = self.faults.bandwidth_bps
            if bps:
                await asyncio.sleep(len(data) / bps)
