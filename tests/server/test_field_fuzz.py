"""Every RPC but the worker stream, fed requests built field by field (tests/field_fuzz.py).

The small, in-process version of chaos B5: it runs in the default suite and in
the PostgreSQL pass, where values SQLite takes and PostgreSQL does not (a NUL
in any text field) used to end as UNAVAILABLE or INTERNAL.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.message import Message

from dtq_client import Client
from tests.field_fuzz import BAD_CODES, MessageGen, call
from tests.harness import InProcessCoordinator
from tests.rpcs import Rpc, every_rpc

EXAMPLES = 150


def test_requests_built_field_by_field_end_with_a_precise_status(
    coordinator: InProcessCoordinator,
) -> None:
    with Client(coordinator.address) as client:
        ids = [client.submit("nobody.runs.this", {"i": i}).id for i in range(3)]
    gen = MessageGen(random.Random(5), ids)
    rpcs = [r for r in every_rpc() if not r.path.endswith("WorkerService/Connect")]
    problems: list[str] = []
    with grpc.insecure_channel(coordinator.address) as channel, ThreadPoolExecutor(8) as pool:
        for rpc in rpcs:
            calls = [gen.requests(rpc) for _ in range(EXAMPLES)]

            def send(requests: list[Message], rpc: Rpc = rpc) -> str | None:
                wire = [r.SerializeToString() for r in requests]
                code, details = call(channel, rpc, wire)
                if code in BAD_CODES or "Traceback" in details:
                    return f"{rpc.path}: {code.name} {details} for {requests}"
                return None

            problems += [p for p in pool.map(send, calls) if p is not None]
    assert problems == [], problems[:5]
    with Client(coordinator.address) as client:
        assert client.health() == "SERVING"
