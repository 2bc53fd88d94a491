"""The registry: the decorator, task-type validation, and loading MODULE[:ATTR]."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dtq_worker import (
    DuplicateTaskType,
    HandlerNotFound,
    InvalidTaskType,
    Registry,
    RegistryLoadError,
    TaskContext,
    load_registry,
)
from dtq_worker.demo import registry as demo_registry


def test_decorator_registers_and_returns_the_function() -> None:
    registry = Registry()

    @registry.task("email.send")
    def send(payload: dict[str, str], ctx: TaskContext) -> dict[str, bool]:
        return {"sent": True}

    assert registry.lookup("email.send") is send
    assert "email.send" in registry
    assert len(registry) == 1
    assert send({}, None) == {"sent": True}  # type: ignore[arg-type]


def test_task_types_are_sorted() -> None:
    registry = Registry()
    for name in ("b", "a", "c"):
        registry.register(name, lambda payload, ctx: None)
    assert registry.task_types == ("a", "b", "c")


def test_duplicate_names_are_rejected_with_the_existing_handler_named() -> None:
    registry = Registry()

    @registry.task("dup")
    def first(payload: object, ctx: TaskContext) -> None: ...

    with pytest.raises(DuplicateTaskType, match="first"):

        @registry.task("dup")
        def second(payload: object, ctx: TaskContext) -> None: ...

    assert registry.lookup("dup") is first


@pytest.mark.parametrize("name", ["", "has space", "a/b", "é", "x" * 201, "tab\t"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidTaskType):
        Registry().task(name)


@pytest.mark.parametrize("name", ["a", "email.send", "ns:task-1_x", "x" * 200])
def test_good_names_are_accepted(name: str) -> None:
    registry = Registry()
    registry.register(name, lambda payload, ctx: None)
    assert name in registry


def test_unknown_type_lookup_raises_handler_not_found() -> None:
    with pytest.raises(HandlerNotFound, match="nope"):
        Registry().lookup("nope")


def test_non_callable_handler_is_rejected() -> None:
    with pytest.raises(TypeError):
        Registry().register("x", "not a function")  # type: ignore[arg-type]


def test_load_module_defaults_to_the_registry_attribute() -> None:
    assert load_registry("dtq_worker.demo") is demo_registry
    assert load_registry("dtq_worker.demo:registry") is demo_registry


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_for_dtq_tests", "cannot import"),
        ("dtq_worker.demo:nope", "has no attribute 'nope'"),
        ("dtq_worker.demo:echo", "not a dtq_worker.Registry"),
        (":registry", "names no module"),
    ],
)
def test_load_errors_are_clear(target: str, message: str) -> None:
    with pytest.raises(RegistryLoadError, match=message):
        load_registry(target)


def _write_module(tmp_path: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_module_failing_at_import_is_a_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_module(tmp_path, "dtq_broken_tasks", "raise RuntimeError('boom')\n", monkeypatch)
    with pytest.raises(RegistryLoadError, match="RuntimeError: boom") as info:
        load_registry("dtq_broken_tasks")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_empty_registry_is_a_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "from dtq_worker import Registry\nregistry = Registry()\n"
    _write_module(tmp_path, "dtq_empty_tasks", source, monkeypatch)
    with pytest.raises(RegistryLoadError, match="no tasks"):
        load_registry("dtq_empty_tasks")
