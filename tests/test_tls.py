"""``dtq.tls``: which addresses count as loopback, and which TLS settings go together."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq.tls import ClientTls, ServerTls, TlsConfigError, is_loopback
from dtq_server.config import ServerConfig


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "127.8.9.10:1",
        "[::1]:50051",
        "localhost:50051",
        "ipv4:127.0.0.1:1,127.0.0.2:2",
        "ipv6:[::1]:50051",
        "dns:///localhost:50051",
    ],
)
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:50051",
        "[::]:50051",
        "10.0.0.5:50051",
        "example.org:50051",
        ":50051",
        "ipv4:127.0.0.1:1,10.0.0.5:2",
    ],
)
def test_addresses_others_can_reach(address: str) -> None:
    assert not is_loopback(address)


def test_plaintext_beyond_loopback_needs_insecure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"refusing to serve plaintext on 0\.0\.0\.0:0"):
        ServerConfig(listen="0.0.0.0:0", data_dir=tmp_path)
    assert ServerConfig(listen="0.0.0.0:0", data_dir=tmp_path, insecure=True).insecure
    tls = ServerTls(tmp_path / "cert.pem", tmp_path / "key.pem")
    assert ServerConfig(listen="0.0.0.0:0", data_dir=tmp_path, tls=tls).tls == tls


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="go together"):
        ClientTls(cert=tmp_path / "cert.pem")
    with pytest.raises(TlsConfigError, match="go together"):
        ClientTls(key=tmp_path / "key.pem")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"cannot read .*missing\.pem"):
        ClientTls(ca=tmp_path / "missing.pem").credentials()


def test_the_expected_name_becomes_a_channel_option() -> None:
    assert ClientTls().channel_options() == []
    assert ClientTls(server_name="coordinator.example").channel_options() == [
        ("grpc.ssl_target_name_override", "coordinator.example")
    ]


def test_a_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"unusable TLS files .*garbage\.pem"):
        ServerTls(garbage, garbage).credentials()
    with pytest.raises(TlsConfigError, match=r"unusable TLS files .*garbage\.pem"):
        ClientTls(ca=garbage).credentials()
