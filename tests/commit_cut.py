"""A TCP proxy in front of PostgreSQL that loses one COMMIT's answer, on purpose.

The fault it makes is the one a network or server failure makes at the worst
moment: the server receives COMMIT and commits, and the connection dies before
the client reads the answer, so the client cannot know whether its transaction
was stored. Armed with a marker (bytes of a statement, ``b"INSERT INTO tasks"``),
it waits for a connection to send the marker and then COMMIT, lets the server's
answer come back to the proxy, drops that answer and resets both sides. Armed
with ``deliver_commit=False`` it drops the COMMIT itself instead: the same
silence for the client, but the server rolls the transaction back (once it
notices). With ``hold_server=True`` only the client's side is reset: the server
keeps the connection open, its transaction and locks too, as after a network
failure it has not noticed. Every other byte passes untouched; after its one
cut it is a plain proxy again.

The marker must travel as text: psycopg sends a statement it has already
prepared on that connection by name, so arm the proxy before the statement's
first use on a connection (a fresh one, or one the writer has just reopened).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from tests.chaos.proxy import send_rst

CHUNK_BYTES = 64 * 1024
COMMIT = b"COMMIT"


class CommitCutProxy:
    """Listens on 127.0.0.1:0 and forwards to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._marker: bytes | None = None
        self._deliver_commit = True
        self._hold_server = False
        self._held: list[asyncio.StreamWriter] = []
        """Server sides kept open after their cut (``hold_server``), until the proxy exits."""
        self.cut = threading.Event()
        """Set once a COMMIT's answer was dropped."""
        self.address = ""
        """``127.0.0.1:PORT`` it listens on, once entered."""
        self._server: asyncio.Server | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.address = f"127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def arm(self, marker: bytes, *, deliver_commit: bool = True, hold_server: bool = False) -> None:
        """Drop the answer to the next COMMIT of a transaction that sent ``marker``
        (or, with ``deliver_commit=False``, that COMMIT itself); with ``hold_server``
        keep that connection open on the server's side."""
        self._deliver_commit = deliver_commit
        self._hold_server = hold_server
        self._marker = marker

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        """Stop accepting and end every proxied connection (their pumps included)."""
        if self._server is not None:
            self._server.close()
        for writer in self._held:
            send_rst(writer)
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            send_rst(client_w)
            return
        committed = asyncio.Event()  # this connection sent the COMMIT to cut
        up = asyncio.ensure_future(self._up(client_r, server_w, committed))
        down = asyncio.ensure_future(self._down(server_r, client_w, committed))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in (up, down):
                pump.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            send_rst(client_w)
            if self.cut.is_set() and self._hold_server:
                self._hold_server = False
                self._held.append(server_w)
            else:
                send_rst(server_w)

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, committed: asyncio.Event
    ) -> None:
        seen_marker = False
        while data := await reader.read(CHUNK_BYTES):
            marker = self._marker
            if marker is not None and marker in data:
                seen_marker = True
            if seen_marker and COMMIT in data and self._marker is not None:
                self._marker = None  # one cut only
                if not self._deliver_commit:
                    self.cut.set()
                    return  # the connection ends without the server seeing COMMIT
                committed.set()
            writer.write(data)
            await writer.drain()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, committed: asyncio.Event
    ) -> None:
        while data := await reader.read(CHUNK_BYTES):
            if committed.is_set():
                # The server's answer to COMMIT (it has committed): lost on the way.
                self.cut.set()
                return
            writer.write(data)
            await writer.drain()
