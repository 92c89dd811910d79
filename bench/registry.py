"""A small decorator registry with wildcard filters, in the style of timm's model registry."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from salbench.errors import UsageError, close_matches

T = TypeVar("T")


def split_list(spec: str | Iterable[str] | None) -> list[str]:
    """Split a comma-separated CLI list (``"a,b*,c"``) into stripped non-empty names."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [s.strip() for s in items if s and s.strip()]


def is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


class Registry(Generic[T]):
    """Name -> entry mapping filled by a decorator.

    ``kind`` names what is registered ("method", "inpainting backend") so that errors read well.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.kind} {name!r}{close_matches(name, self._entries)}; "
                f"known: {', '.join(self.names()) or 'none'}"
            ) from None

    def select(self, spec: str | Iterable[str] | None, exclude: str | Iterable[str] | None = None) -> list[str]:
        """Resolve a comma-separated list of names and wildcards, keeping order, without duplicates.

        An empty spec selects everything. A plain name that is not registered, or a pattern that
        matches nothing, is an error naming it.
        """
        names = split_list(spec)
        if not names:
            out = self.names()
        else:
            out = []
            for item in names:
                if is_pattern(item):
                    hits = fnmatch.filter(self.names(), item)
                    if not hits:
                        raise UsageError(f"{self.kind} pattern {item!r} matches nothing; known: {', '.join(self.names())}")
                else:
                    self.get(item)
                    hits = [item]
                out.extend(h for h in hits if h not in out)
        drop: list[str] = []
        for item in split_list(exclude):
            drop.extend(fnmatch.filter(out, item))
        return [n for n in out if n not in drop]
