"""P3 concurrency: single-task submits with 64 in flight, against raw grpc.aio unary calls.

Both sides use the same grpc.aio client loop (64 coroutines sharing one
channel and one counter) so the ratio measures the coordinator, not the
client: DTQ's ``TaskService.SubmitTask`` (each acknowledged after its commit,
with an idempotency key as the Python client sends) on a fresh coordinator,
and a bare echo server (:mod:`bench.rawgrpc`) in its own process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.cluster import ROOT, cluster, stop_processes, wait_for
from bench.rawgrpc import METHOD
from dtq.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

CONCURRENCY = 64


async def _rate(call: Callable[[int], Awaitable[object]], total: int) -> float:
    """Calls/s with ``CONCURRENCY`` calls in flight, after one warm-up call per coroutine."""
    await asyncio.gather(*(call(-1 - i) for i in range(CONCURRENCY)))
    numbers = iter(range(total))

    async def worker() -> None:
        for i in numbers:  # shared: each number is taken by exactly one coroutine
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - started)


async def _submit_rate(address: str, total: int) -> float:
    run = uuid.uuid4().hex
    async with grpc.aio.insecure_channel(address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)  # type: ignore[no-untyped-call]

        async def submit(i: int) -> object:
            spec = task_pb2.TaskSpec(
                type="echo",
                payload=task_pb2.Payload(data=str(i).encode(), content_type="application/json"),
                idempotency_key=f"c{CONCURRENCY}-{run}-{i}",
            )
            return await stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec))

        return await _rate(submit, total)


async def _raw_rate(address: str, total: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

        async def call(i: int) -> object:
            return await echo(str(i).encode())

        return await _rate(call, total)


def submit_rate(total: int, coordinator_cpus: frozenset[int] | None = None) -> float:
    """DTQ: acknowledged single-task submits/s with 64 in flight (no nodes)."""
    with cluster(nodes=0, coordinator_cpus=coordinator_cpus) as address:
        return asyncio.run(_submit_rate(address, total))


def raw_rate(total: int) -> float:
    """The ceiling: bare grpc.aio unary calls/s with 64 in flight, server in its own process."""
    with tempfile.TemporaryDirectory(prefix="dtq-bench-raw-") as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rawgrpc", "--port-file", str(port_file)], cwd=ROOT
        )
        try:
            wait_for(port_file.exists, 20, "the raw gRPC server")
            return asyncio.run(_raw_rate(port_file.read_text().strip(), total))
        finally:
            stop_processes([proc])
