"""``@frozen``: value types built on hot paths, frozen to the type checker.

A ``@dataclass(frozen=True)`` sets each field in ``__init__`` through
``object.__setattr__`` (to get past its own ``__setattr__``), and that costs
about three times a plain slotted dataclass's ``self.x = x``: 6.4 against
2.4 µs for the coordinator's ``TaskRecord`` (32 fields), 3.4 against 1.2 for
``SpecInput`` (16), 0.8 against 0.4 for a node's two-field ``Lease`` (CPython
3.11, keyword arguments). The coordinator builds several of these for every
task it takes in, leases and settles, and a node a dozen for every task it
runs, on the threads that bound their throughput.

So these are plain slotted dataclasses at run time, and frozen where it is
checked: mypy reads ``@frozen`` as a frozen dataclass (PEP 681
``frozen_default``) and rejects any assignment to a field. They compare and
hash by value, as frozen dataclasses do; ``@frozen(eq=False)`` keeps identity
instead (one object per thing, like a task's context).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform, overload

T = TypeVar("T")


@overload
def frozen(cls: type[T], /) -> type[T]: ...


@overload
def frozen(*, eq: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(
    cls: type[T] | None = None, /, *, eq: bool = True
) -> type[T] | Callable[[type[T]], type[T]]:
    """A slotted dataclass, immutable to the type checker (see the module)."""

    def wrap(cls: type[T]) -> type[T]:
        # unsafe_hash: the value hash a frozen dataclass has (only with eq).
        return dataclass(slots=True, eq=eq, unsafe_hash=eq)(cls)

    return wrap if cls is None else wrap(cls)
