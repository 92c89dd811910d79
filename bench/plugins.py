"""Methods from outside salbench: plugin files, importable modules, installed entry points.

``load_plugin("path/to/my_method.py")`` executes a file (as module ``salbench_plugins.<stem>_<hash>``,
so ``inspect`` and the map cache can find its source); ``load_plugin("my_package.methods")``
imports a module. Whatever they register with ``register_method`` / ``saliency_method`` (or
``register_metric``) is then available by name. Installed packages declare the entry-point group
``salbench.methods`` instead, which the method registry loads on first use.

Every plugin is recorded (``records``): the file's sha256, or the module's file hash and its
distribution's version, and the method names it registered. The runner puts the records of a
run's plugins into the resolved spec (so its hash, and the run directory name, change with the
plugin's code) and into run.json.

A plugin that fails to import, or registers a name that is already taken, is a ``UsageError``
(one line, exit 2) and leaves the registry as it was. Loading the same unchanged file again is a
no-op (notebooks re-run cells); an edited file replaces the methods its previous version added.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

from salbench.errors import UsageError, one_line
from salbench.methods import METHODS
from salbench.registry import DuplicateName

#: resolved file path or module name -> record (see module docstring), in load order.
_LOADED: dict[str, dict[str, Any]] = {}
#: the same key -> the method classes the plugin registered (to put them back after a failed reload).
_CLASSES: dict[str, dict[str, Any]] = {}


def is_plugin_file(source: str) -> bool:
    """A file path (``*.py`` or containing a path separator) rather than a dotted module name."""
    return source.endswith(".py") or "/" in source or "\\" in source


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _module_version(module_name: str) -> str | None:
    top = module_name.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def load_plugin(source: str) -> dict[str, Any]:
    """Load one plugin file or module (see the module docstring) and return its record."""
    if not isinstance(source, str) or not source.strip():
        raise UsageError(f"plugin {source!r}: expected a .py file path or a dotted module name")
    if is_plugin_file(source):
        return _load_file(source)
    return _load_module(source)


def load_plugins(sources: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    return [load_plugin(s) for s in sources]


def _run_registering(source: str, action) -> list[str]:
    """Run ``action`` (which imports the plugin); return the method names it registered. On any
    failure the names it registered are removed again and one ``UsageError`` line says why."""
    before = set(METHODS.names())
    try:
        action()
    except DuplicateName as exc:
        _forget(set(METHODS.names()) - before)
        raise UsageError(f"plugin {source!r} registers {exc.name!r}, a name that is already taken; rename its method") from None
    except UsageError:
        _forget(set(METHODS.names()) - before)
        raise
    except BaseException as exc:  # SystemExit too: a plugin must not end the run
        _forget(set(METHODS.names()) - before)
        raise UsageError(f"plugin {source!r} failed to import: {one_line(exc)}") from None
    return sorted(set(METHODS.names()) - before)


def _forget(names: set[str]) -> None:
    for name in names:
        METHODS.remove(name)


def _load_file(source: str) -> dict[str, Any]:
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(f"plugin {source!r}: no such file")
    path = path.resolve()
    digest = _sha256(path)
    previous = _LOADED.get(str(path))
    if previous is not None and previous["sha256"] == digest:
        return {**previous, "source": source}
    module_name = f"salbench_plugins.{''.join(c if c.isalnum() else '_' for c in path.stem)}_{digest[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"plugin {source!r}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    old_names = set(previous["methods"]) if previous else set()
    _forget(old_names)  # an edited file replaces what its previous version registered

    def execute() -> None:
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(module_name, None)
            raise

    try:
        names = _run_registering(source, execute)
    except UsageError:
        for name, cls in _CLASSES.get(str(path), {}).items():  # the previous version stays in place
            METHODS.add(name, cls)
        raise
    record = {"kind": "file", "source": source, "path": str(path), "sha256": digest, "module": module_name, "methods": names}
    _LOADED[str(path)] = record
    _CLASSES[str(path)] = {n: METHODS.get(n) for n in names}
    return record


def _load_module(source: str) -> dict[str, Any]:
    if source in _LOADED:
        return _LOADED[source]
    names = _run_registering(source, lambda: importlib.import_module(source))
    module = sys.modules.get(source)
    file = getattr(module, "__file__", None)
    record = {"kind": "module", "source": source, "module": source, "path": file,
              "sha256": _sha256(Path(file)) if file and Path(file).is_file() else None,
              "version": _module_version(source), "methods": names}
    _LOADED[source] = record
    return record


def unload_plugin(source: str) -> None:
    """Forget a plugin file or module and the methods it registered (tests, notebooks)."""
    key = str(Path(source).expanduser().resolve()) if is_plugin_file(source) else source
    record = _LOADED.pop(key, None)
    _CLASSES.pop(key, None)
    if record is not None:
        _forget(set(record["methods"]))
        sys.modules.pop(record["module"], None)


def records(methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Records of the plugins loaded in this process (files, modules) and of the installed entry
    points, these only where they provided one of ``methods`` (all of them when ``methods`` is None)."""
    wanted = None if methods is None else set(methods)
    out = [dict(r) for r in _LOADED.values()]
    METHODS.load_entry_points()
    for r in METHODS.entry_point_records:
        if wanted is None or wanted & set(r["names"]) or r.get("error"):
            out.append(dict(r))
    return out


def provenance(methods: list[str], sources: list[str]) -> list[dict[str, Any]]:
    """What a run records about its plugins: those named in ``sources`` and the entry points that
    provided one of its ``methods``, without machine-specific paths (they enter the spec hash)."""
    loaded = {r["source"]: r for r in records(None) if r["kind"] != "entry_point"}
    by_path = {r["path"]: r for r in loaded.values() if r.get("path")}
    out = []
    for s in sources:
        r = (loaded.get(s) or by_path.get(str(Path(s).expanduser().resolve()))) if is_plugin_file(s) else loaded.get(s)
        if r is None:
            r = load_plugin(s)
        out.append({"source": s, "kind": r["kind"], "sha256": r.get("sha256"), "version": r.get("version"), "methods": r["methods"]})
    for r in METHODS.entry_point_records:
        if set(r["names"]) & set(methods):
            out.append({"source": f"{r['name']} = {r['value']}", "kind": "entry_point", "distribution": r["distribution"],
                        "version": r["version"], "methods": r["names"]})
    return out
