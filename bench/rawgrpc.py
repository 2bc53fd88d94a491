"""A bare grpc.aio echo server: the unary-call ceiling P3's concurrent submits are held against.

``python -m bench.rawgrpc --port-file F`` serves ``/bench.Raw/Echo`` (bytes in,
the same bytes out, no protobuf) on 127.0.0.1:0 and writes ``host:port`` to F.
SIGTERM's default action ends it.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

SERVICE = "bench.Raw"
METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve(port_file: Path) -> None:
    """Serve until the process is signalled."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    partial = port_file.with_suffix(".partial")  # renamed: a reader never sees half a line
    partial.write_text(f"127.0.0.1:{port}")
    partial.replace(port_file)
    await server.wait_for_termination()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    asyncio.run(serve(parser.parse_args().port_file))


if __name__ == "__main__":
    main()
