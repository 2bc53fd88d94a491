"""Tokens and roles against a real coordinator process (RELIABILITY S1-S4, S6, S7, B6).

S1 and S3 are generated from the compiled protos: every method the coordinator
serves is called without a token and with each role's token, and the answers
must match ``dtq_server/policy.toml`` exactly, so a new RPC without a policy
entry fails here (and the coordinator would not even start).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from dtq.v1 import (
    admin_service_pb2,
    schedule_service_pb2,
    task_pb2,
    task_service_pb2,
    worker_service_pb2,
)
from dtq_client import (
    Client,
    ClientConfig,
    PermissionDenied,
    TaskSpec,
    TaskState,
    Unauthenticated,
)
from dtq_server.auth import ANYONE, REVOCATION_CHECK_S, load_policy
from dtq_server.tokens import entry, hash_token, new_token
from tests.harness import (
    ROOT,
    ServerProcess,
    python_env,
    start_node,
    start_server_with_tokens,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SERVICES = [
    m.DESCRIPTOR.services_by_name[name]
    for m, name in [
        (task_service_pb2, "TaskService"),
        (worker_service_pb2, "WorkerService"),
        (admin_service_pb2, "AdminService"),
        (schedule_service_pb2, "ScheduleService"),
        (health_pb2, "Health"),
        (reflection_pb2, "ServerReflection"),
    ]
]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
ROLES = ("submitter", "worker", "admin")
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@dataclass
class Auth:
    server: ServerProcess
    tokens: dict[str, str]
    """Role (and "node-a" for the node-bound worker, "revoked") -> token."""
    tokens_file: Path


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    root = tmp_path_factory.mktemp("auth")
    revocable = {"revoked": "submitter", "revoked-watch": "submitter", "revoked-node": "worker"}
    tokens = {role: new_token() for role in (*ROLES, "node-a", "limited", *revocable)}
    server = start_server_with_tokens(
        root,
        "".join(entry(role, role, tokens[role]) for role in ROLES)
        + entry("node-a", "worker", tokens["node-a"], node_id="node-a")
        + "".join(entry(name, role, tokens[name]) for name, role in revocable.items())
        + entry("limited", "submitter", tokens["limited"])
        + "calls_per_second = 5\nburst = 5\n",
    )
    yield Auth(server, tokens, root / "tokens.toml")
    server.stop()


def _call(channel: grpc.Channel, path: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """Call ``path`` with a default request; the status, or OK once a first answer came."""
    method: MethodDescriptor = METHODS[path]
    request_class: Any = message_factory.GetMessageClass(method.input_type)
    response_class: Any = message_factory.GetMessageClass(method.output_type)
    kind = ("unary" if not method.client_streaming else "stream") + (
        "_stream" if method.server_streaming else "_unary"
    )
    callable_ = getattr(channel, kind)(
        path,
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    request = request_class() if not method.client_streaming else iter([request_class()])
    try:
        if method.server_streaming:
            call = callable_(request, metadata=metadata, timeout=5)
            try:
                next(call)
            except StopIteration:
                pass
            finally:
                call.cancel()
        else:
            callable_(request, metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_every_served_method_has_a_policyentry() -> None:
    assert set(load_policy()) == set(METHODS)


def test_s1_without_a_token_only_health_answers(auth: Auth) -> None:
    policy = load_policy()
    with grpc.insecure_channel(auth.server.address) as channel:
        codes = {path: _call(channel, path, []) for path in METHODS}
    for path, code in codes.items():
        if ANYONE in policy[path]:
            assert code is grpc.StatusCode.OK, (path, code)
        else:
            assert code is grpc.StatusCode.UNAUTHENTICATED, (path, code)


def test_s1_health_needs_a_token_when_asked(tmp_path: Path) -> None:
    token = new_token()
    server = start_server_with_tokens(
        tmp_path, entry("probe", "worker", token), "--health-needs-token"
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            for path in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
                assert _call(channel, path, []) is grpc.StatusCode.UNAUTHENTICATED
                assert _call(channel, path, _bearer(token)) is grpc.StatusCode.OK
        with Client(server.address, token=token) as client:
            assert client.health() == "SERVING"
    finally:
        server.stop()


def test_s3_every_method_and_role_matches_the_policy(auth: Auth) -> None:
    policy = load_policy()
    mismatches = []
    with grpc.insecure_channel(auth.server.address) as channel:
        for path in METHODS:
            for role in ROLES:
                code = _call(channel, path, _bearer(auth.tokens[role]))
                allowed = role in policy[path] or ANYONE in policy[path]
                if allowed and code in AUTH_CODES:
                    mismatches.append((path, role, "refused", code))
                if not allowed and code is not grpc.StatusCode.PERMISSION_DENIED:
                    mismatches.append((path, role, "not denied", code))
    assert not mismatches


def test_denied_calls_change_nothing(auth: Auth) -> None:
    payload = {"should": "not be stored"}
    for token, refusal in [
        (None, Unauthenticated),
        ("dtq_not-a-token", Unauthenticated),
        (auth.tokens["worker"], PermissionDenied),
    ]:
        with Client(auth.server.address, token=token) as client:
            with pytest.raises(refusal):
                client.submit("echo", payload)
            with pytest.raises(refusal):
                client.submit_many([TaskSpec("echo", payload)] * 3)
    with Client(auth.server.address, token=auth.tokens["admin"]) as admin:
        assert not [t for t in admin.iter_tasks() if t.payload_value() == payload]


@pytest.mark.parametrize(
    "header",
    [
        "missing",
        "unknown",
        "lowercase scheme",
        "uppercase scheme",
        "empty",
        "basic",
        "oversized",
        "two headers",
    ],
)
def test_s2_every_bad_token_gets_the_same_answer(auth: Auth, header: str) -> None:
    good = auth.tokens["submitter"]
    metadata = {
        "missing": [],
        "unknown": _bearer(new_token()),
        "lowercase scheme": [("authorization", f"bearer {good}")],
        "uppercase scheme": [("authorization", f"BEARER {good}")],
        "empty": [("authorization", "Bearer ")],
        "basic": [("authorization", f"Basic {good}")],
        "oversized": _bearer("x" * 8000),  # under the transport's metadata limit
        "two headers": [*_bearer(good), *_bearer(good)],
    }[header]
    path = "/dtq.v1.TaskService/GetTask"
    with grpc.insecure_channel(auth.server.address) as channel:
        assert _call(channel, path, _bearer(good)) not in AUTH_CODES
        stub = channel.unary_unary(
            path,
            request_serializer=task_service_pb2.GetTaskRequest.SerializeToString,
            response_deserializer=task_pb2.Task.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub(task_service_pb2.GetTaskRequest(task_id="x"), metadata=tuple(metadata), timeout=5)
    error: Any = raised.value
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing or invalid credentials"


def _revoke(auth: Auth, name: str) -> float:
    """Take ``name``'s entry out of the tokens file (by rename); returns when."""
    entries = auth.tokens_file.read_text().split("[[tokens]]\n")
    kept = [e for e in entries if e and not e.startswith(f'name = "{name}"\n')]
    assert len(kept) == len(entries) - 2  # the empty head, and the revoked entry
    staging = auth.tokens_file.with_suffix(".new")
    staging.write_text("".join(f"[[tokens]]\n{e}" for e in kept))
    staging.replace(auth.tokens_file)
    return time.monotonic()


