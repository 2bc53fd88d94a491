"""``dtq_server.auth`` and ``dtq_server.tokens`` as pure logic: the file, the header, the roles."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from dtq_server.auth import AUDIT_REFUSALS_PER_S, Audit, Gate, NodeSlots, load_policy
from dtq_server.config import ServerConfig
from dtq_server.errors import CallRateExceeded, CapReached, PermissionDenied, Unauthenticated
from dtq_server.tokens import (
    RELOAD_CHECK_S,
    Identity,
    TokenBook,
    TokenFileError,
    entry,
    parse_tokens,
)

SUBMIT = "/dtq.v1.TaskService/SubmitTask"


def _entry(name: str, role: str, token: str, extra: str = "") -> str:
    return entry(name, role, token) + extra


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    path = tmp_path / "tokens.toml"
    path.write_text(_entry("app", "submitter", "s3cret") + _entry("n", "worker", "w0rker"))
    return Gate(TokenBook(path), load_policy())


def test_a_known_token_is_its_identity(gate: Gate) -> None:
    assert gate.admit(SUBMIT, [("authorization", "Bearer s3cret")]) == Identity(
        "app", "submitter", own_tasks_only=True
    )


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer nope")],
        [("authorization", "bearer s3cret")],
        [("authorization", "Bearer ")],
        [("authorization", "Bearer s3cret"), ("authorization", "Bearer s3cret")],
        [("authorization", b"Bearer s3cret")],
    ],
)
def test_anything_else_is_unauthenticated(gate: Gate, metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(Unauthenticated, match=r"^missing or invalid credentials$"):
        gate.admit(SUBMIT, metadata)


def test_a_role_the_method_does_not_list_is_denied(gate: Gate) -> None:
    with pytest.raises(PermissionDenied, match="a worker token may not call"):
        gate.admit(SUBMIT, [("authorization", "Bearer w0rker")])


def test_health_needs_no_token(gate: Gate) -> None:
    assert gate.admit("/grpc.health.v1.Health/Check", []) is None


def test_health_needs_a_token_of_any_role_when_it_is_not_open(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(_entry("n", "worker", "w0rker"))
    gate = Gate(TokenBook(path), load_policy(), anyone_admitted=False)
    with pytest.raises(Unauthenticated):
        gate.admit("/grpc.health.v1.Health/Check", [])
    identity = gate.admit("/grpc.health.v1.Health/Check", [("authorization", "Bearer w0rker")])
    assert identity is not None and identity.role == "worker"


@pytest.mark.parametrize(
    ("listen", "asked", "open_"),
    [
        ("127.0.0.1:0", None, True),
        ("[::1]:0", None, True),
        ("0.0.0.0:50051", None, False),
        ("0.0.0.0:50051", True, True),
        ("127.0.0.1:0", False, False),
    ],
)
def test_health_is_open_on_loopback_unless_told(
    listen: str, asked: bool | None, open_: bool
) -> None:
    config = ServerConfig(listen=listen, insecure=True, health_unauthenticated=asked)
    assert config.health_is_open is open_


def test_a_served_method_without_a_policy_entry_stops_start_up(gate: Gate) -> None:
    gate.require(load_policy())  # every entry is fine
    with pytest.raises(RuntimeError, match="without an entry"):
        gate.require(["/dtq.v1.TaskService/SomethingNew"])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[tokens]]\nname = 'a'\nrole = 'root'\nsha256 = '" + "0" * 64 + "'\n", "role"),
        ("[[tokens]]\nname = 'a'\nrole = 'admin'\nsha256 = 'abc'\n", "sha256"),
        # Stored with each task its holder submits: PostgreSQL's text holds no NUL.
        (
            '[[tokens]]\nname = "a\\u0000b"\nrole = "admin"\nsha256 = "' + "0" * 64 + '"\n',
            "printable",
        ),
        (_entry("a", "admin", "x") + _entry("a", "admin", "y"), "unique"),
        (_entry("a", "submitter", "x", 'node_id = "n"\n'), "node_id"),
        (_entry("a", "admin", "x", 'token = "x"\n'), "unknown keys"),
        ("tokens = [", "not TOML"),
        (_entry("a", "admin", "x", "calls_per_second = 0\n"), "positive"),
        # TOML has nan and inf, and true is an int to Python: none is a rate.
        (_entry("a", "admin", "x", "calls_per_second = nan\n"), "positive"),
        (_entry("a", "admin", "x", "calls_per_second = inf\n"), "positive"),
        (_entry("a", "admin", "x", "calls_per_second = 5\nburst = nan\n"), "positive"),
        (_entry("a", "admin", "x", "calls_per_second = true\n"), "positive"),
        (_entry("a", "admin", "x", "burst = 3\n"), "burst needs calls_per_second"),
        (_entry("a", "admin", "x", 'queues = ["q"]\n'), "queues is for submitter and worker"),
        (_entry("a", "submitter", "x", "queues = []\n"), "non-empty list of queue names"),
        (_entry("a", "worker", "x", 'queues = ["no spaces"]\n'), "non-empty list of queue"),
        (_entry("a", "worker", "x", 'queues = "q"\n'), "non-empty list of queue names"),
        (_entry("a", "worker", "x", "max_streams = 0\n"), "max_streams must be a positive int"),
        (_entry("a", "worker", "x", "max_nodes = 1.5\n"), "max_nodes must be a positive int"),
        (_entry("a", "submitter", "x", "max_nodes = 2\n"), "max_nodes is for worker tokens"),
        (_entry("a", "worker", "x", "own_tasks = false\n"), "own_tasks is true or false"),
        (_entry("a", "worker", "x", 'certificate = "n"\n'), "one of sha256 .a token. and"),
        ("[[tokens]]\nname = 'a'\nrole = 'worker'\n", "one of sha256 .a token. and"),
        (
            "[[tokens]]\nname = 'a'\nrole = 'worker'\ncertificate = 'n'\n"
            "[[tokens]]\nname = 'b'\nrole = 'admin'\ncertificate = 'n'\n",
            "another entry has certificate 'n'",
        ),
        (_entry("a", "submitter", "x", 'own_tasks = "no"\n'), "own_tasks is true or false"),
    ],
)
def test_a_bad_tokens_file_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(TokenFileError, match=problem):
        parse_tokens(text)


def test_a_queue_scope_is_read_as_a_set_of_queues() -> None:
    [(_, identity)] = parse_tokens(_entry("a", "worker", "x", 'queues = ["b", "a", "b"]\n'))
    assert identity.queues == frozenset({"a", "b"})
    [(_, unscoped)] = parse_tokens(_entry("a", "worker", "x"))
    assert unscoped.queues is None


def test_a_submitter_sees_its_own_tasks_unless_its_entry_says_otherwise() -> None:
    [(_, own)] = parse_tokens(_entry("a", "submitter", "x"))
    [(_, every)] = parse_tokens(_entry("a", "submitter", "x", "own_tasks = false\n"))
    [(_, admin)] = parse_tokens(_entry("a", "admin", "x"))
    assert own.own_tasks_only and not every.own_tasks_only and not admin.own_tasks_only


def test_node_slots_count_node_ids_not_streams() -> None:
    [(_, fleet)] = parse_tokens(_entry("fleet", "worker", "x", "max_nodes = 2\n"))
    slots = NodeSlots()
    a1, a2, b = slots.take(fleet, "a"), slots.take(fleet, "a"), slots.take(fleet, "b")
    with pytest.raises(CapReached, match="fleet already has 2 nodes open"):
        slots.take(fleet, "c")
    a1()  # "a" still has a stream (a reconnect overlapping the old one): still held
    with pytest.raises(CapReached):
        slots.take(fleet, "c")
    a2()
    c = slots.take(fleet, "c")
    b()
    c()
    assert slots.take(None, "any") is not None  # without tokens nothing is counted


def test_an_identity_over_its_call_rate_gets_a_retry_delay(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(_entry("slow", "submitter", "t", "calls_per_second = 2\nburst = 2\n"))
    gate = Gate(TokenBook(path), load_policy())
    header = [("authorization", "Bearer t")]
    gate.admit(SUBMIT, header)
    gate.admit(SUBMIT, header)
    with pytest.raises(CallRateExceeded) as over:
        gate.admit(SUBMIT, header)
    assert 0 < over.value.retry_after_s <= 0.5


def test_a_revocation_a_call_read_first_still_ends_the_streams(tmp_path: Path) -> None:
    asyncio.run(_revocation_read_first(tmp_path))


async def _revocation_read_first(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(_entry("app", "submitter", "s3cret") + _entry("other", "admin", "0ther"))
    book = TokenBook(path)
    gate = Gate(book, load_policy())
    identity = gate.admit(SUBMIT, [("authorization", "Bearer s3cret")])
    stream = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        with gate.revocable(identity):
            await stream  # cancelled by the sweep

    task = asyncio.create_task(serve())
    await asyncio.sleep(0)  # one turn of the loop: the task enters revocable()
    staging = tmp_path / "tokens.new"
    staging.write_text(_entry("other", "admin", "0ther"))
    staging.replace(path)
    book._checked_at -= RELOAD_CHECK_S  # as if a second passed (no waiting in tests)
    with pytest.raises(Unauthenticated):  # a new call reads the new file first
        gate.admit(SUBMIT, [("authorization", "Bearer s3cret")])
    assert gate.sweep() == 1
    with pytest.raises(asyncio.CancelledError):
        await task


def test_admin_calls_and_refusals_are_audited_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(_entry("ops", "admin", "adm1n") + _entry("n", "worker", "w0rker"))
    gate = Gate(TokenBook(path), load_policy())
    purge, peer = "/dtq.v1.TaskService/PurgeTasks", "ipv4:127.0.0.1:5555"
    with structlog.testing.capture_logs() as logs:
        gate.admit(purge, [("authorization", "Bearer adm1n")], peer)
        gate.admit("/dtq.v1.TaskService/GetTask", [("authorization", "Bearer adm1n")], peer)
        with pytest.raises(PermissionDenied):
            gate.admit(purge, [("authorization", "Bearer w0rker")], peer)
        with pytest.raises(Unauthenticated):
            gate.admit(purge, [("authorization", "Bearer guess")], peer)
    assert [(e["event"], e.get("caller"), e.get("code")) for e in logs] == [
        ("audit.admin_call", "ops", None),  # GetTask is not admin-only: not an audit event
        ("audit.refused", "n", "PERMISSION_DENIED"),
        ("audit.refused", None, "UNAUTHENTICATED"),
    ]
    assert all(e["peer"] == peer and e["method"] == purge for e in logs)
    assert not any(secret in repr(logs) for secret in ("adm1n", "w0rker", "guess"))


def test_a_flood_of_refusals_logs_a_bounded_number_of_lines() -> None:
    now = [0.0]
    audit = Audit(clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for _ in range(AUDIT_REFUSALS_PER_S + 15):
            audit.refused("/m", "ipv4:127.0.0.1:1", "UNAUTHENTICATED", None)
        now[0] = 1.0
        audit.refused("/m", "ipv4:127.0.0.1:1", "UNAUTHENTICATED", None)
        for _ in range(AUDIT_REFUSALS_PER_S + 2):
            audit.refused("/m", "ipv4:127.0.0.1:1", "UNAUTHENTICATED", None)
        audit.flush()  # the flood stopped: the gate's sweep still counts the rest
        audit.flush()  # and only once
    events = [e["event"] for e in logs]
    assert events == ["audit.refused"] * AUDIT_REFUSALS_PER_S + [
        "audit.refused_suppressed",
        *["audit.refused"] * AUDIT_REFUSALS_PER_S,
        "audit.refused_suppressed",
    ]
    assert logs[AUDIT_REFUSALS_PER_S]["count"] == 15
    assert logs[-1]["count"] == 3


def test_a_call_without_a_token_is_its_certificate_entry(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        _entry("app", "submitter", "s3cret")
        + "[[tokens]]\nname = 'node-a'\nrole = 'worker'\ncertificate = 'node-a'\n"
    )
    gate = Gate(TokenBook(path), load_policy())
    connect = "/dtq.v1.WorkerService/Connect"
    identity = gate.admit(connect, [], "peer", lambda: [b"other", b"node-a"])
    assert identity is not None and (identity.name, identity.role) == ("node-a", "worker")
    with pytest.raises(PermissionDenied):  # the certificate's role may not submit
        gate.admit(SUBMIT, [], "peer", lambda: [b"node-a"])
    with pytest.raises(Unauthenticated):  # no entry names this certificate
        gate.admit(connect, [], "peer", lambda: [b"stranger"])
    with pytest.raises(Unauthenticated):  # a bad token is not rescued by the certificate
        gate.admit(connect, [("authorization", "Bearer guess")], "peer", lambda: [b"node-a"])
    bearer = [("authorization", "Bearer s3cret")]
    submitter = gate.admit(SUBMIT, bearer, "peer", lambda: [b"node-a"])
    assert submitter is not None and submitter.name == "app"  # a token wins over the certificate
