"""The flags ``dtq-worker`` and ``dtq-client`` share to reach a coordinator: TLS (see
:mod:`dtq.tls`) and the bearer token (see ``dtq_server.tokens``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from dtq.tls import ClientTls, TlsConfigError

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def connect_options(command: F) -> F:
    """Add ``--tls``, ``--tls-ca``, ``--tls-client-cert``, ``--tls-client-key``, ``--token``
    and ``--tls-server-name`` (each with its ``DTQ_*`` variable) to ``command``, which
    receives them as ``tls`` (a :class:`~dtq.tls.ClientTls` or None) and ``token``."""

    @functools.wraps(command)
    def with_connection(
        *args: Any,
        tls_on: bool,
        tls_ca: Path | None,
        tls_client_cert: Path | None,
        tls_client_key: Path | None,
        tls_server_name: str | None,
        **kwargs: Any,
    ) -> Any:
        try:
            tls = client_tls(tls_on, tls_ca, tls_client_cert, tls_client_key, tls_server_name)
        except TlsConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        return command(*args, tls=tls, **kwargs)

    options = [
        click.option(
            "--tls",
            "tls_on",
            envvar="DTQ_TLS",
            is_flag=True,
            default=False,
            help="Connect over TLS, trusting the system's CAs (implied by the other --tls-* "
            "flags). [env: DTQ_TLS]",
        ),
        click.option(
            "--tls-ca",
            envvar="DTQ_TLS_CA",
            default=None,
            type=_FILE,
            help="PEM CA bundle to trust instead of the system's. [env: DTQ_TLS_CA]",
        ),
        click.option(
            "--tls-client-cert",
            envvar="DTQ_TLS_CLIENT_CERT",
            default=None,
            type=_FILE,
            help="PEM certificate to present (mTLS). [env: DTQ_TLS_CLIENT_CERT]",
        ),
        click.option(
            "--tls-client-key",
            envvar="DTQ_TLS_CLIENT_KEY",
            default=None,
            type=_FILE,
            help="PEM private key of --tls-client-cert. [env: DTQ_TLS_CLIENT_KEY]",
        ),
        click.option(
            "--token",
            envvar="DTQ_TOKEN",
            default=None,
            help="Bearer token, for a coordinator that checks tokens (prefer the "
            "variable: arguments show in process lists). [env: DTQ_TOKEN]",
        ),
        click.option(
            "--tls-server-name",
            envvar="DTQ_TLS_SERVER_NAME",
            default=None,
            help="Check the coordinator's certificate against this name instead of the "
            "address's host. [env: DTQ_TLS_SERVER_NAME]",
        ),
    ]
    decorated: Callable[..., Any] = with_connection
    for option in reversed(options):
        decorated = option(decorated)
    return cast(F, decorated)


def client_tls(
    tls_on: bool,
    tls_ca: Path | None,
    tls_client_cert: Path | None,
    tls_client_key: Path | None,
    tls_server_name: str | None,
) -> ClientTls | None:
    """The :class:`~dtq.tls.ClientTls` the flags ask for; None for plaintext."""
    if not (tls_on or tls_ca or tls_client_cert or tls_client_key or tls_server_name):
        return None
    return ClientTls(tls_ca, tls_client_cert, tls_client_key, tls_server_name)


__all__ = ["client_tls", "connect_options"]