def test_s2_a_revoked_token_stops_working_without_a_restart(auth: Auth) -> None:
    revoked = auth.tokens["revoked"]
    with Client(auth.server.address, token=revoked) as client:
        client.submit("echo", 1)
        _revoke(auth, "revoked")

        def refused() -> bool:
            try:
                client.submit("echo", 2)
            except Unauthenticated:
                return True
            return False  # accepted: the coordinator has not read the file again yet

        wait_until(refused, 10, what="the revoked token to be refused")


def test_a_node_and_a_client_with_tokens_run_a_task(auth: Auth, tmp_path: Path) -> None:
    node = start_node(
        auth.server.address, tmp_path, "node-a", env={"DTQ_TOKEN": auth.tokens["node-a"]}
    )
    try:
        with Client(auth.server.address, token=auth.tokens["submitter"]) as client:
            done = client.submit_and_wait(TaskSpec("echo", "with tokens"), timeout_s=30)
            # The token rides on every kind of call: a stream of submits, a batch, a watch.
            with client.submitter() as submitter:
                piped = [submitter.submit("echo", i) for i in range(20)]
            batch = list(client.submit_many([TaskSpec("echo", i) for i in range(20)]))
            last = client.wait(piped[-1].result().task_id, timeout_s=30)
        assert done.state is TaskState.SUCCEEDED
        assert done.result_value() == "with tokens"
        assert len(batch) == 20 and last.state is TaskState.SUCCEEDED
    finally:
        node.stop()


def test_s4_a_node_bound_token_cannot_register_another_node(auth: Auth, tmp_path: Path) -> None:
    node = start_node(
        auth.server.address, tmp_path, "node-b", env={"DTQ_TOKEN": auth.tokens["node-a"]}
    )
    try:
        assert node.wait(30) == 1  # refused: the node stops instead of retrying
    finally:
        node.stop()
    assert "may only register node 'node-a'" in node.log()


def test_s6_no_token_in_plaintext_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="refusing to send a token in plaintext"):
        ClientConfig(address="10.1.2.3:50051", token="dtq_x")
    assert ClientConfig(address="10.1.2.3:50051", token="dtq_x", allow_insecure_token=True)
    assert ClientConfig(address="127.0.0.1:50051", token="dtq_x")


