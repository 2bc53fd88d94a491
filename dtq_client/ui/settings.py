"""The web UI's configuration: one frozen dataclass, built by ``dtq-client ui`` or a test."""

from __future__ import annotations

from dataclasses import dataclass

from dtq.tls import is_loopback
from dtq_client.task_requests import MAX_PAGE_SIZE

DEFAULT_LISTEN = "127.0.0.1:8080"
"""Where the UI listens by default: loopback only."""


class UiConfigError(ValueError):
    """A UI setting is invalid, or unsafe without ``insecure``."""


@dataclass(frozen=True)
class UiConfig:
    """How the UI serves and what it shows."""

    listen: str = DEFAULT_LISTEN
    """``HOST:PORT`` to serve on (port 0 picks a free one); IPv6 hosts in brackets."""
    insecure: bool = False
    """Allow a non-loopback ``listen``: the UI has no login of its own, so anyone who
    reaches it acts with the coordinator token it was given."""
    refresh_s: float = 2.0
    """How often an open page fetches its data again."""
    page_size: int = 50
    """Tasks per page of the task list (the coordinator serves at most 1,000 a call)."""
    list_size: int = 100
    """Queues and nodes per page of the overview, and schedules per page of theirs: an
    open page fetches its page again every few seconds, so a coordinator with tens of
    thousands of queues is read a page at a time, not whole."""
    max_shown_bytes: int = 64 * 1024
    """Most bytes of a payload, result or traceback shown on a task page."""

    def __post_init__(self) -> None:
        port = split_listen(self.listen)[1]
        if not 0 <= port <= 65_535:
            raise UiConfigError(f"--listen port must be 0-65535, got {port}")
        if not self.insecure and not is_loopback(self.listen):
            raise UiConfigError(
                f"refusing to serve the UI on non-loopback {self.listen!r}: it has no login, "
                "so anyone who reaches it acts with the coordinator token it was given; "
                "pass --insecure to allow it (behind a proxy that authenticates, say)"
            )
        sizes = (self.refresh_s, self.page_size, self.list_size, self.max_shown_bytes)
        if not all(size > 0 for size in sizes):  # NaN is not > 0 (nor <= 0)
            raise UiConfigError(
                "refresh_s, page_size, list_size and max_shown_bytes must be positive"
            )
        if max(self.page_size, self.list_size) > MAX_PAGE_SIZE:
            raise UiConfigError(f"page_size and list_size must be at most {MAX_PAGE_SIZE}")

    @property
    def host(self) -> str:
        """The host to bind, without IPv6 brackets."""
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port to bind (0: any free one)."""
        return split_listen(self.listen)[1]

    @property
    def on_loopback(self) -> bool:
        """True when the UI serves loopback only (then it also checks the Host header)."""
        return is_loopback(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` as ``(host, port)``; ``[::1]:8080`` gives ``("::1", 8080)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UiConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)
