"""Who may call what: tokens checked against the role policy (RELIABILITY R1, R2, S1-S4).

With ``--tokens-file`` every call is checked before its handler runs, in the
guard that already wraps each method once at registration
(:mod:`dtq_server.servicers.malformed`), so unary calls and streams are checked
alike and nothing is added per call when no tokens file is given. A caller
without a valid ``authorization: Bearer <token>`` gets UNAUTHENTICATED, with
one message whatever was wrong (missing, unknown, revoked, malformed); a valid
token whose role the policy does not list for the method gets
PERMISSION_DENIED. The policy is ``policy.toml`` beside this module, checked
in; a served method it does not name stops the coordinator from starting.

The caller's identity is kept in :data:`CALLER` for the rest of the call, which
is how the worker stream binds a node-bound token to its node id (S4).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path

from dtq_server.errors import PermissionDenied, Unauthenticated
from dtq_server.tokens import ROLES, Identity, TokenBook

POLICY_PATH = Path(__file__).with_name("policy.toml")
ANYONE = "anyone"
"""The policy's word for callers without a token."""
CALLER: ContextVar[Identity | None] = ContextVar("dtq_caller", default=None)
"""The identity of the call being served (None without tokens, or for ``anyone``)."""
_SCHEME = "Bearer "


def load_policy(path: Path = POLICY_PATH) -> dict[str, frozenset[str]]:
    """Method path -> roles allowed; ValueError if an entry names an unknown role."""
    document = tomllib.loads(path.read_text())
    policy: dict[str, frozenset[str]] = {}
    for method, roles in document.items():
        if not isinstance(roles, list) or not set(roles) <= {*ROLES, ANYONE}:
            raise ValueError(f"{path}: {method}: roles must be a list among {(*ROLES, ANYONE)}")
        policy[method] = frozenset(roles)
    return policy


class Gate:
    """Admits a call or says why not."""

    def __init__(self, tokens: TokenBook, policy: Mapping[str, frozenset[str]]) -> None:
        self._tokens = tokens
        self._policy = policy

    def require(self, methods: Iterable[str]) -> None:
        """Fail start-up if a served method has no policy entry (deny by default)."""
        missing = sorted(set(methods) - set(self._policy))
        if missing:
            raise RuntimeError(f"methods without an entry in {POLICY_PATH.name}: {missing}")

    def admit(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Identity | None:
        """The caller's identity (None for an ``anyone`` method); raises
        Unauthenticated or PermissionDenied."""
        roles = self._policy.get(method, frozenset())
        if ANYONE in roles:
            return None
        identity = self._identify(metadata)
        if identity is None:
            raise Unauthenticated()
        if identity.role not in roles:
            raise PermissionDenied(f"a {identity.role} token may not call {method}")
        return identity

    def _identify(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity | None:
        values = [v for k, v in metadata if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        value = values[0]
        if not value.startswith(_SCHEME) or len(value) == len(_SCHEME):
            return None  # "bearer x", "BEARER x", "Bearer " and other schemes alike
        return self._tokens.lookup(value[len(_SCHEME) :])


__all__ = ["ANYONE", "CALLER", "POLICY_PATH", "Gate", "load_policy"]
