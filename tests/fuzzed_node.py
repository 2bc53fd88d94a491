"""A node on the worker stream that registers for real, then sends fuzzed messages.

It takes the leases the coordinator gives it and, every few milliseconds,
sends mostly-valid updates about them (forged task ids and attempts among
them: STALE_ATTEMPT and NOT_LEASED paths), heartbeats naming some of them,
now and then a second registration, a leave, or a message filled at random
(:class:`tests.field_fuzz.MessageGen`). Used by chaos B7 and, in the default
suite and the PostgreSQL pass, by ``tests/server/test_field_fuzz.py``.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import grpc

from dtq.v1 import task_pb2, worker_service_pb2, worker_service_pb2_grpc
from tests.field_fuzz import MessageGen


class FuzzedNode:
    """A node on the worker stream that registers for real and then sends fuzzed messages
    about the leases it was given (and forged ones), for ``duration_s``."""

    def __init__(self, channel: grpc.Channel, gen: MessageGen, node_id: str) -> None:
        self.gen = gen
        self.rng = gen.rng
        self.leases: list[task_pb2.Lease] = []
        self.ended: grpc.StatusCode | None = None
        self.details = ""
        self.received: Counter[str] = Counter()
        self._outgoing: queue.SimpleQueue[worker_service_pb2.ConnectRequest | None] = (
            queue.SimpleQueue()
        )
        self.register = worker_service_pb2.RegisterNode(
            node_id=node_id, hostname="fuzz", pid=os.getpid(), version="fuzz",
            task_types=["ok"], queues=["fz"], slots=self.rng.choice((1, 2, 8)),
            prefetch=self.rng.choice((0, 4)),
        )  # fmt: skip
        self._outgoing.put(worker_service_pb2.ConnectRequest(register=self.register))
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self._call = stub.Connect(self._requests(), timeout=30)
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[worker_service_pb2.ConnectRequest]:
        while (message := self._outgoing.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for answer in self._call:
                kind = str(answer.WhichOneof("message"))
                self.received[kind] += 1
                if kind == "assignments":
                    self.leases.extend(a.lease for a in answer.assignments.assignments)
            self.ended = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.ended, self.details = exc.code(), exc.details() or ""
        finally:
            self._done.set()

    def run(self, duration_s: float) -> None:
        """Send fuzzed messages every few milliseconds, then close and wait for the end."""
        deadline = time.monotonic() + duration_s
        sequence = itertools.count(1)
        while time.monotonic() < deadline and not self._done.wait(0.01):
            self._outgoing.put(self._next(sequence))
        self._outgoing.put(None)
        self._done.wait(10)

    def _next(self, sequence: Iterator[int]) -> worker_service_pb2.ConnectRequest:
        rng, gen = self.rng, self.gen
        request = worker_service_pb2.ConnectRequest()
        pick = rng.random()
        if pick < 0.7 and self.leases:
            for _ in range(rng.choice((1, 1, 2, 5))):
                self._update(request.updates.updates.add())
        elif pick < 0.97:
            heartbeat = request.heartbeat
            forged = rng.random() < 0.1
            heartbeat.sequence = rng.choice((0, 2**64 - 1)) if forged else next(sequence)
            for lease in rng.sample(self.leases, min(len(self.leases), rng.choice((0, 1, 3)))):
                heartbeat.leases.add().CopyFrom(lease)
            if rng.random() < 0.3:
                gen.fill(heartbeat)
        elif pick < 0.98:
            gen.fill(request)  # anything at all
        elif pick < 0.99:
            request.register.CopyFrom(self.register)  # only the first message may register
            if rng.random() < 0.5:
                gen.fill(request.register)
        else:
            request.leave.reason = rng.choice(("", "bye", "x" * 3000))
        return request

    def _update(self, update: worker_service_pb2.TaskUpdate) -> None:
        rng = self.rng
        lease = rng.choice(self.leases)
        update.lease.task_id = (
            lease.task_id
            if rng.random() > 0.1
            else rng.choice(("", "x", lease.task_id.upper(), lease.task_id + "\x00"))
        )
        update.lease.attempt = (
            lease.attempt if rng.random() > 0.15 else rng.choice((0, lease.attempt + 1, 2**32 - 1))
        )
        kind = rng.choice(("started", "progress", "succeeded", "failed", "released", None))
        if kind is not None:
            outcome = getattr(update, kind)
            outcome.SetInParent()
            if rng.random() < 0.6:
                self.gen.fill(outcome)


def run_together(nodes: Sequence[FuzzedNode], duration_s: float) -> None:
    """Run ``nodes`` at once, each for ``duration_s``, and wait for them all to end."""
    threads = [threading.Thread(target=node.run, args=(duration_s,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
