"""A small decorator registry with wildcard filters, in the style of timm's model registry.

Besides the names registered by decorator, a registry can hold:

* *prefix factories* (``captum:IntegratedGradients``): ``get`` builds the entry from the text after
  the prefix on first use; such entries are never listed, so a wildcard cannot pull them in;
* an *entry-point group* (``salbench.methods``): installed packages' plugins, imported the first
  time the registry is read (not at import time, so a broken third-party package cannot break
  ``import salbench``); a plugin that fails to load is skipped with a one-line warning and listed
  in ``entry_point_records`` with its error.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

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


def distribution_version(dist: Any) -> str | None:
    try:
        return str(dist.version) if dist is not None else None
    except Exception:  # broken metadata
        return None


class DuplicateName(ValueError):
    """A name registered twice (``name``: the name)."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class Registry(Generic[T]):
    """Name -> entry mapping filled by a decorator.

    ``kind`` names what is registered ("method", "inpainting backend") so that errors read well;
    ``entry_points`` names an ``importlib.metadata`` group whose plugins are loaded on first use.
    """

    def __init__(self, kind: str, entry_points: str | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._factories: dict[str, Callable[[str], T]] = {}
        self._built: dict[str, T] = {}
        self.entry_point_group = entry_points
        self.entry_point_records: list[dict[str, Any]] = []
        self._entry_points_loaded = entry_points is None

    # ------------------------------------------------------------------ filling
    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise DuplicateName(f"{self.kind} {name!r} is registered twice", name)
            if name.partition(":")[0] in self._factories and ":" in name:
                raise DuplicateName(f"{self.kind} name {name!r} is taken by the {name.partition(':')[0]!r} prefix", name)
            self._entries[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def remove(self, name: str) -> None:
        """Forget ``name`` (a plugin being reloaded or rolled back); unknown names are ignored."""
        self._entries.pop(name, None)

    def add_prefix(self, prefix: str, factory: Callable[[str], T]) -> None:
        """Entries named ``prefix:<arg>``, built by ``factory(arg)`` on first ``get`` and never listed."""
        self._factories[prefix] = factory

    def prefixes(self) -> list[str]:
        return sorted(self._factories)

    # ------------------------------------------------------------------ entry points
    def load_entry_points(self) -> None:
        """Import the installed plugins of ``entry_point_group`` once (each: a module or an object
        whose import registers entries). A failing plugin is a warning, and its error is recorded."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            before = set(self._entries)
            dist = getattr(ep, "dist", None)
            record: dict[str, Any] = {"kind": "entry_point", "name": ep.name, "value": ep.value,
                                      "distribution": getattr(dist, "name", None), "version": distribution_version(dist)}
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must not break salbench
                for name in set(self._entries) - before:
                    self._entries.pop(name)
                msg = str(exc).strip().splitlines()
                record["error"] = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
                print(f"salbench: warning: {self.entry_point_group} plugin {ep.name!r} ({ep.value}) failed to load, "
                      f"its {self.kind}s are unavailable: {record['error']}", file=sys.stderr)
            record["names"] = sorted(set(self._entries) - before)
            self.entry_point_records.append(record)

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._entries

    def __len__(self) -> int:
        self.load_entry_points()
        return len(self._entries)

    def get(self, name: str) -> T:
        self.load_entry_points()
        if name in self._entries:
            return self._entries[name]
        prefix, sep, arg = name.partition(":")
        if sep and prefix in self._factories:
            if name not in self._built:
                self._built[name] = self._factories[prefix](arg)
            return self._built[name]
        prefixes = f"; or {', '.join(p + ':<name>' for p in self.prefixes())}" if self._factories else ""
        raise UsageError(
            f"unknown {self.kind} {name!r}{close_matches(name, self._entries)}; "
            f"known: {', '.join(self.names()) or 'none'}{prefixes}"
        )

    def select(self, spec: str | Iterable[str] | None, exclude: str | Iterable[str] | None = None) -> list[str]:
        """Resolve a comma-separated list of names and wildcards, keeping order, without duplicates.

        An empty spec selects everything. A plain name that is not registered, or a pattern that
        matches nothing, is an error naming it. Patterns match registered names only, never a
        prefix factory's entries (they must be named).
        """
        names = split_list(spec)
        if not names:
            out = self.names()
        else:
            out = []
            for item in names:
                if is_pattern(item) and item.partition(":")[0] not in self._factories:
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
