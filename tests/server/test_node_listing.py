"""ListNodes a page at a time: by count, by size (a node may declare 1,000 task types),
and with bad tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import grpc
import pytest

from dtq.v1 import admin_service_pb2 as pb
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq_client import Client
from dtq_server.coordinator import MAX_PAGE_BYTES
from tests.harness import InProcessCoordinator, RawNode


@pytest.fixture
def stub(coordinator: InProcessCoordinator) -> Iterator[AdminServiceStub]:
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    with grpc.insecure_channel(coordinator.address, options=options) as channel:
        yield AdminServiceStub(channel)


@pytest.fixture
def connect(coordinator: InProcessCoordinator) -> Iterator[list[RawNode]]:
    nodes: list[RawNode] = []
    yield nodes
    for node in nodes:
        node.close()


def listed(stub: AdminServiceStub, page_size: int = 0) -> list[list[str]]:
    pages, token = [], ""
    while True:
        request = pb.ListNodesRequest(page_size=page_size, page_token=token)
        response = stub.ListNodes(request, timeout=10)
        assert response.ByteSize() <= MAX_PAGE_BYTES + 256 * 1024
        pages.append([n.node_id for n in response.nodes])
        token = response.next_page_token
        if not token:
            return pages


def test_nodes_page_by_count_in_id_order(
    stub: AdminServiceStub, coordinator: InProcessCoordinator, connect: list[RawNode]
) -> None:
    ids = [f"n{i:02d}" for i in range(12)]
    for node_id in reversed(ids):
        connect.append(RawNode(coordinator.address, node_id=node_id))
    assert listed(stub, page_size=5) == [ids[:5], ids[5:10], ids[10:]]
    assert listed(stub) == [ids]


def test_nodes_declaring_many_types_come_back_over_pages_under_the_size_limit(
    stub: AdminServiceStub, coordinator: InProcessCoordinator, connect: list[RawNode]
) -> None:
    """Forty-five nodes declaring 1,000 types of 200 characters passed the 8 MiB a
    message may hold: ListNodes failed for good (RESOURCE_EXHAUSTED)."""
    ids = [f"big{i:02d}" for i in range(25)]  # 25 x ~200 KB: two pages at least
    for node_id in ids:
        types = tuple(f"{node_id}.{i:04d}.{'x' * 180}" for i in range(1000))
        connect.append(RawNode(coordinator.address, node_id=node_id, task_types=types))
    pages = listed(stub)
    assert len(pages) >= 2
    assert [n for p in pages for n in p] == ids
    with Client(coordinator.address) as client:  # the client reads every page
        assert [n.node_id for n in client.nodes()] == ids


def token(listing: str, after: list[object]) -> str:
    """A token as the coordinator makes them, with any place in it."""
    return base64.urlsafe_b64encode(
        json.dumps({"listing": listing, "after": after}).encode()
    ).decode()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListNodesRequest(page_size=1001), "page_size"),
        (pb.ListNodesRequest(page_token="not-a-token"), "page_token"),
        # A ListSchedules token, and one whose place is of the wrong types.
        (pb.ListNodesRequest(page_token=token("ListSchedules", ["a"])), "page_token"),
        (pb.ListNodesRequest(page_token=token("ListNodes", [1, 2, 3])), "page_token"),
    ],
)
def test_bad_node_listing_requests_name_the_field(
    stub: AdminServiceStub,
    coordinator: InProcessCoordinator,
    connect: list[RawNode],
    request_: pb.ListNodesRequest,
    field: str,
) -> None:
    connect.append(RawNode(coordinator.address, node_id="only"))
    with pytest.raises(grpc.RpcError) as info:
        stub.ListNodes(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")
