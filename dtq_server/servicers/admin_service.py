"""AdminService: nodes and queues, for operators."""

from __future__ import annotations

from dtq.v1 import admin_service_pb2 as pb
from dtq.v1 import admin_service_pb2_grpc as pb_grpc
from dtq_server.coordinator import Coordinator
from dtq_server.servicers import paging
from dtq_server.servicers.convert import node_to_proto, queue_to_proto, rate_limit_to_proto
from dtq_server.servicers.errors import Context, unary_boundary


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Converts requests, calls the coordinator, converts responses."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @unary_boundary
    async def ListNodes(
        self, request: pb.ListNodesRequest, context: Context
    ) -> pb.ListNodesResponse:
        nodes, token = paging.page(
            self._coordinator.nodes(request.include_gone),
            lambda s: [s.node.node_id, s.connected_at_wall, s.id],
            node_to_proto,
            request.page_size,
            request.page_token,
            "ListNodes",
        )
        return pb.ListNodesResponse(nodes=nodes, next_page_token=token)

    @unary_boundary
    async def DrainNode(
        self, request: pb.DrainNodeRequest, context: Context
    ) -> pb.DrainNodeResponse:
        session = self._coordinator.drain(request.node_id)
        return pb.DrainNodeResponse(node=node_to_proto(session))

    @unary_boundary
    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Context
    ) -> pb.ListQueuesResponse:
        queues, token = await paging.read_page(
            self._coordinator.queue_admin.queues,
            lambda q: [q.name],
            queue_to_proto,
            request.page_size,
            request.page_token,
            "ListQueues",
        )
        return pb.ListQueuesResponse(queues=queues, next_page_token=token)

    @unary_boundary
    async def UpdateQueue(
        self, request: pb.UpdateQueueRequest, context: Context
    ) -> pb.UpdateQueueResponse:
        queue = await self._coordinator.queue_admin.update_queue(
            request.name,
            paused=request.paused if request.HasField("paused") else None,
            max_running=request.max_running if request.HasField("max_running") else None,
            rate_limit=request.rate_limit if request.HasField("rate_limit") else None,
            max_depth=request.max_depth if request.HasField("max_depth") else None,
        )
        return pb.UpdateQueueResponse(queue=queue_to_proto(queue))

    @unary_boundary
    async def SetRateLimit(
        self, request: pb.SetRateLimitRequest, context: Context
    ) -> pb.SetRateLimitResponse:
        limit = await self._coordinator.queue_admin.set_rate_limit(
            request.key, request.per_second, request.burst
        )
        if limit is None:
            return pb.SetRateLimitResponse()
        return pb.SetRateLimitResponse(rate_limit=rate_limit_to_proto(limit))

    @unary_boundary
    async def ListRateLimits(
        self, request: pb.ListRateLimitsRequest, context: Context
    ) -> pb.ListRateLimitsResponse:
        limits, token = await paging.read_page(
            self._coordinator.queue_admin.rate_limits,
            lambda x: [x.key],
            rate_limit_to_proto,
            request.page_size,
            request.page_token,
            "ListRateLimits",
        )
        return pb.ListRateLimitsResponse(rate_limits=limits, next_page_token=token)
