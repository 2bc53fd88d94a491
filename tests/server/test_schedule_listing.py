"""ListSchedules a page at a time: by count, by size, and with bad tokens."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from dtq.v1 import schedule_service_pb2 as pb
from dtq.v1 import task_pb2
from dtq.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from dtq_client import Client
from dtq_server.coordinator import MAX_PAGE_BYTES
from tests.harness import InProcessCoordinator

YEARLY = "0 0 1 1 *"  # never ticks during a test


@pytest.fixture
def stub(coordinator: InProcessCoordinator) -> Iterator[ScheduleServiceStub]:
    with grpc.insecure_channel(
        coordinator.address, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    ) as channel:
        yield ScheduleServiceStub(channel)


def create(stub: ScheduleServiceStub, name: str, payload: bytes = b"{}") -> None:
    task = task_pb2.TaskSpec(type="echo", queue="listed", payload=task_pb2.Payload(data=payload))
    schedule = pb.Schedule(name=name, cron=YEARLY, task=task)
    stub.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule), timeout=10)


def pages(stub: ScheduleServiceStub, page_size: int = 0) -> list[list[str]]:
    listed, token = [], ""
    while True:
        request = pb.ListSchedulesRequest(page_size=page_size, page_token=token)
        response = stub.ListSchedules(request, timeout=10)
        listed.append([s.name for s in response.schedules])
        token = response.next_page_token
        if not token:
            return listed


def test_pages_follow_each_other_by_name(stub: ScheduleServiceStub) -> None:
    names = [f"s{i:02d}" for i in range(25)]
    for name in reversed(names):
        create(stub, name)
    assert pages(stub, page_size=10) == [names[:10], names[10:20], names[20:]]
    assert pages(stub) == [names]  # 0: up to 1,000
    assert pages(stub, page_size=25) == [names]  # exactly full: no empty page after it


def test_a_page_ends_before_its_templates_pass_the_size_limit(
    stub: ScheduleServiceStub, coordinator: InProcessCoordinator
) -> None:
    """Ten templates with payloads near 1 MiB made one response of 9 MB, over the 8 MiB
    a message may hold: the listing failed for good (RESOURCE_EXHAUSTED)."""
    big = b'"' + b"x" * 900_000 + b'"'
    names = [f"big{i}" for i in range(10)]
    for name in names:
        create(stub, name, big)
    listed, token = [], ""
    while True:
        response = stub.ListSchedules(pb.ListSchedulesRequest(page_token=token), timeout=10)
        assert response.ByteSize() <= MAX_PAGE_BYTES + 64 * 1024
        listed += [s.name for s in response.schedules]
        token = response.next_page_token
        if not token:
            break
    assert listed == names
    with Client(coordinator.address) as client:  # the client reads every page
        assert [s.name for s in client.list_schedules()] == names


def test_a_listing_goes_on_past_a_schedule_deleted_meanwhile(stub: ScheduleServiceStub) -> None:
    for name in ("a", "b", "c", "d"):
        create(stub, name)
    first = stub.ListSchedules(pb.ListSchedulesRequest(page_size=2), timeout=10)
    assert [s.name for s in first.schedules] == ["a", "b"]
    stub.DeleteSchedule(pb.DeleteScheduleRequest(name="b"), timeout=10)
    request = pb.ListSchedulesRequest(page_size=2, page_token=first.next_page_token)
    rest = stub.ListSchedules(request, timeout=10)
    assert [s.name for s in rest.schedules] == ["c", "d"]
    assert rest.next_page_token == ""


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListSchedulesRequest(page_size=1001), "page_size"),
        (pb.ListSchedulesRequest(page_token="not-a-token"), "page_token"),
        (pb.ListSchedulesRequest(page_token="dGFza3M6MTI="), "page_token"),  # "tasks:12"
    ],
)
def test_bad_listing_requests_name_the_field(
    stub: ScheduleServiceStub, request_: pb.ListSchedulesRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ListSchedules(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")
