"""Parse results cross a process boundary (``parsing.workers``): pickled there, unpickled here."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def pickled_by_fields(cls: type[T]) -> type[T]:
    """Pickle a frozen, slotted dataclass as its constructor's arguments.

    The state methods that ``dataclass(frozen=True, slots=True)`` generates call ``fields()`` and
    ``object.__setattr__`` per field on every object: measured on the import benchmark's messages,
    pickling a parse result and reading it back took twice as long as with this (about 50 against
    100 microseconds a message), in the worker and in the storing process each."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def __reduce__(self: Any) -> tuple[type[T], tuple[Any, ...]]:
        return (cls, tuple([getattr(self, name) for name in names]))

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls
