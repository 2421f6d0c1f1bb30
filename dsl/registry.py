"""One registry for every pluggable part (backbones, rules, schedules, protocols, stages, corpus formats,
augmentations, feature kinds, auxiliary tasks), in the spirit of timm's `register_model`/`create_model`.

An entry is a frozen dataclass with a `name` that carries the part's *facts* (what config keys it owns,
whether a protocol is leak-free, what a stage reads ...), so the config checks, trial configs, trial names,
the report and the CLI read them from the entry instead of keeping their own lists of names. A registry
refuses a second entry of the same name (a plugin cannot silently replace a built-in), and an unknown
name is a `ConfigError` that lists the known ones.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from dsl.config import ConfigError


class Named(Protocol):
    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Named)
F = TypeVar("F")


class UnknownName(ConfigError, KeyError):
    """No entry of that name (a `KeyError` too, so `name in registry`-style handling keeps working)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateName(ConfigError):
    """A second entry under a name that is already registered."""


class Registry(Generic[E]):
    """Name -> entry, in registration order. `kind` names the entries in messages ("protocol", "backbone")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, E] = {}

    def register(self, entry: E) -> E:
        """Add `entry`; a name that is taken raises `DuplicateName` (unregister the old one first to replace it)."""
        name = entry.name
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise DuplicateName(f"{self.kind} {name!r} is already registered (by "
                                f"{_origin(self._entries[name])}); choose another name")
        self._entries[name] = entry
        return entry

    def decorator(self, make: Callable[[F], E]) -> Callable[[F], F]:
        """A decorator that registers `make(obj)` and returns `obj` unchanged (what `register_*` return)."""
        def wrap(obj: F) -> F:
            self.register(make(obj))
            return obj
        return wrap

    def unregister(self, name: str) -> E:
        """Remove and return an entry (tests; a plugin that replaces one of its own on reload)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> E:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}") from None

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def values(self) -> tuple[E, ...]:
        return tuple(self._entries.values())

    def items(self) -> tuple[tuple[str, E], ...]:
        return tuple(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _origin(entry: Any) -> str:
    """Where an entry's code lives, for the duplicate message."""
    for attr in ("fn", "factory", "cls", "parse"):
        obj = getattr(entry, attr, None)
        if obj is not None and getattr(obj, "__module__", None):
            return f"{obj.__module__}.{getattr(obj, '__qualname__', attr)}"
    return type(entry).__module__


def owned_keys(kind: str, name: str, keys: tuple[str, ...] | list[str], prefix: str) -> tuple[str, ...]:
    """`keys` as a tuple, each checked to be a `prefix`-ed ChainConfig key (an entry can only own real keys)."""
    from dsl.config import field_default

    for k in keys:
        try:
            ok = k.startswith(prefix) and not hasattr(field_default(k), "__dataclass_fields__")
        except KeyError:
            ok = False
        if not ok:
            raise ConfigError(f"{kind} {name!r}: {k!r} is not a {prefix}* config key it could own")
    return tuple(keys)


def first_line(doc: str | None) -> str:
    """The first line of a docstring: an entry's default description."""
    return (doc or "").strip().split("\n")[0].strip()
