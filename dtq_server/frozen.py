"""``@frozen``: the coordinator's value types, frozen to the type checker.

A ``@dataclass(frozen=True)`` sets each field in ``__init__`` through
``object.__setattr__`` (to get past its own ``__setattr__``), and that costs
about three times a plain slotted dataclass's ``self.x = x``: 6.4 against
2.4 µs for ``TaskRecord``'s 32 fields, 3.4 against 1.2 for ``SpecInput``'s 16
(CPython 3.11, keyword arguments). The coordinator builds several of these for
every task it takes in, leases and settles, on the thread that bounds its
throughput, so that was ~10 µs of ~130 µs of coordinator CPU a task.

So these are plain slotted dataclasses at run time, and frozen where it is
checked: mypy reads ``@frozen`` as a frozen dataclass (PEP 681
``frozen_default``) and rejects any assignment to a field. They compare and
hash by value, as frozen dataclasses do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """A slotted dataclass, immutable to the type checker (see the module)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
