"""Lightweight simulated worker nodes for P5: the real WorkerService protocol, no work done.

``python -m bench.simnode --address HOST:PORT --prefix sim --count 250`` opens
``count`` nodes in one asyncio process, each on its own gRPC connection: it
sends RegisterNode, then a Heartbeat (increasing sequence, no leases) every
heartbeat interval the coordinator announces, and reads the coordinator's
messages. The nodes serve a queue and task type nothing is submitted to, so
the coordinator's cost is that of sessions and heartbeats alone.

The process runs until it is signalled (SIGTERM's default action ends it: the
streams just break, as with a crashed node). SIGSTOP freezes every node of the
process, which is how P5 makes a node go silent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dtq.v1 import worker_service_pb2, worker_service_pb2_grpc

QUEUE = "bench-fleet"
TASK_TYPE = "bench.fleet.none"
REGISTER_CONCURRENCY = 50
"""Registrations in flight at once, so a process's nodes do not all connect in one burst."""


async def run_node(address: str, node_id: str, registering: asyncio.Semaphore) -> None:
    """One node: register, then heartbeat forever; returns when the stream ends."""
    # A private subchannel pool: every simulated node gets its own TCP connection, as real
    # nodes (separate processes) do, instead of sharing one per target.
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)  # type: ignore[no-untyped-call]
        registered = asyncio.Event()
        interval_s = [1.0]

        async def requests() -> AsyncIterator[worker_service_pb2.ConnectRequest]:
            yield worker_service_pb2.ConnectRequest(
                register=worker_service_pb2.RegisterNode(
                    node_id=node_id, hostname=socket.gethostname(), pid=os.getpid(),
                    version="bench-sim", task_types=[TASK_TYPE], queues=[QUEUE], slots=1,
                )
            )  # fmt: skip
            await registered.wait()
            # Nodes start at random phases, as a real fleet does.
            await asyncio.sleep(random.uniform(0, interval_s[0]))
            sequence = 0
            while True:
                sequence += 1
                now = Timestamp()
                now.GetCurrentTime()
                yield worker_service_pb2.ConnectRequest(
                    heartbeat=worker_service_pb2.Heartbeat(sequence=sequence, node_time=now)
                )
                await asyncio.sleep(interval_s[0])

        async with registering:
            call = stub.Connect(requests())
            first = await call.read()
        if not isinstance(first, worker_service_pb2.ConnectResponse) or not first.HasField(
            "registered"
        ):
            raise RuntimeError(f"{node_id}: no NodeRegistered, got {first}")
        interval = first.registered.heartbeat_interval
        interval_s[0] = interval.seconds + interval.nanos / 1e9
        registered.set()
        # Heartbeat acks until the stream ends (nothing else is expected).
        while isinstance(await call.read(), worker_service_pb2.ConnectResponse):
            pass


async def main_async(address: str, prefix: str, count: int) -> None:
    """Run ``count`` nodes until the process is signalled."""
    registering = asyncio.Semaphore(REGISTER_CONCURRENCY)
    await asyncio.gather(*(run_node(address, f"{prefix}-{i}", registering) for i in range(count)))


def main() -> None:
    """Parse the arguments and run the nodes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args.address, args.prefix, args.count))
    except grpc.aio.AioRpcError as exc:
        # The P5 victims end here on purpose: frozen, declared dead, then cut off.
        raise SystemExit(f"simnode {args.prefix}: stream ended {exc.code().name}") from None


if __name__ == "__main__":
    main()