def test_s7_tokens_appear_in_no_log_and_no_database(auth: Auth) -> None:
    with Client(auth.server.address, token=auth.tokens["admin"]) as client:
        assert client.queues() is not None  # something was logged about this caller
    submitter = Client(auth.server.address, token=auth.tokens["submitter"])
    with submitter, pytest.raises(PermissionDenied):
        submitter.queues()  # and about this one (R15)
    lines = auth.server.log().splitlines()
    audit = [line for line in lines if "audit." in line and "_suppressed" not in line]
    assert any("audit.admin_call" in line and "caller=admin" in line for line in audit)
    assert any("audit.refused" in line and "caller=submitter" in line for line in audit)
    assert all("peer=ipv4:127.0.0.1:" in line for line in audit), audit
    places = [auth.server.log_path, *auth.server.data_dir.glob("dtq.sqlite3*")]
    for token in auth.tokens.values():
        for place in places:
            assert token.encode() not in place.read_bytes(), place


def test_dtq_token_prints_a_token_and_an_entry_the_coordinator_reads() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "dtq_server.tokens", "ci-bot", "--role", "worker",
         "--node-id", "ci-1"],
        capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("dtq_") and len(token) >= 40
    assert f'sha256 = "{hash_token(token)}"' in made.stderr
    assert 'node_id = "ci-1"' in made.stderr
    assert token not in made.stderr


def test_dtq_token_scopes_a_token_to_queues_and_refuses_a_bad_name() -> None:
    def dtq_token(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dtq_server.tokens", "billing", "--role", "submitter", *args],
            capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip

    made = dtq_token("--queue", "billing", "--queue", "audit", "--all-tasks")
    assert made.returncode == 0, made.stderr
    assert 'queues = ["audit", "billing"]' in made.stderr
    assert "own_tasks = false" in made.stderr
    refused = dtq_token("--queue", "two words")
    assert refused.returncode == 2 and "queue names" in refused.stderr


def test_a_client_gets_permission_denied_as_its_own_error(auth: Auth) -> None:
    client = Client(auth.server.address, token=auth.tokens["submitter"])
    with client, pytest.raises(PermissionDenied):
        client.queues()


def test_s2_revoking_a_token_ends_the_streams_it_opened(auth: Auth, tmp_path: Path) -> None:
    node = start_node(
        auth.server.address, tmp_path, "revocable", env={"DTQ_TOKEN": auth.tokens["revoked-node"]}
    )
    try:
        with Client(auth.server.address, token=auth.tokens["admin"]) as admin:
            wait_until(
                lambda: any(n.node_id == "revocable" for n in admin.nodes()), 20, what="the node"
            )
        # A task no node runs: a watch on it stays open until something ends it.
        with Client(auth.server.address, token=auth.tokens["revoked-watch"]) as watcher:
            task = watcher.submit("nobody-runs-this", None, queue="revocation")  # its own
        with grpc.insecure_channel(auth.server.address) as channel:
            watch = channel.unary_stream(
                "/dtq.v1.TaskService/WatchTask",
                request_serializer=task_service_pb2.WatchTaskRequest.SerializeToString,
                response_deserializer=task_service_pb2.WatchTaskResponse.FromString,
            )(
                task_service_pb2.WatchTaskRequest(task_id=task.id),
                metadata=tuple(_bearer(auth.tokens["revoked-watch"])),
                timeout=30,
            )
            responses: Iterator[Any] = iter(cast(Any, watch))
            assert next(responses).task.id == task.id  # the stream is open
            revoked_at = _revoke(auth, "revoked-watch")
            _revoke(auth, "revoked-node")
            with pytest.raises(grpc.RpcError) as ended:
                next(responses)
            ended_s = time.monotonic() - revoked_at
        error: Any = ended.value
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error
        # Within the revocation check interval + 1 s (RELIABILITY S2).
        assert ended_s < REVOCATION_CHECK_S + 1.0, ended_s
        assert node.wait(20) == 1  # its stream ended, its reconnect was refused: it stops
        assert "tokens.streams_ended" in auth.server.log()
    finally:
        node.stop()


def _get_task_25_times(address: str, token: str) -> list[Any]:
    """25 GetTask calls as fast as they go: "answered", or the RpcError."""
    outcomes: list[Any] = []
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(
            "/dtq.v1.TaskService/GetTask",
            request_serializer=task_service_pb2.GetTaskRequest.SerializeToString,
            response_deserializer=task_pb2.Task.FromString,
        )
        for _ in range(25):
            try:
                stub(task_service_pb2.GetTaskRequest(task_id="x"), metadata=tuple(_bearer(token)))
                outcomes.append("answered")
            except grpc.RpcError as exc:
                outcomes.append(exc)
    return outcomes


def test_s8_an_identity_over_its_call_rate_is_refused_and_no_one_else(auth: Auth) -> None:
    limited = _get_task_25_times(auth.server.address, auth.tokens["limited"])
    others = _get_task_25_times(auth.server.address, auth.tokens["submitter"])
    refused = [e for e in limited if isinstance(e, grpc.RpcError) and e.code() is _EXHAUSTED]
    # 5 a second with a burst of 5: 25 calls in well under 3 s leave at least 10 over.
    assert len(refused) >= 10, limited
    status = rpc_status.from_call(cast(grpc.Call, refused[0]))
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 0.2  # one call's wait
    assert not [e for e in others if isinstance(e, grpc.RpcError) and e.code() is _EXHAUSTED]


_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
