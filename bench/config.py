"""The run spec: everything that decides a run's numbers, loadable from YAML/TOML, hashed to name it.

Validation (types, ranges, method and binarization parameters, a safe run name) lives in
``salbench.spec_schema``; reading files with key line numbers in ``salbench.spec_file``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salbench.errors import UsageError, close_matches

@dataclass
class RunSpec:
    """One benchmark run. List fields accept comma-separated names with wildcards."""

    dataset: str = "synthetic"
    methods: list[str] = field(default_factory=lambda: ["*"])
    exclude_methods: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["zoo:*"])
    eval_models: list[str] | None = None  # default: the source models
    limit: int | None = None
    binarize: str = "mean_area"
    binarize_params: dict[str, Any] = field(default_factory=dict)
    box: str = "largest"
    inpaint: str = "telea"
    target: str = "label"
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    dtype: str = "float32"
    channels_last: bool = False
    workers: int = 0
    map_cache: str | None = None  # directory of the saliency-map cache ("auto": $SALBENCH_HOME/maps)
    map_precision: str = "float32"  # maps are rounded to this before use (and stored at it)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["*"])
    exclude_metrics: list[str] = field(default_factory=list)
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str | None = None
    plugins: list[str] = field(default_factory=list)  # plugin files (*.py) or modules that register methods

    def __post_init__(self) -> None:
        """Split comma-separated lists, then validate every field (``salbench.spec_schema``).

        The dataclass stays the spec's type (its ``asdict`` is hashed to name the run, so a valid
        spec keeps its run directory name); the pydantic model only checks, it never rewrites a value.
        """
        for key in ("methods", "exclude_methods", "models", "eval_models", "metrics", "exclude_metrics", "plugins"):
            v = getattr(self, key)
            if isinstance(v, str):
                setattr(self, key, [s.strip() for s in v.split(",") if s.strip()])
        from salbench.spec_schema import validate_spec

        validate_spec(dataclasses.asdict(self))

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config", lines: dict[tuple[str, ...], int] | None = None) -> "RunSpec":
        """A spec from a mapping; errors name ``source`` and, when ``lines`` has it, the key's line."""
        from salbench.spec_file import line_of
        from salbench.spec_schema import SpecError

        known = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in d if k not in known]
        if bad:
            where = line_of(lines or {}, (bad[0],))
            raise UsageError(f"{source}{f' line {where}' if where else ''}: unknown key {bad[0]!r}{close_matches(bad[0], known)}; known keys: {', '.join(known)}")
        try:
            return cls(**d)
        except SpecError as exc:
            where = line_of(lines or {}, exc.path)
            raise SpecError(exc.path, f"{source}{f' line {where}' if where else ''}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "RunSpec":
        from salbench.spec_file import read_spec_file

        path = Path(path)
        data, lines = read_spec_file(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UsageError(f"config file {str(path)!r}: expected a mapping of run-spec keys, got {type(data).__name__}")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        if isinstance(data.get("plugins"), list):
            data["plugins"] = [_beside(path, p) for p in data["plugins"]]
        return cls.from_dict(data, source=f"config file {str(path)!r}", lines=lines)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a dict; ``plugins`` only when there are any, so that specs without plugins
        keep the dict, hash and run directory name they had before the key existed."""
        d = dataclasses.asdict(self)
        if not d["plugins"]:
            d.pop("plugins")
        return d

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _beside(config: Path, plugin: Any) -> Any:
    """A relative plugin file path in a config file is relative to the config file's folder (as
    written: ``configs/run.yaml`` naming ``mine.py`` gives ``configs/mine.py``), so a spec runs
    from any working directory; modules and absolute paths are left as they are."""
    from salbench.plugins import is_plugin_file

    if not isinstance(plugin, str) or not is_plugin_file(plugin) or plugin.startswith("~") or Path(plugin).is_absolute():
        return plugin
    return str(config.parent / plugin)


# Fields that change where or how fast a run executes but not its numbers.
EXECUTION_ONLY = ("device", "name", "workers", "map_cache")


def spec_hash(resolved: dict[str, Any]) -> str:
    """Hash of the resolved spec (wildcards expanded, per-method parameters filled in)."""
    payload = {k: v for k, v in resolved.items() if k not in EXECUTION_ONLY}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
