"""TLS and mTLS between a real coordinator, a real node and the client (RELIABILITY S5, R4).

Certificates come from ``trustme`` (a throwaway CA per module). Two coordinator
processes serve the whole module: one with TLS, one with mTLS (client
certificates required). Each refusal is checked against a call that succeeds on
the same coordinator, so none can pass because the coordinator is down.
"""

from __future__ import annotations

import datetime
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from dtq.tls import ClientTls
from dtq_client import (
    Client,
    PermissionDenied,
    RetryPolicy,
    TaskSpec,
    TaskState,
    Unauthenticated,
    Unavailable,
)
from tests.harness import (
    ROOT,
    Proc,
    ServerProcess,
    python_env,
    start_node,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Pems:
    """A CA's certificate and one certificate it issued, as files."""

    ca: Path
    cert: Path
    key: Path


def _issue(ca: trustme.CA, directory: Path, *names: str, **dates: datetime.datetime) -> Pems:
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names, **dates)  # type: ignore[arg-type]
    pems = Pems(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(pems.ca))
    leaf.cert_chain_pems[0].write_to_path(str(pems.cert))
    leaf.private_key_pem.write_to_path(str(pems.key))
    return pems


@dataclass(frozen=True)
class Pki:
    server: Pems
    """The coordinator's certificate, for 127.0.0.1 and localhost."""
    client: Pems
    """A client certificate from the same CA."""
    expired: Pems
    """A client certificate from the same CA that expired yesterday."""
    other: Pems
    """A CA of its own and a certificate for 127.0.0.1 from it."""
    elsewhere: Pems
    """A certificate from the right CA for another name only."""
    billing: Pems
    """A client certificate from the same CA for "billing-app"."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    return Pki(
        server=_issue(ca, root / "server", "127.0.0.1", "localhost"),
        client=_issue(ca, root / "client", "node-a"),
        expired=_issue(
            ca,
            root / "expired",
            "node-a",
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        ),
        other=_issue(other_ca, root / "other", "127.0.0.1"),
        elsewhere=_issue(ca, root / "elsewhere", "coordinator.example"),
        billing=_issue(ca, root / "billing", "billing-app"),
    )


def _serve(directory: Path, cert: Pems, *extra: str) -> ServerProcess:
    # At INFO gRPC core logs each failed handshake (the mTLS test reads those lines).
    return start_server(
        directory,
        "--tls-cert", str(cert.cert), "--tls-key", str(cert.key), *extra,
        env={"GRPC_VERBOSITY": "INFO"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    server = _serve(tmp_path_factory.mktemp("tls"), pki.server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    server = _serve(
        tmp_path_factory.mktemp("mtls"), pki.server, "--tls-client-ca", str(pki.server.ca)
    )
    yield server
    server.stop()


def _client(address: str, tls: ClientTls | None) -> Client:
    # One attempt and a short deadline: a refused handshake fails at once.
    return Client(address, tls=tls, timeout_s=5.0, retry=RetryPolicy(attempts=1))


def _answers(address: str, tls: ClientTls | None) -> bool:
    """True if a call through a client with ``tls`` gets an answer; False on UNAVAILABLE."""
    with _client(address, tls) as client:
        try:
            client.queues()
        except Unavailable:
            return False
        return True


def test_a_node_and_a_client_run_a_task_over_mtls(
    mtls_server: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    node: Proc = start_node(
        mtls_server.address,
        tmp_path,
        "tls-node",
        "--tls-ca",
        str(pki.server.ca),
        "--tls-client-cert",
        str(pki.client.cert),
        "--tls-client-key",
        str(pki.client.key),
    )
    try:
        tls = ClientTls(ca=pki.server.ca, cert=pki.client.cert, key=pki.client.key)
        with _client(mtls_server.address, tls) as client:
            done = client.submit_and_wait(TaskSpec("echo", {"over": "mtls"}), timeout_s=30)
        assert done.state is TaskState.SUCCEEDED
        assert done.result_value() == {"over": "mtls"}
    finally:
        node.stop()


def test_the_cli_connects_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    args = [sys.executable, "-m", "dtq_client", "--address", tls_server.address, "--retries", "0"]
    trusted = subprocess.run(
        [*args, "--tls-ca", str(pki.server.ca), "queues"],
        capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    plaintext = subprocess.run(
        [*args, "queues"],
        capture_output=True,
        text=True,
        env=python_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert plaintext.returncode == 3  # RPC error
    assert "UNAVAILABLE" in plaintext.stderr


def test_a_plaintext_client_is_refused_by_a_tls_coordinator(
    tls_server: ServerProcess, pki: Pki
) -> None:
    assert _answers(tls_server.address, ClientTls(ca=pki.server.ca))
    assert not _answers(tls_server.address, None)


def test_a_client_trusting_another_ca_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    assert not _answers(tls_server.address, ClientTls(ca=pki.other.ca))


def test_a_certificate_for_another_name_is_refused_unless_that_name_is_expected(
    tmp_path: Path, pki: Pki
) -> None:
    server = _serve(tmp_path / "data", pki.elsewhere)
    try:
        assert not _answers(server.address, ClientTls(ca=pki.elsewhere.ca))
        assert _answers(
            server.address, ClientTls(ca=pki.elsewhere.ca, server_name="coordinator.example")
        )
    finally:
        server.stop()


@pytest.mark.parametrize("presented", ["none", "other_ca", "expired"])
def test_mtls_refuses_a_client_without_a_good_certificate(
    mtls_server: ServerProcess, pki: Pki, presented: str
) -> None:
    good = ClientTls(ca=pki.server.ca, cert=pki.client.cert, key=pki.client.key)
    bad = {
        "none": ClientTls(ca=pki.server.ca),
        "other_ca": ClientTls(ca=pki.server.ca, cert=pki.other.cert, key=pki.other.key),
        "expired": ClientTls(ca=pki.server.ca, cert=pki.expired.cert, key=pki.expired.key),
    }[presented]
    assert _answers(mtls_server.address, good)
    assert not _answers(mtls_server.address, bad)
    # gRPC logs each failed handshake on one line, with the reason and no stack trace.
    reason = {
        "none": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "other_ca": "unable to get local issuer certificate",
        "expired": "certificate has expired",
    }[presented]
    wait_until(lambda: reason in mtls_server.log(), 5, what=f"the server to log {reason!r}")
    line = next(x for x in mtls_server.log().splitlines() if reason in x)
    assert "Handshake failed" in line
    assert "Traceback" not in mtls_server.log()


def test_plaintext_on_a_network_address_is_refused_unless_insecure(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "dtq_server", "--listen", "0.0.0.0:0",
        "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    refused = subprocess.run(
        command, capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "refusing to serve plaintext on 0.0.0.0:0" in refused.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_half_a_client_certificate_is_a_usage_error(pki: Pki, tmp_path: Path) -> None:
    node = subprocess.run(
        [
            sys.executable, "-m", "dtq_worker", "tests.handlers:registry",
            "--tls-client-cert", str(pki.client.cert),
        ],
        capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert node.returncode == 2
    assert "a client certificate and its key go together" in node.stderr


def _replace(target: Path, source: Path) -> None:
    """Swap ``target``'s content for ``source``'s at once, as renewal tools do (rename)."""
    staging = target.with_name(target.name + ".new")
    staging.write_bytes(source.read_bytes())
    staging.replace(target)


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path, pki: Pki) -> None:
    live = Pems(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    for name in ("ca", "cert", "key"):
        _replace(getattr(live, name), getattr(pki.server, name))
    server = _serve(tmp_path / "data", live)
    try:
        assert _answers(server.address, ClientTls(ca=pki.server.ca))
        assert not _answers(server.address, ClientTls(ca=pki.other.ca))
        # A file that does not load is logged, and the current certificate stays. (gRPC
        # asks for the files before each handshake, so each check opens a connection.)
        _replace(live.cert, tmp_path / "ca.pem")  # a CA certificate: not the key's
        wait_until(
            lambda: (
                _answers(server.address, ClientTls(ca=pki.server.ca))
                and "tls.reload_failed" in server.log()
            ),
            10,
            what="the failed reload, with the current certificate still served",
        )
        # The renewal (another CA's, to tell them apart): served from the next connection.
        _replace(live.key, pki.other.key)
        _replace(live.cert, pki.other.cert)
        wait_until(
            lambda: _answers(server.address, ClientTls(ca=pki.other.ca)),
            10,
            what="the renewed certificate to be served",
        )
        assert not _answers(server.address, ClientTls(ca=pki.server.ca))
        assert "tls.reloaded" in server.log()
        assert server.alive()
    finally:
        server.stop()


def test_with_node_identity_a_certificate_registers_only_the_node_it_names(
    tmp_path: Path, pki: Pki
) -> None:
    server = _serve(
        tmp_path / "data", pki.server,
        "--tls-client-ca", str(pki.server.ca), "--tls-node-identity",
    )  # fmt: skip
    node_tls = (
        "--tls-ca", str(pki.server.ca),
        "--tls-client-cert", str(pki.client.cert), "--tls-client-key", str(pki.client.key),
    )  # fmt: skip
    impostor = start_node(server.address, tmp_path, "node-b", *node_tls)  # the cert names node-a
    named = start_node(server.address, tmp_path, "node-a", *node_tls)
    try:
        assert impostor.wait(30) == 1  # refused: the node stops instead of retrying
        assert "'node-b' is not a name in this node's client certificate" in impostor.log()
        tls = ClientTls(ca=pki.server.ca, cert=pki.client.cert, key=pki.client.key)
        with _client(server.address, tls) as client:
            done = client.submit_and_wait(TaskSpec("echo", "as node-a"), timeout_s=30)
        assert done.state is TaskState.SUCCEEDED and done.node_id == "node-a"
    finally:
        impostor.stop()
        named.stop()
        server.stop()


def test_node_identity_without_client_certificates_is_a_usage_error(
    tmp_path: Path, pki: Pki
) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "dtq_server", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path), "--tls-cert", str(pki.server.cert),
         "--tls-key", str(pki.server.key), "--tls-node-identity"],
        capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--tls-node-identity needs --tls-client-ca" in refused.stderr


def test_a_certificate_entry_gives_its_role_to_calls_without_a_token(
    tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "tokens.toml").write_text(
        '[[tokens]]\nname = "node-a"\nrole = "worker"\ncertificate = "node-a"\n'
        '[[tokens]]\nname = "billing"\nrole = "submitter"\ncertificate = "billing-app"\n'
    )
    server = _serve(
        tmp_path / "data", pki.server,
        "--tls-client-ca", str(pki.server.ca), "--tokens-file", str(tmp_path / "tokens.toml"),
    )  # fmt: skip
    node = start_node(
        server.address, tmp_path, "node-a",
        "--tls-ca", str(pki.server.ca),
        "--tls-client-cert", str(pki.client.cert), "--tls-client-key", str(pki.client.key),
    )  # fmt: skip

    def client(pems: Pems) -> Client:
        return _client(server.address, ClientTls(ca=pki.server.ca, cert=pems.cert, key=pems.key))

    try:
        with client(pki.billing) as billing:  # a submitter by its certificate
            done = billing.submit_and_wait(TaskSpec("echo", "by certificate"), timeout_s=30)
            assert done.state is TaskState.SUCCEEDED and done.submitted_by == "billing"
            with pytest.raises(PermissionDenied):
                billing.queues()  # admin only
        with client(pki.client) as worker, pytest.raises(PermissionDenied):
            worker.submit("echo", "a worker's certificate may not submit")
        with client(pki.elsewhere) as stranger, pytest.raises(Unauthenticated):
            stranger.submit("echo", "a certificate no entry names")
    finally:
        node.stop()
        server.stop()


def test_a_node_reconnects_with_its_renewed_certificate(
    mtls_server: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    cert.write_bytes(pki.expired.cert.read_bytes())  # every handshake fails with this one
    key.write_bytes(pki.expired.key.read_bytes())
    node = start_node(
        mtls_server.address, tmp_path, "renewing", "--tls-ca", str(pki.server.ca),
        "--tls-client-cert", str(cert), "--tls-client-key", str(key),
    )  # fmt: skip
    tls = ClientTls(ca=pki.server.ca, cert=pki.client.cert, key=pki.client.key)
    try:
        with _client(mtls_server.address, tls) as client:

            def registered() -> bool:
                return any(n.node_id == "renewing" for n in client.nodes())

            wait_until(lambda: "coordinator.unreachable" in node.log(), 30, what="a refusal")
            assert not registered()
            _replace(key, pki.client.key)  # renewed, as cert-manager does: by rename
            _replace(cert, pki.client.cert)
            wait_until(registered, 30, what="the node to register with its renewed certificate")
        assert "tls.reloaded" in node.log()
    finally:
        node.stop()


def test_metrics_are_served_over_https_with_the_coordinator_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    server = _serve(tmp_path / "data", pki.server, "--metrics-listen", "127.0.0.1:0")
    try:
        wait_until(lambda: "metrics.serving" in server.log(), 30, what="the metrics server")
        found = re.search(r"metrics\.serving\s+port=(\d+)", server.log())
        assert found is not None
        url = f"https://127.0.0.1:{found.group(1)}/metrics"
        trusted = ssl.create_default_context(cafile=str(pki.server.ca))
        with urllib.request.urlopen(url, context=trusted, timeout=10) as response:
            assert "dtq_up 1.0" in response.read().decode()
        with pytest.raises(urllib.error.URLError):  # the certificate is checked as for gRPC
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
    finally:
        server.stop()
