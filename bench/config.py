"""The run spec: everything that decides a run's numbers, loadable from YAML/TOML, hashed to name it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salbench.errors import UsageError, close_matches

TARGETS = ("label", "predicted")


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
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        for key in ("methods", "exclude_methods", "models", "eval_models"):
            v = getattr(self, key)
            if isinstance(v, str):
                setattr(self, key, [s.strip() for s in v.split(",") if s.strip()])
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"limit={self.limit}: expected a positive number of images")
        if self.batch_size < 1:
            raise UsageError(f"batch_size={self.batch_size}: expected a positive integer")
        if self.target not in TARGETS:
            raise UsageError(f"target={self.target!r}: expected one of {', '.join(TARGETS)}")
        from salbench.mapcache import check_precision

        check_precision(self.map_precision)
        if not self.models:
            raise UsageError("models is empty: expected at least one source classifier")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "RunSpec":
        known = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in d if k not in known]
        if bad:
            raise UsageError(f"{source}: unknown key {bad[0]!r}{close_matches(bad[0], known)}; known keys: {', '.join(known)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise UsageError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "RunSpec":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            elif path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif path.suffix == ".json":
                data = json.loads(text)
            else:
                raise UsageError(f"config file {str(path)!r}: expected a .yaml, .yml, .toml or .json file")
        except UsageError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"config file {str(path)!r} is malformed: {first}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UsageError(f"config file {str(path)!r}: expected a mapping of run-spec keys, got {type(data).__name__}")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        return cls.from_dict(data, source=f"config file {str(path)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# Fields that change where or how fast a run executes but not its numbers.
EXECUTION_ONLY = ("device", "name", "workers", "map_cache")


def spec_hash(resolved: dict[str, Any]) -> str:
    """Hash of the resolved spec (wildcards expanded, per-method parameters filled in)."""
    payload = {k: v for k, v in resolved.items() if k not in EXECUTION_ONLY}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
