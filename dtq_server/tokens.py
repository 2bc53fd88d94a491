"""Bearer tokens and client certificates: who a caller is (RELIABILITY R1, R3, S5).

The coordinator reads ``--tokens-file``, a TOML file of entries::

    [[tokens]]
    name = "billing-app"        # who it is, for logs and errors
    role = "submitter"          # submitter | worker | admin (see policy.toml)
    sha256 = "9f86d081..."      # hex SHA-256 of the token; the token itself is never stored
    # certificate = "billing-app"  # instead of sha256: an mTLS client certificate holding
    #                              # this name (a SAN) is this caller when it sends no token
    node_id = "node-a"          # workers only, optional: the one node id it may register
    queues = ["billing"]        # optional: the only queues it may submit to, read or serve
    own_tasks = false           # submitters only, optional: see others' tasks too (default true)
    calls_per_second = 1000     # optional: RESOURCE_EXHAUSTED beyond it (burst = ... too)
    max_streams = 100           # optional: streams open at once (watches, submit streams, nodes)
    max_nodes = 20              # workers only, optional: distinct node ids connected at once

``dtq-token NAME --role ROLE`` makes a token (256 random bits) and prints the
entry for it. A caller sends ``authorization: Bearer <token>``; the token is
hashed and compared with every entry in constant time (``hmac.compare_digest``),
so neither a timing nor a log line tells anything about the tokens. The file is
read again when it changes (checked at most once a second), so adding or
revoking a token needs no restart; a file that no longer parses is logged and
the tokens read before stay in force. With mTLS, a ``certificate`` entry gives
its role to calls that carry no token from a client certificate naming it (a
call with a token is the token's, valid or not); removing the entry revokes it
as removing a token does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import structlog

from dtq_server.validation import QUEUE_RE

log = structlog.get_logger(__name__)

ROLES = ("submitter", "worker", "admin")
RELOAD_CHECK_S = 1.0
"""How often, at most, the file's stat is compared with the one read."""
MAX_TOKEN_CHARS = 512
"""Longer bearer values are refused unhashed (RELIABILITY B6)."""
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYS = {
    "name", "role", "sha256", "certificate", "node_id", "queues", "own_tasks",
    "calls_per_second", "burst", "max_streams", "max_nodes",
}  # fmt: skip


