"""Pure coordinator logic: retry delays, validation, the task board."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dtq_server.board import Key, TaskBoard
from dtq_server.errors import InvalidArgument
from dtq_server.models import ActiveTask, Registration, TaskState
from dtq_server.ratelimit import RateLimiter, TokenBucket
from dtq_server.ready import ReadyPicker, ReadyQueue
from dtq_server.registry import NodeRegistry
from dtq_server.retry import retry_delay_s
from dtq_server.store.listing import fitting
from dtq_server.validation import SpecInput, validate_specs, validate_task_id
from tests.harness import server_config

CONFIG = server_config(Path("unused"))


def test_retry_delay_doubles_with_additive_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for failures, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (20, 5.0)]:
        delays = [retry_delay_s(failures, 0.1, 5.0, rng) for _ in range(200)]
        assert min(delays) >= nominal
        assert max(delays) <= nominal * 1.25
        assert max(delays) > min(delays)


def spec(**fields: object) -> SpecInput:
    values: dict[str, object] = {
        "type": "echo",
        "queue": "",
        "payload": b"{}",
        "content_type": "",
        "max_attempts": 0,
        "idempotency_key": "",
        "retry_backoff_s": None,
    }
    values.update(fields)
    return SpecInput(**values)  # type: ignore[arg-type]


def test_validation_fills_defaults() -> None:
    [task] = validate_specs([spec()], CONFIG, batch=False)
    assert (task.queue, task.content_type, task.max_attempts) == ("default", "application/json", 3)
    assert task.idempotency_key is None


def test_validation_names_every_bad_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_specs(
            [spec(), spec(type="", queue="bad queue", max_attempts=1000, retry_backoff_s=-1.0)],
            CONFIG,
            batch=True,
        )
    fields = [field for field, _ in info.value.violations]
    assert fields == [
        "tasks[1].type",
        "tasks[1].queue",
        "tasks[1].max_attempts",
        "tasks[1].retry_backoff",
    ]


def test_validation_rejects_repeated_keys_in_a_batch_and_empty_batches() -> None:
    with pytest.raises(InvalidArgument, match="repeats"):
        validate_specs([spec(idempotency_key="a"), spec(idempotency_key="a")], CONFIG, batch=True)
    with pytest.raises(InvalidArgument, match="tasks"):
        validate_specs([], CONFIG, batch=True)


def test_same_spec_same_hash_different_payload_different_hash() -> None:
    a, b, c = validate_specs([spec(), spec(), spec(payload=b"[]")], CONFIG, batch=True)
    assert a.spec_hash == b.spec_hash != c.spec_hash
    assert a.id != b.id


def test_task_ids_must_be_uuids() -> None:
    assert validate_task_id("6E59C592-E6D3-44C9-9A47-5AD47C2DBB93") == (
        "6e59c592-e6d3-44c9-9a47-5ad47c2dbb93"
    )
    with pytest.raises(InvalidArgument):
        validate_task_id("x" * 10_000)


def active(seq: int, queue: str = "default", type_: str = "echo", due_at: float | None = None):
    return ActiveTask(
        id=f"t{seq}", seq=seq, type=type_, queue=queue, state=TaskState.QUEUED, attempt=0,
        max_attempts=3, failures=0, lease_expiries=0, retry_backoff_s=None, due_at=due_at,
    )  # fmt: skip


def test_board_is_fifo_across_the_types_of_a_queue() -> None:
    board = TaskBoard()
    for task in [active(3), active(1, type_="other"), active(2, type_="third"), active(4)]:
        board.track(task, now=0.0)
    keys = {("default", "echo"), ("default", "other")}
    popped = [board.pop_ready(keys) for _ in range(4)]
    assert [t.seq if t else None for t in popped] == [1, 3, 4, None]
    third = board.pop_ready({("default", "third")})
    assert third is not None and third.seq == 2


def test_board_takes_the_queues_a_node_serves_in_turn() -> None:
    """A backlog in one queue does not hold back another's tasks (round robin over the
    queues, the least recently served first); each queue keeps its own order."""
    board = TaskBoard()
    for seq in range(1, 6):
        board.track(active(seq, queue="bulk"), now=0.0)
    board.track(active(6, queue="emails"), now=0.0)
    board.track(active(7, queue="emails", type_="other"), now=0.0)
    keys = {("bulk", "echo"), ("emails", "echo"), ("emails", "other")}
    assert [board.pop_ready(keys).seq for _ in range(3)] == [1, 6, 2]  # type: ignore[union-attr]
    # A queue that gets a task with none unfinished goes ahead of those served lately.
    board.track(active(8, queue="reports"), now=0.0)
    keys.add(("reports", "echo"))
    popped = [t.seq for t in iter(lambda: board.pop_ready(keys), None)]
    assert popped == [8, 7, 3, 4, 5]


def test_a_queue_that_keeps_getting_one_task_does_not_starve_a_backlog() -> None:
    """A queue emptied by each pick and refilled before the next takes its turn, no
    more: its place in line is kept while it has unfinished (leased) tasks."""
    board = TaskBoard()
    for seq in range(1, 4):
        board.track(active(seq, queue="bulk"), now=0.0)
    keys = {("bulk", "echo"), ("trickle", "echo")}
    taken = []
    for seq in range(10, 13):  # one trickle task before every second pick
        board.track(active(seq, queue="trickle"), now=0.0)
        taken += [board.pop_ready(keys).seq, board.pop_ready(keys).seq]  # type: ignore[union-attr]
    assert taken == [1, 10, 2, 11, 3, 12]


def test_board_skips_cancelled_and_delays_retries() -> None:
    board = TaskBoard()
    first, second, later = active(1), active(2), active(3, due_at=10.0)
    for task in (first, second, later):
        board.track(task, now=0.0)
    board.forget(first, TaskState.CANCELLED)
    keys = {("default", "echo")}
    popped = board.pop_ready(keys)
    assert popped is second
    assert board.pop_ready(keys) is None
    assert board.promote_due(now=5.0, limit=10) == 0
    assert board.promote_due(now=10.0, limit=10) == 1
    assert board.pop_ready(keys) is later


def test_tasks_due_together_become_ready_in_chunks_higher_priorities_first() -> None:
    """Chunks keep a loop free between them; within one due time the ranks a ready queue
    uses decide which chunk a task is in, so a higher priority is not left to the last."""
    board = TaskBoard()
    tasks = [active(seq, due_at=10.0) for seq in range(1, 8)]
    tasks[5].priority = 5  # seq 6
    early = active(8, due_at=9.0)
    for task in [*tasks, early]:
        board.track(task, now=0.0)
    assert board.promote_due(now=10.0, limit=3) == 3
    keys = {("default", "echo")}
    assert [t.seq for t in iter(lambda: board.pop_ready(keys), None)] == [6, 1, 8]
    assert board.promote_due(now=10.0, limit=3) == 3
    assert board.promote_due(now=10.0, limit=3) == 2
    assert board.promote_due(now=10.0, limit=3) == 0
    assert [t.seq for t in iter(lambda: board.pop_ready(keys), None)] == [2, 3, 4, 5, 7]


class _Model:
    """What a picker must pick, found by looking at every task: the queues in turn (a
    queue that gets a task with none unfinished goes after those that did so before
    it and ahead of every queue served; each time one of its tasks is taken it goes
    to the back), then priority, then FIFO."""

    def __init__(self) -> None:
        self.tasks: list[ActiveTask] = []
        self.turns: dict[str, tuple[int, int]] = {}
        self._numbers = iter(range(10**9))

    def tracked(self, task: ActiveTask) -> None:
        if task not in self.tasks:
            self.tasks.append(task)
        self.turns.setdefault(task.queue, (0, next(self._numbers)))

    def forgotten(self, task: ActiveTask) -> None:
        unfinished = {t.queue for t in self.tasks if not t.state.is_terminal}
        if task.queue not in unfinished:
            self.turns.pop(task.queue, None)

    def expected(self, keys: set[Key], blocked: set[str]) -> ActiveTask | None:
        ready = [
            t
            for t in self.tasks
            if t.state is TaskState.QUEUED
            and (t.queue, t.type) in keys
            and t.rate_key not in blocked
        ]
        return min(ready, key=lambda t: (self.turns[t.queue], -t.priority, t.seq), default=None)

    def taken(self, task: ActiveTask) -> None:
        self.turns[task.queue] = (1, next(self._numbers))


@pytest.mark.parametrize("seed", range(30))
def test_pickers_sharing_keys_in_a_round_take_the_next_ready_task_each_time(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three nodes' pickers over overlapping keys, taking turns as a dispatch round does,
    rounds after rounds: tasks cancelled, rate keys running out of tokens and queues
    closing mid-round, new tasks queued between rounds, and between rounds half the
    queued tasks cancelled and some of those put back (a cancel whose commit failed).
    Every pick is what a look at every ready task says it must be. Odd seeds rebuild
    the ready queues as soon as half their entries are stale."""
    if seed % 2:
        monkeypatch.setattr(ReadyQueue, "COMPACT_AT", 1)
    rng = random.Random(seed)
    queues = [f"q{i}" for i in range(rng.randint(1, 8))]
    rate_keys = ["", "", *(f"tenant-{i}" for i in range(rng.randint(0, 30)))]
    board = TaskBoard()
    model = _Model()

    def queue_some(count: int) -> None:
        for _ in range(count):
            task = active(len(model.tasks), queue=rng.choice(queues), type_=rng.choice("ab"))
            task.priority = rng.choice([0, 0, 0, 5, -5])
            task.rate_key = rng.choice(rate_keys)
            board.track(task, now=0.0)
            model.tracked(task)

    def cancel(tasks: list[ActiveTask]) -> None:
        for task in tasks:
            board.forget(task, TaskState.CANCELLED)
            model.forgotten(task)

    every_key = {(q, t) for q in queues for t in ("a", "b")}
    for _ in range(6):  # rounds
        queue_some(rng.randint(0, 80))
        node_keys = [{k for k in every_key if rng.random() < 0.6} for _ in range(3)]
        blocked = {k for k in rate_keys if k and rng.random() < 0.2}  # out of tokens
        pickers = [ReadyPicker(board, keys, blocked) for keys in node_keys]
        for turn in range(60):
            if turn == 20:
                cancel(rng.sample(model.tasks, len(model.tasks) // 10))
            if turn == 30 and len(rate_keys) > 2:
                blocked.add(rng.choice(rate_keys[2:]))  # a key's last token taken
            if turn == 40:
                closed = rng.choice(queues)
                for keys in node_keys:
                    keys -= {k for k in keys if k[0] == closed}
            node = turn % 3
            expected = model.expected(node_keys[node], blocked)
            picked = pickers[node].pop()
            assert picked is expected
            if picked is not None:
                picked.state = TaskState.LEASED
                model.taken(picked)
        board.end_round()  # blocked rate keys count again
        queued = [t for t in model.tasks if t.state is TaskState.QUEUED]
        cancelled = rng.sample(queued, len(queued) // 2)
        cancel(cancelled)
        restored = rng.sample(cancelled, len(cancelled) // 5)
        board.restore(restored, now=0.0)
        for task in restored:
            model.tracked(task)
    assert board.pop_ready(every_key) is model.expected(every_key, set())


def test_a_queue_emptied_by_cancels_lets_go_of_its_tasks_at_once() -> None:
    """Cancelled ready tasks used to stay in their heap until a dispatch round reached
    them: all of them held in memory, then dropped in one round (900,000: 1.6 s)."""
    board = TaskBoard()
    key = ("default", "echo")
    tasks = [active(seq) for seq in range(10_000)]
    for task in tasks:
        board.track(task, now=0.0)
    for task in tasks[:9_000]:
        board.forget(task, TaskState.CANCELLED)
    assert board.held(key) < 2_000  # rebuilt from the live ones along the way
    board.restore([tasks[5]], now=0.0)  # its cancel's commit failed
    assert [board.pop_ready({key}) for _ in range(2)] == [tasks[5], tasks[9_000]]
    assert board.unfinished("default") == 1_001  # popped ones are leased, still unfinished


def test_board_counts_each_queue_s_unfinished_tasks_once() -> None:
    board = TaskBoard()
    first, second, other = active(1), active(2, due_at=10.0), active(3, queue="q2")
    for task in (first, second, other):
        board.track(task, now=0.0)
    board.track(active(1), now=0.0)  # the same task again (a retried one): still one
    assert (board.unfinished("default"), board.unfinished("q2")) == (2, 1)
    board.pop_ready({("default", "echo")})  # leased: still unfinished
    assert board.unfinished("default") == 2
    board.forget(first, TaskState.SUCCEEDED)
    board.forget(first, TaskState.SUCCEEDED)  # a second forget changes nothing
    assert (board.unfinished("default"), board.unfinished("none")) == (1, 0)


def test_board_keeps_nothing_of_a_queue_once_its_tasks_are_gone() -> None:
    """Queues named per job come and go; the board's memory must not grow with them."""
    board = TaskBoard()
    tasks = [active(seq, queue=f"job-{seq}") for seq in range(1, 2_001)]
    for task in tasks:
        board.track(task, now=0.0)
    assert board.ready_keys() == {(f"job-{seq}", "echo") for seq in range(1, 2_001)}
    for task in tasks:
        board.pop_ready({(task.queue, "echo")})
        board.forget(task, TaskState.SUCCEEDED)
    assert board.ready_keys() == set() and not board.active
    assert not board._unfinished and not board.turns  # no entry left at zero per queue
    assert board.unfinished("job-1") == 0


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(per_second=10, burst=2, stamp=0.0)
    assert bucket.available(0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert not bucket.available(0.0)
    assert bucket.seconds_until_token(0.0) == pytest.approx(0.1)
    assert bucket.available(0.1)
    bucket.refill(100.0)
    assert int(bucket.tokens) == 2, "never more than the burst"
    bucket.take(100.0)
    bucket.take(100.0)
    assert not bucket.available(100.0)

    limiter = RateLimiter()
    limiter.configure_key("tenant-a", per_second=5, burst=1, now=0.0)
    assert limiter.take("default", "tenant-a", 0.0) == (False, True)
    assert limiter.take("default", "tenant-b", 0.0) == (False, False), "unlimited key"
    queues, keys, wait = limiter.blocked(0.0)
    assert (queues, keys) == (set(), {"tenant-a"})
    assert wait == pytest.approx(0.2)
    limiter.configure_key("tenant-a", per_second=0, burst=0, now=0.0)
    assert limiter.blocked(0.0) == (set(), set(), None)


@pytest.mark.parametrize("seed", range(10))
def test_the_limiter_reports_what_looking_at_every_bucket_would(seed: int) -> None:
    """It looks only at buckets that ran out: after any takes, refills and re-configurations
    its answer is what checking each bucket says."""
    rng = random.Random(seed)
    limiter = RateLimiter()
    names = [f"n{i}" for i in range(8)]
    now = 0.0
    for _ in range(300):
        action = rng.random()
        name = rng.choice(names)
        if action < 0.1:
            limiter.configure_queue(name, rng.choice([0, 1, 5]), now)
        elif action < 0.2:
            limiter.configure_key(name, rng.choice([0, 2, 10]), rng.choice([1, 3]), now)
        elif action < 0.8:
            queues, keys, _ = limiter.blocked(now)
            queue, key = rng.choice(names), rng.choice(names)
            if queue not in queues and key not in keys:
                limiter.take(queue, key, now)
        else:
            now += rng.choice([0.01, 0.1, 0.5])
        queues, keys, wait = limiter.blocked(now)
        assert queues == {n for n, b in limiter.queues.items() if not b.available(now)}
        assert keys == {k for k, b in limiter.keys.items() if not b.available(now)}
        assert (wait is None) == (not queues and not keys)


def test_a_full_bucket_never_starts_more_than_its_burst_at_once() -> None:
    bucket = TokenBucket(per_second=1, burst=1, stamp=0.0)
    bucket.refill(100.0)  # a long quiet period
    bucket.take(100.0)
    assert not bucket.available(100.05), "a second task must wait most of a period"
    assert bucket.available(100.9)  # the saved tenth of a token makes up for a late wake


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "taken"),
    [
        ([], 10, 0),
        ([5, 5, 5], 10, 2),  # up to the budget, not over it
        ([5, 5, 5], 15, 3),
        ([20, 1], 10, 1),  # a task larger than the budget still makes a page, alone
        ([1, 20, 1], 10, 1),
    ],
)
def test_a_page_takes_the_tasks_that_fit_its_budget(
    sizes: list[int], max_bytes: int, taken: int
) -> None:
    assert fitting(sizes, max_bytes) == taken


def test_nodes_serving_the_same_keys_share_one_set_of_them() -> None:
    """A dispatch round groups nodes by identity of their key set (cheap, whatever its size)."""

    def node(node_id: str, queues: set[str]) -> Registration:
        return Registration(
            node_id, "host", 1, "v", frozenset({"echo", "add"}), frozenset(queues), 4, None
        )

    registry = NodeRegistry()
    many = {f"tenant-{i}" for i in range(1000)}
    first = registry.create(node("a", many))
    second = registry.create(node("b", set(many)))
    other = registry.create(node("c", many | {"extra"}))
    assert second.keys is first.keys
    assert other.keys is not first.keys and other.keys == first.keys | {
        ("extra", "echo"),
        ("extra", "add"),
    }
