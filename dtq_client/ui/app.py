"""The ASGI application: routes, static files, and the guard in front of them all.

===============================  ======  ==============================================
path                             method  what
===============================  ======  ==============================================
``/``                            GET     overview: health, a page of queues and one of
                                         nodes (``queues``, ``nodes``: their tokens)
``/tasks``                       GET     task list (``queue``, ``state``, ``type``,
                                         ``header``, ``page_token``)
``/tasks/{id}``                  GET     one task
``/tasks/{id}/cancel``           POST    cancel it
``/tasks/{id}/retry``            POST    retry it (failed or cancelled)
``/groups/{id}``                 GET     a group's state, counts and members
``/schedules``                   GET     a page of schedules (``page_token``)
``/schedules/{name}/pause``      POST    pause the schedule
``/schedules/{name}/resume``     POST    resume it
``/queues/{name}/pause``         POST    pause the queue
``/queues/{name}/resume``        POST    resume it
``/queues/{name}/cancel-queued`` POST    cancel every queued task of the queue
``/queues/{name}/retry-failed``  POST    retry every failed task of the queue
``/nodes/{id}/drain``            POST    drain the node
``/static/...``                  GET     the stylesheet, the script, the icon
===============================  ======  ==============================================
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from dtq_client.client import Client
from dtq_client.ui.actions import Actions
from dtq_client.ui.gateway import Gateway
from dtq_client.ui.guard import Guard
from dtq_client.ui.pages import Pages
from dtq_client.ui.settings import UiConfig
from dtq_client.ui.templating import create_templates


def create_app(client: Client, config: UiConfig) -> ASGIApp:
    """The UI for the coordinator ``client`` talks to; the caller keeps and closes ``client``."""
    gateway = Gateway(client, config)
    pages = Pages(gateway, create_templates(), config)
    actions = Actions(gateway)
    post = ["POST"]
    routes = [
        Route("/", pages.overview, methods=["GET"]),
        Route("/tasks", pages.tasks, methods=["GET"]),
        Route("/tasks/{task_id}", pages.task, methods=["GET"]),
        Route("/tasks/{task_id}/cancel", actions.cancel_task, methods=post),
        Route("/tasks/{task_id}/retry", actions.retry_task, methods=post),
        Route("/groups/{group_id}", pages.group, methods=["GET"]),
        Route("/schedules", pages.schedules, methods=["GET"]),
        Route("/schedules/{name}/pause", actions.pause_schedule, methods=post),
        Route("/schedules/{name}/resume", actions.resume_schedule, methods=post),
        Route("/queues/{name}/pause", actions.pause_queue, methods=post),
        Route("/queues/{name}/resume", actions.resume_queue, methods=post),
        Route("/queues/{name}/cancel-queued", actions.cancel_queued, methods=post),
        Route("/queues/{name}/retry-failed", actions.retry_failed, methods=post),
        Route("/nodes/{node_id}/drain", actions.drain_node, methods=post),
        Mount("/static", StaticFiles(packages=[("dtq_client.ui", "static")]), name="static"),
    ]
    # The guard wraps everything, Starlette's own error pages included, so every
    # answer carries the security headers.
    return Guard(Starlette(routes=routes), check_host=config.on_loopback)
