"""The contract's RPCs, read from the compiled descriptors (so a new RPC is fuzzed too)."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor, message_factory

import dtq.v1


@dataclass(frozen=True)
class Rpc:
    """One method of a dtq.v1 service, as the descriptor describes it."""

    path: str
    request: type[Any]
    client_streaming: bool
    server_streaming: bool


def every_rpc() -> list[Rpc]:
    """Every method of every service in the compiled ``dtq.v1`` protos (new RPCs included)."""
    found: list[Rpc] = []
    for module_info in pkgutil.iter_modules(dtq.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"dtq.v1.{module_info.name}")
        file: descriptor.FileDescriptor = module.DESCRIPTOR
        for service in file.services_by_name.values():
            for method in service.methods:
                found.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        message_factory.GetMessageClass(method.input_type),
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return sorted(found, key=lambda rpc: rpc.path)
