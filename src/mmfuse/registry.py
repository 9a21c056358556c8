"""A name → builder registry, shared by encoders and fusion methods.

Registering a name twice is an error (two files fighting over one name is always a bug), and an
unknown name lists the valid ones so the user can fix the call or the CLI flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mmfuse.errors import MmfuseError

T = TypeVar("T", bound=Callable)


class UnknownNameError(MmfuseError, KeyError, ValueError):
    """An unregistered name. A KeyError for lookups, a ValueError (a bad value) for callers and
    the command line, which report it as a usage error."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
