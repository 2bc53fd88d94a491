"""The client's configuration: one frozen dataclass, built by the caller or the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from dtq.tls import ClientTls, check_token_transport
from dtq_client import tracing

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""Where the coordinator listens by default."""


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried after a retryable status (exponential backoff with jitter)."""

    attempts: int = 5
    """Total attempts per call, the first included; 1 disables retries."""
    initial_backoff_s: float = 0.1
    """Pause before the first retry; it doubles per retry, plus up to this much jitter."""
    max_backoff_s: float = 2.0
    """Longest pause between two attempts."""
    total_s: float = 30.0
    """No retry starts after this long since the first attempt."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.total_s < 0:
            raise ValueError("backoff and total durations must not be negative")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a :class:`dtq_client.Client` needs to know."""

    address: str = DEFAULT_ADDRESS
    """The coordinator, ``host:port``."""
    tls: ClientTls | None = None
    """Connect over TLS (presenting a certificate for mTLS); None: plaintext."""
    token: str | None = field(default=None, repr=False)
    """Bearer token sent with every call, for a coordinator that checks tokens."""
    allow_insecure_token: bool = False
    """Send the token in plaintext to a non-loopback address (refused otherwise)."""
    timeout_s: float = 10.0
    """Deadline of each unary call (each retry gets a fresh one)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    watch_renew_s: float = 300.0
    """A watch stream is reopened after this long, so even an unbounded wait
    never holds a call without a deadline."""
    submit_batch_size: int = 1_000
    """Most tasks sent in one SubmitTasks call."""
    submit_batch_bytes: int = 3 * 1024 * 1024
    """Approximate largest SubmitTasks request, below the 4 MiB send limit."""
    propagate_trace: bool = False
    """Write the caller's OpenTelemetry context into each submitted task's headers
    (see :mod:`dtq_client.tracing`; needs ``opentelemetry-api``)."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.watch_renew_s <= 0:
            raise ValueError("timeout_s and watch_renew_s must be positive")
        if self.submit_batch_size < 1 or self.submit_batch_bytes < 1:
            raise ValueError("submit batch limits must be positive")
        check_token_transport(self.token, self.tls, self.address, self.allow_insecure_token)
        if self.propagate_trace:
            tracing.require()
