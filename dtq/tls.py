"""TLS for DTQ's connections: which files, and the gRPC credentials made from them.

The coordinator serves plaintext only on loopback unless told ``--insecure``
(RELIABILITY R4): a queue reachable from the network carries task payloads and
results, and anyone who can reach it can submit, cancel or pose as a node. With
``--tls-cert`` and ``--tls-key`` it serves TLS (gRPC's minimum is TLS 1.2);
with ``--tls-client-ca`` too, every client and node must present a certificate
signed by that CA (mTLS), checked in the handshake before any call runs.

Nodes and clients trust the CA in ``--tls-ca`` (or the system's roots when
only client files are given), present ``--tls-client-cert``/``--tls-client-key``
for mTLS, and may check the coordinator's certificate against another name than
the address's host (``--tls-server-name``), as when connecting by IP to a
certificate issued for a DNS name. A node or client reads its files when it
starts; the coordinator also reads its own again when they change (a renewed
certificate is served from the next connection on, see :class:`_Reloader`).
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

log = structlog.get_logger(__name__)


class TlsConfigError(ValueError):
    """TLS files that cannot be used together, or that cannot be read."""


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a node or client connects over TLS."""

    ca: Path | None = None
    """PEM bundle of the CAs to trust; None: the system's roots."""
    cert: Path | None = None
    """PEM certificate to present (mTLS), with ``key``."""
    key: Path | None = None
    """PEM private key of ``cert``."""
    server_name: str | None = None
    """The name to check the coordinator's certificate against, if not the address's host."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("a client certificate and its key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files (read and checked now)."""
        _check(ssl.PROTOCOL_TLS_CLIENT, self.ca, self.cert, self.key)
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )

    def files(self) -> tuple[Path, ...]:
        """The files this configuration reads."""
        return tuple(f for f in (self.ca, self.cert, self.key) if f is not None)

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel arguments TLS adds (the name override)."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


@dataclass(frozen=True, slots=True)
class ServerTls:
    """How the coordinator serves TLS."""

    cert: Path
    """PEM certificate chain of the coordinator."""
    key: Path
    """PEM private key of ``cert``."""
    client_ca: Path | None = None
    """PEM bundle of the CAs client certificates must chain to; set, it requires them."""
    node_identity: bool = False
    """With ``client_ca``: a node may register only a node id its client certificate
    names (a subject alternative name, or the common name when it has none)."""

    def __post_init__(self) -> None:
        if self.node_identity and self.client_ca is None:
            raise ValueError("binding node ids to client certificates needs a client CA (mTLS)")

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials from the files (read and checked now), which follow
        the files when they change (see :class:`_Reloader`)."""
        reloader = _Reloader(self)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial,
            # grpc-stubs types the fetcher without its documented None ("no change").
            reloader,  # type: ignore[arg-type]
            require_client_authentication=self.client_ca is not None,
        )

    def certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        """The files as gRPC's certificate configuration (read and checked now)."""
        _check(ssl.PROTOCOL_TLS_SERVER, self.client_ca, self.cert, self.key)
        key, cert = _read(self.key), _read(self.cert)
        assert key is not None and cert is not None
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=_read(self.client_ca)
        )

    def files(self) -> tuple[Path, ...]:
        """The files this configuration reads."""
        return (
            (self.cert, self.key)
            if self.client_ca is None
            else (self.cert, self.key, self.client_ca)
        )


class _Reloader:
    """Serves renewed certificates without a restart (R4's "should").

    gRPC calls it before every TLS handshake. It compares the files' stat
    (inode, size, modification time) with those of the files it loaded, so an
    unchanged set costs a few ``stat`` calls, and a renewal (an atomic rename,
    or a rewrite in place) is served from the next connection on. A set that
    does not load (half written, or a key that does not match) is logged once
    and the current one stays; a later change is tried again. Connections
    already open keep the certificate they were made with.
    """

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._loaded = stamp(tls.files())
        self.initial = tls.certificate_configuration()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            now = stamp(self._tls.files())
            if now == self._loaded:
                return None
            self._loaded = now
            try:
                configuration = self._tls.certificate_configuration()
            except TlsConfigError as exc:
                log.warning("tls.reload_failed", error=str(exc))
                return None
            log.info("tls.reloaded", files=[str(f) for f in self._tls.files()])
            return configuration


Stamp = tuple[tuple[int, int, int], ...] | None
"""What a set of files looks like to ``stat``: it changes when any of them is replaced."""


def stamp(files: tuple[Path, ...]) -> Stamp:
    """The files' inode, size and modification time; None while one is missing.

    A few ``stat`` calls: cheap enough to look before every connection attempt.
    """
    try:
        stats = [f.stat() for f in files]
    except OSError:
        return None  # mid-rotation: try again next time
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


GRPC_SCHEMES = ("ipv4:", "ipv6:", "dns:///", "dns:")


def is_loopback(address: str) -> bool:
    """True if ``host:port`` binds only loopback (127.0.0.0/8, ::1 or ``localhost``).

    A gRPC target naming several coordinators (``ipv4:127.0.0.1:1,127.0.0.1:2``)
    is loopback if every address in it is.
    """
    for scheme in GRPC_SCHEMES:
        if address.startswith(scheme):
            return all(map(_is_loopback_address, address[len(scheme) :].split(",")))
    return _is_loopback_address(address)


def _is_loopback_address(address: str) -> bool:
    host = address.rpartition(":")[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" / "0.0.0.0"-style wildcards resolved elsewhere


def check_token_transport(
    token: str | None, tls: ClientTls | None, address: str, allow_insecure: bool
) -> None:
    """Refuse to send a token in plaintext beyond loopback (RELIABILITY R5, S6).

    On a network a plaintext token can be read, and then used, by anyone on the
    path; ``allow_insecure`` is for networks protected by other means.
    """
    if token is not None and tls is None and not allow_insecure and not is_loopback(address):
        raise TlsConfigError(
            f"refusing to send a token in plaintext to {address}: use TLS, "
            "or allow it explicitly on a network you trust"
        )


def _check(protocol: int, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """Load the files as OpenSSL would, so a bad one is named at start-up.

    gRPC only says "Failed to bind" (or fails each handshake) for a PEM it
    cannot use; Python's ``ssl`` says which file and why, and that the
    certificate and the key belong together.
    """
    for path in (ca, cert, key):
        _read(path)  # names a file that is missing or unreadable
    context = ssl.SSLContext(protocol)
    try:
        if ca is not None:
            context.load_verify_locations(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(str(p) for p in (ca, cert, key) if p is not None)
        raise TlsConfigError(f"unusable TLS files ({files}): {exc}") from None


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


__all__ = [
    "ClientTls",
    "ServerTls",
    "Stamp",
    "TlsConfigError",
    "check_token_transport",
    "is_loopback",
    "stamp",
]