class TokenFileError(ValueError):
    """The tokens file cannot be read or does not describe tokens."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    name: str
    role: str
    node_id: str | None = None
    """For a worker token bound to one node: the only node id it may register."""
    digest: bytes = field(default=b"", compare=False, repr=False)
    """The SHA-256 of the token it came from: revoking that token ends its streams."""
    queues: frozenset[str] | None = None
    """The only queues this identity may use (see :mod:`dtq_server.scopes`); None: any."""
    own_tasks_only: bool = False
    """True for a submitter that sees only the tasks it submitted (the default)."""
    calls_per_second: float | None = field(default=None, compare=False)
    """Most calls a second this identity may make (streams count once); None: no limit."""
    burst: float | None = field(default=None, compare=False)
    """Calls it may make at once after a quiet spell (default: one second's worth)."""
    max_streams: int | None = field(default=None, compare=False)
    """Most streams it may hold open at once (RELIABILITY R7); None: no cap."""
    max_nodes: int | None = field(default=None, compare=False)
    """A worker token: most distinct node ids connected with it at once; None: no cap."""
    certificate: str | None = field(default=None, compare=False)
    """For an identity given by an mTLS client certificate: the name it must hold."""


def hash_token(token: str) -> str:
    """The hex SHA-256 stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe."""
    return "dtq_" + secrets.token_urlsafe(32)


def entry(
    name: str,
    role: str,
    token: str,
    node_id: str | None = None,
    queues: Collection[str] | None = None,
    own_tasks: bool = True,
) -> str:
    """The tokens-file entry for ``token`` (its hash, never the token)."""
    # JSON strings are valid TOML basic strings: quotes in a name stay quoted.
    text = f"[[tokens]]\nname = {json.dumps(name)}\nrole = {json.dumps(role)}\n"
    text += f"sha256 = {json.dumps(hash_token(token))}\n"
    if node_id is not None:
        text += f"node_id = {json.dumps(node_id)}\n"
    if queues is not None:
        text += f"queues = {json.dumps(sorted(queues))}\n"
    if not own_tasks:
        text += "own_tasks = false\n"
    return text


def parse_tokens(text: str, source: str = "tokens file") -> list[tuple[bytes, Identity]]:
    """The (digest, identity) entries of a tokens file; TokenFileError naming the problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{source}: not TOML: {exc}") from None
    entries: list[tuple[bytes, Identity]] = []
    names: set[str] = set()
    certificates: set[str] = set()
    for index, raw in enumerate(document.get("tokens", [])):
        where = f"{source}: tokens[{index}]"
        if not isinstance(raw, dict):
            raise TokenFileError(f"{where} is not a table")
        digest, identity = _parse_entry(raw, where)
        if identity.name in names:
            raise TokenFileError(f"{where}: name must be a unique non-empty string")
        if identity.certificate is not None and identity.certificate in certificates:
            raise TokenFileError(f"{where}: another entry has certificate {identity.certificate!r}")
        names.add(identity.name)
        if identity.certificate is not None:
            certificates.add(identity.certificate)
        entries.append((digest, identity))
    return entries


def _parse_entry(entry: dict[str, Any], where: str) -> tuple[bytes, Identity]:
    unknown = set(entry) - _KEYS
    if unknown:
        raise TokenFileError(f"{where}: unknown keys {sorted(unknown)}")
    name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256")
    certificate, node_id = entry.get("certificate"), entry.get("node_id")
    # Printable: the name is stored with every task its holder submits, and PostgreSQL's
    # text cannot hold a NUL (each such submit failed, and flipped the health).
    if not isinstance(name, str) or not name or not name.isprintable():
        raise TokenFileError(f"{where}: name must be a unique non-empty printable string")
    if role not in ROLES:
        raise TokenFileError(f"{where}: role must be one of {', '.join(ROLES)}")
    if (digest is None) == (certificate is None):
        raise TokenFileError(f"{where}: give one of sha256 (a token) and certificate (a name)")
    if digest is not None and (not isinstance(digest, str) or not _HEX_SHA256.fullmatch(digest)):
        raise TokenFileError(f"{where}: sha256 must be 64 lower-case hex digits")
    if certificate is not None and (not isinstance(certificate, str) or not certificate):
        raise TokenFileError(f"{where}: certificate must be the name a client certificate holds")
    if node_id is not None and (role != "worker" or not isinstance(node_id, str)):
        raise TokenFileError(f"{where}: node_id is a string, for worker tokens only")
    queues = _queues(entry.get("queues"), role, where)
    own_tasks = entry.get("own_tasks", True)
    if "own_tasks" in entry and (role != "submitter" or not isinstance(own_tasks, bool)):
        raise TokenFileError(f"{where}: own_tasks is true or false, for submitter tokens only")
    rate, burst = entry.get("calls_per_second"), entry.get("burst")
    for key, value in (("calls_per_second", rate), ("burst", burst)):
        if value is not None and not _is_positive_number(value):
            raise TokenFileError(f"{where}: {key} must be a positive number")
    if burst is not None and rate is None:
        raise TokenFileError(f"{where}: burst needs calls_per_second")
    max_streams, max_nodes = entry.get("max_streams"), entry.get("max_nodes")
    for key, value in (("max_streams", max_streams), ("max_nodes", max_nodes)):
        if value is not None and (type(value) is not int or value < 1):
            raise TokenFileError(f"{where}: {key} must be a positive integer")
    if max_nodes is not None and role != "worker":
        raise TokenFileError(f"{where}: max_nodes is for worker tokens only")
    if isinstance(certificate, str):
        stored = certificate_digest(certificate)
    else:
        stored = bytes.fromhex(str(digest))
    identity = Identity(
        name, role, node_id, stored, queues, role == "submitter" and own_tasks,
        _float(rate), _float(burst), max_streams, max_nodes, certificate,
    )  # fmt: skip
    return stored, identity


def certificate_digest(name: str) -> bytes:
    """What stands for a certificate identity where a token's hash would (revocation)."""
    return hashlib.sha256(b"certificate\0" + name.encode()).digest()


def _queues(value: object, role: str, where: str) -> frozenset[str] | None:
    """A ``queues`` scope as read: None when absent; TokenFileError when malformed."""
    if value is None:
        return None
    if role == "admin":
        raise TokenFileError(f"{where}: queues is for submitter and worker tokens")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(q, str) and QUEUE_RE.fullmatch(q) for q in value)
    ):
        raise TokenFileError(f"{where}: queues must be a non-empty list of queue names")
    return frozenset(value)


