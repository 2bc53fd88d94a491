"""The web dashboard, ``dtq-client ui``: a client of the coordinator's public gRPC API.

It reads and acts through :class:`dtq_client.Client`, so it works with any
coordinator the client can reach, over TLS and with a token, and does what
that token's role allows. Starlette serves it (uvicorn runs it); Jinja renders
its pages, autoescaped; one small script refreshes them. Everything it serves
is in this package: no CDN, no build step. Install with ``pip install 'dtq[ui]'``.

* :mod:`~dtq_client.ui.settings` - :class:`UiConfig`, and the loopback rule
* :mod:`~dtq_client.ui.gateway` - the coordinator calls, in worker threads
* :mod:`~dtq_client.ui.listing` - the task list's filters and page tokens
* :mod:`~dtq_client.ui.present` - how times, sizes and payloads are shown
* :mod:`~dtq_client.ui.pages` / :mod:`~dtq_client.ui.actions` - the GET and POST routes
* :mod:`~dtq_client.ui.guard` - CSRF, Host check and security headers
* :mod:`~dtq_client.ui.app` - the routes assembled; :mod:`~dtq_client.ui.serve` - uvicorn
* :mod:`~dtq_client.ui.command` - the ``ui`` command

Only ``settings`` and ``command`` load without the ``ui`` extra.
"""

from __future__ import annotations

from dtq_client.ui.settings import DEFAULT_LISTEN, UiConfig, UiConfigError

__all__ = ["DEFAULT_LISTEN", "UiConfig", "UiConfigError"]
