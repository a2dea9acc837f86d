"""A small named registry: ``register(name)`` as a decorator, ``get(name)``, ``names()``.

Configs name registry keys; user code adds entries by being imported. A duplicate name is an
error (as in timm's ``register_model``), and an unknown name lists the known ones.

Example:
    >>> heads = Registry[object]("head")
    >>> @heads.register("identity")
    ... def make_identity() -> str:
    ...     return "identity head"
    >>> heads.get("identity")()
    'identity head'
    >>> heads.names()
    ['identity']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from unique names to objects (classes or functions) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that stores the decorated object under ``name``; loud on duplicates."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ``KeyError`` listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