def _by_certificate(entries: list[tuple[bytes, Identity]]) -> dict[bytes, Identity]:
    """The certificate identities by the name their certificate holds."""
    return {i.certificate.encode(): i for _, i in entries if i.certificate is not None}


def _is_positive_number(value: object) -> bool:
    """A finite number above 0: TOML reads ``nan`` and ``inf`` as floats, and ``true``
    is an int to Python; NaN passed a ``<= 0`` check and made a bucket no call fits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 < value < math.inf


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


class TokenBook:
    """The tokens of a file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            self._stamp = self._stat()
            self._entries = parse_tokens(path.read_text(), str(path))
            self._certificates = _by_certificate(self._entries)
        except OSError as exc:
            raise TokenFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        self._checked_at = time.monotonic()
        self.generation = 0
        """How many times the file was read again since start-up."""

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Identity | None:
        """The identity ``token`` belongs to, or None."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        self.refresh()
        return self._find(hashlib.sha256(token.encode()).digest())

    @property
    def has_certificates(self) -> bool:
        """True if some entry is given by a client certificate rather than a token."""
        return bool(self._certificates)

    def lookup_certificate(self, names: Iterable[bytes]) -> Identity | None:
        """The identity of a client certificate holding ``names`` (its SANs), or None."""
        self.refresh()
        certificates = self._certificates
        return next((certificates[n] for n in names if n in certificates), None)

    def holds(self, digest: bytes) -> bool:
        """True while the token with this SHA-256 is in the file."""
        return self._find(digest) is not None

    def _find(self, digest: bytes) -> Identity | None:
        found = None
        for stored, identity in self._entries:  # every entry: the time says nothing
            if hmac.compare_digest(digest, stored):
                found = identity
        return found

    def refresh(self, force: bool = False) -> bool:
        """Read the file again if it changed (looked at most every ``RELOAD_CHECK_S``
        unless ``force``); True if the tokens changed."""
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_S:
            return False
        with self._lock:
            self._checked_at = now
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return False
                self._stamp = stamp
                entries = parse_tokens(self._path.read_text(), str(self._path))
                self._entries, self._certificates = entries, _by_certificate(entries)
            except (OSError, TokenFileError) as exc:
                log.warning("tokens.reload_failed", error=str(exc))
                return False
            self.generation += 1
            log.info("tokens.reloaded", tokens=len(self._entries))
            return True

    def _stat(self) -> tuple[int, int, int]:
        st = self._path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--node-id", default=None, help="Workers: the only node id the token may register.")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="The only queues the token may use (repeat for more); default: any.",
)
@click.option(
    "--all-tasks",
    is_flag=True,
    help="Submitters: see every task (of its queues), not only those it submitted.",
)
def main(
    name: str, role: str, node_id: str | None, queues: tuple[str, ...], all_tasks: bool
) -> None:
    """Make a token for NAME: the token on stdout, its tokens-file entry on stderr.

    Give the token to the caller (DTQ_TOKEN) and append the entry to the
    coordinator's --tokens-file; the file never holds the token itself.
    """
    if node_id is not None and role != "worker":
        raise click.UsageError("--node-id is for worker tokens")
    token = new_token()
    if all_tasks and role != "submitter":
        raise click.UsageError("--all-tasks is for submitter tokens")
    text = entry(name, role, token, node_id, queues or None, own_tasks=not all_tasks)
    try:
        parse_tokens(text)  # the entry it prints is one the coordinator reads
    except TokenFileError as exc:
        raise click.UsageError(str(exc).split(": ", 2)[-1]) from None
    click.echo(token)
    click.echo(text, err=True, nl=False)


if __name__ == "__main__":
    main()

__all__ = ["ROLES", "Identity", "TokenBook", "TokenFileError", "entry", "hash_token", "new_token"]
