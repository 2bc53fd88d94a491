"""The UI's HTTP defences, as one ASGI middleware in front of every route.

* **CSRF**: a request that changes something (any method but GET/HEAD/OPTIONS)
  must carry ``X-DTQ-UI: 1``. The page's ``fetch()`` sets it; a cross-site form
  cannot set a header at all, and a cross-site ``fetch()`` that tries needs a
  CORS preflight this server never grants. A browser's ``Origin`` or
  ``Sec-Fetch-Site`` saying the request comes from another site is refused too.
* **DNS rebinding**: on loopback, the ``Host`` header must name a loopback
  address, so a page of ``evil.example`` that re-points its name at 127.0.0.1
  reaches nothing (its requests say ``Host: evil.example``).
* **Headers** on every answer: a Content-Security-Policy allowing only this
  server's own scripts and styles (no inline script, no frames, no other
  hosts), ``nosniff``, no referrer, and no caching of live data.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtq.tls import is_loopback

CSRF_HEADER = "x-dtq-ui"
"""The header every state-changing request must carry (value ``1``)."""

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


class Guard:
    """Refuses cross-site writes and foreign Host headers; adds the security headers."""

    def __init__(self, app: ASGIApp, *, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("cache-control", "no-store")
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.check_host and not is_loopback(host):
            # Not JSON, not HTML: a rebound page learns nothing from this answer.
            return PlainTextResponse("unknown Host: this UI answers on loopback names only", 421)
        if scope["method"] in _SAFE_METHODS:
            return None
        if headers.get(CSRF_HEADER) != "1":
            return _forbidden(f"refused: a change needs the {CSRF_HEADER.upper()} header")
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return _forbidden("refused: a cross-site request")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return _forbidden("refused: the request's Origin is not this UI")
        return None


def _forbidden(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=403)
