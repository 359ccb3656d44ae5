"""The one way to pick a variant by name: index kinds, build engines, backbones, hash heads,
precisions.

Modelled on torchvision's ``models/_api.py`` (``register_model``, ``get_model``,
``list_models``): each variant registers itself where it is defined, and everything that
offers a choice (the CLI's ``--kind``, ``--engine``, ``--backbone``, ``--precision``; the
checks of options) asks the registry instead of keeping a list of its own.

    BACKBONES = Registry("backbone")

    @BACKBONES.register("tf2015", "TensorFlow's 2015 ImageNet weights", pretrained=True)
    def tf2015_inception_v3(weights_path=None): ...

    BACKBONES.get("tf2015")          # the function; ValueError naming the known ones otherwise
    BACKBONES.names(pretrained=True)  # ['tf2015', 'torchvision'], in registration order

A variant whose module is costly to import (Ray) registers a ``"module:attribute"`` path with
``register_lazy``: it is imported on ``get`` only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered variant: its name, one line for help texts, the value (or the
    ``module:attribute`` it is imported from), and tags to filter ``names`` by."""

    name: str
    description: str
    value: T | None = None
    path: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def load(self) -> T:
        if self.path is None:
            return self.value  # type: ignore[return-value]
        module, _, attribute = self.path.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    """Named variants of one thing (``what``: "backbone", "engine", ...).

    error: the exception type ``get`` raises for an unknown name (a ValueError subclass by
    default, ValueError itself)."""

    def __init__(self, what: str, error: type[Exception] = ValueError) -> None:
        self.what = what
        self.error = error
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "", **tags: Any) -> Callable[[T], T]:
        """Decorator (or call with the value): register it as ``name``; returns it as is.
        A name registered twice is refused: two modules would silently fight over it."""

        def add(value: T) -> T:
            self._add(Entry(name, description, value=value, tags=tags))
            return value

        return add

    def add(self, name: str, value: T, description: str = "", **tags: Any) -> None:
        """Register ``value`` as ``name`` (``register`` without the decorator)."""
        self._add(Entry(name, description, value=value, tags=tags))

    def register_lazy(self, name: str, path: str, description: str = "", **tags: Any) -> None:
        """Register ``module:attribute``, imported by the first ``get(name)``."""
        self._add(Entry(name, description, path=path, tags=tags))

    def _add(self, entry: Entry[T]) -> None:
        if not entry.name or entry.name != entry.name.strip():
            raise ValueError(f"a {self.what} name must be a non-empty word, got {entry.name!r}")
        if entry.name in self._entries:
            raise ValueError(f"{self.what} {entry.name!r} is registered already")
        self._entries[entry.name] = entry

    def get(self, name: str) -> T:
        """The value registered as ``name``; ``error`` naming the known ones otherwise."""
        return self.entry(name).load()

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(f"{self.what} must be one of {', '.join(self._entries)}, "
                             f"got {name!r}") from None

    def check(self, name: str) -> str:
        """``name`` if it is registered (nothing is imported), else ``error``."""
        return self.entry(name).name

    def names(self, **tags: Any) -> list[str]:
        """The registered names in registration order, those whose tags equal ``tags``."""
        return [e.name for e in self._entries.values()
                if all(e.tags.get(k) == v for k, v in tags.items())]

    def discard(self, name: str) -> None:
        """Forget ``name`` if registered (a plugin unloaded, a test cleaning up)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
