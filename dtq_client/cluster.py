"""The client's calls about the cluster: nodes, queues, rate limits and health.

:class:`ClusterCalls` are :class:`~dtq_client.Client`'s, :class:`AsyncClusterCalls`
:class:`~dtq_client.AsyncClient`'s: the same calls, each running the plan that
:mod:`dtq_client.cluster_requests` makes for it.
"""

from __future__ import annotations

import functools

from dtq_client import cluster_requests
from dtq_client.calls import AsyncCalls, Calls
from dtq_client.models import Node, Page, QueueStats, RateLimit


class ClusterCalls(Calls):
    """Nodes, queues, rate limits and health: the :class:`~dtq_client.Client` methods."""

    # --- nodes ---------------------------------------------------------------------------

    def nodes(self, include_gone: bool = False) -> list[Node]:
        """Worker nodes ordered by id; ``include_gone`` adds recently dead or departed ones
        (fetched a page at a time)."""
        return self._run_pages(functools.partial(cluster_requests.nodes_page, include_gone))

    def nodes_page(
        self, page_token: str = "", page_size: int = 0, include_gone: bool = False
    ) -> Page[Node]:
        """One page of :meth:`nodes` (``page_size`` 0: the coordinator's largest, 1,000):
        for callers that page themselves, a dashboard say. Pass the page's
        ``next_page_token`` for the next one."""
        plan = cluster_requests.nodes_page(include_gone, page_token, page_size)
        return self._run(plan)

    def drain(self, node_id: str) -> Node:
        """Stop dispatching to a node and ask it to finish its tasks and exit.

        :class:`NodeNotFound` if no live node has that id.
        """
        return self._run(cluster_requests.drain(node_id))

    # --- queues --------------------------------------------------------------------------

    def queues(self) -> list[QueueStats]:
        """Task counts and settings of every queue that has tasks or settings, ordered by name
        (fetched a page at a time)."""
        return self._run_pages(cluster_requests.queues_page)

    def queues_page(self, page_token: str = "", page_size: int = 0) -> Page[QueueStats]:
        """One page of :meth:`queues` (``page_size`` 0: the coordinator's largest, 1,000);
        pass the page's ``next_page_token`` for the next one."""
        return self._run(cluster_requests.queues_page(page_token, page_size))

    def pause_queue(self, name: str) -> QueueStats:
        """Pause a queue: it keeps accepting submits but dispatches nothing. Durable.

        Tasks already running carry on. Returns the queue with its new settings.
        """
        return self._run(cluster_requests.set_queue_paused(name, True))

    def resume_queue(self, name: str) -> QueueStats:
        """Resume a paused queue; returns the queue with its new settings."""
        return self._run(cluster_requests.set_queue_paused(name, False))

    def set_queue_limit(self, name: str, max_running: int) -> QueueStats:
        """Cap the tasks of a queue leased or running at once, across all nodes; 0 removes the cap.

        Durable. Lowering it below what is running stops nothing: it holds
        back new dispatches until the queue is under it. Returns the queue.
        """
        return self._run(cluster_requests.set_queue_limit(name, max_running))

    def set_queue_rate_limit(self, name: str, per_second: float) -> QueueStats:
        """Dispatch at most ``per_second`` tasks of a queue per second, across all nodes.

        A token bucket holding one second's worth of tokens (at least one);
        0 removes the limit. Durable. Returns the queue with its new settings.
        """
        return self._run(cluster_requests.set_queue_rate_limit(name, per_second))

    def set_queue_max_depth(self, name: str, max_depth: int) -> QueueStats:
        """Refuse submits that would take a queue past ``max_depth`` unfinished tasks.

        Counted are tasks queued (also those waiting for a retry or their
        ``run_at``), leased or running; 0 removes the limit. A refused submit
        stores nothing and raises :class:`~dtq_client.QueueFull`. Durable.
        Lowering it below the current depth removes nothing. Returns the queue.
        """
        return self._run(cluster_requests.set_queue_max_depth(name, max_depth))

    # --- rate limits ---------------------------------------------------------------------

    def set_rate_limit(self, key: str, per_second: float, *, burst: int | None = None) -> RateLimit:
        """Limit the tasks carrying rate key ``key`` to ``per_second``, across queues and nodes.

        A token bucket of ``burst`` tokens (default: one second's worth, at
        least 1): after a quiet period up to ``burst`` tasks start at once.
        Replaces the key's previous limit; durable. Use :meth:`delete_rate_limit`
        to remove one (``per_second`` must be positive here).
        """
        return self._run(cluster_requests.set_rate_limit(key, per_second, burst))

    def delete_rate_limit(self, key: str) -> None:
        """Remove the rate limit of ``key`` (its tasks are no longer throttled); no-op if none."""
        self._run(cluster_requests.delete_rate_limit(key))

    def rate_limits(self) -> list[RateLimit]:
        """Every configured rate-key limit, ordered by key (fetched a page at a time)."""
        return self._run_pages(cluster_requests.rate_limits_page)

    # --- health --------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The standard gRPC health status: ``SERVING``, ``NOT_SERVING``, ...

        ``service`` "" asks about the coordinator as a whole.
        """
        return self._run(cluster_requests.health(service))


class AsyncClusterCalls(AsyncCalls):
    """The same calls for :class:`~dtq_client.AsyncClient`, each a coroutine."""

    async def nodes(self, include_gone: bool = False) -> list[Node]:
        """See :meth:`Client.nodes <dtq_client.Client.nodes>`."""
        return await self._run_pages(functools.partial(cluster_requests.nodes_page, include_gone))

    async def nodes_page(
        self, page_token: str = "", page_size: int = 0, include_gone: bool = False
    ) -> Page[Node]:
        """See :meth:`Client.nodes_page <dtq_client.Client.nodes_page>`."""
        plan = cluster_requests.nodes_page(include_gone, page_token, page_size)
        return await self._run(plan)

    async def drain(self, node_id: str) -> Node:
        """See :meth:`Client.drain <dtq_client.Client.drain>`."""
        return await self._run(cluster_requests.drain(node_id))

    async def queues(self) -> list[QueueStats]:
        """See :meth:`Client.queues <dtq_client.Client.queues>`."""
        return await self._run_pages(cluster_requests.queues_page)

    async def queues_page(self, page_token: str = "", page_size: int = 0) -> Page[QueueStats]:
        """See :meth:`Client.queues_page <dtq_client.Client.queues_page>`."""
        plan = cluster_requests.queues_page(page_token, page_size)
        return await self._run(plan)

    async def pause_queue(self, name: str) -> QueueStats:
        """See :meth:`Client.pause_queue <dtq_client.Client.pause_queue>`."""
        return await self._run(cluster_requests.set_queue_paused(name, True))

    async def resume_queue(self, name: str) -> QueueStats:
        """See :meth:`Client.resume_queue <dtq_client.Client.resume_queue>`."""
        return await self._run(cluster_requests.set_queue_paused(name, False))

    async def set_queue_limit(self, name: str, max_running: int) -> QueueStats:
        """See :meth:`Client.set_queue_limit <dtq_client.Client.set_queue_limit>`."""
        return await self._run(cluster_requests.set_queue_limit(name, max_running))

    async def set_queue_rate_limit(self, name: str, per_second: float) -> QueueStats:
        """See :meth:`Client.set_queue_rate_limit <dtq_client.Client.set_queue_rate_limit>`."""
        return await self._run(cluster_requests.set_queue_rate_limit(name, per_second))

    async def set_queue_max_depth(self, name: str, max_depth: int) -> QueueStats:
        """See :meth:`Client.set_queue_max_depth <dtq_client.Client.set_queue_max_depth>`."""
        return await self._run(cluster_requests.set_queue_max_depth(name, max_depth))

    async def set_rate_limit(
        self, key: str, per_second: float, *, burst: int | None = None
    ) -> RateLimit:
        """See :meth:`Client.set_rate_limit <dtq_client.Client.set_rate_limit>`."""
        return await self._run(cluster_requests.set_rate_limit(key, per_second, burst))

    async def delete_rate_limit(self, key: str) -> None:
        """See :meth:`Client.delete_rate_limit <dtq_client.Client.delete_rate_limit>`."""
        await self._run(cluster_requests.delete_rate_limit(key))

    async def rate_limits(self) -> list[RateLimit]:
        """See :meth:`Client.rate_limits <dtq_client.Client.rate_limits>`."""
        return await self._run_pages(cluster_requests.rate_limits_page)

    async def health(self, service: str = "") -> str:
        """See :meth:`Client.health <dtq_client.Client.health>`."""
        return await self._run(cluster_requests.health(service))
