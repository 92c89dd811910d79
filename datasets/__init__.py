"""Datasets by spec string: ``NAME[:ARG][?key=value&...]``.

``synthetic`` (the embedded default), ``synthetic?variant=twin&n=1000&size=96``,
``imagenet:/data/ILSVRC2012/val?limit=5000``, ``folder:/my/images?boxes=boxes.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from salbench.datasets.base import Batch, Sample, SaliencyDataset, collate
from salbench.errors import UsageError
from salbench.registry import Registry

DATASETS: Registry[Callable[[str | None, dict[str, str]], SaliencyDataset]] = Registry("dataset")


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``"imagenet:/x?limit=5"`` -> ("imagenet", "/x", {"limit": "5"})."""
    if not spec or not spec.strip():
        raise UsageError("empty dataset spec: expected e.g. 'synthetic' or 'imagenet:/path/to/val'")
    head, _, query = spec.partition("?")
    name, _, arg = head.partition(":")
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in params:
            raise UsageError(f"dataset spec {spec!r} sets {key!r} twice")
        params[key] = value
    return name.strip(), (arg or None), params


def int_param(params: dict[str, str], key: str, default: int | None, spec: str) -> int | None:
    if key not in params:
        return default
    try:
        return int(params.pop(key))
    except ValueError:
        raise UsageError(f"dataset {spec!r}: {key} must be an integer") from None


def _synthetic(arg: str | None, params: dict[str, str]) -> SaliencyDataset:
    from salbench.datasets.synthetic import SyntheticConfig, SyntheticDataset

    spec = "synthetic"
    if arg:
        params.setdefault("variant", arg)
    kw = {}
    for key, field_name in (("seed", "seed"), ("classes", "num_classes"), ("size", "size"), ("clutter", "clutter")):
        v = int_param(params, key, None, spec)
        if v is not None:
            kw[field_name] = v
    if "variant" in params:
        kw["variant"] = params.pop("variant")
    if "outside" in params:
        raw = params.pop("outside")
        try:
            kw["outside"] = float(raw)
        except ValueError:
            raise UsageError(f"dataset synthetic: outside={raw!r}, expected a number in [0, 0.5)") from None
    if "subset" in params:
        try:
            kw["classes"] = tuple(int(c) for c in params.pop("subset").split("+") if c)
        except ValueError:
            raise UsageError("dataset synthetic: subset must be class indices joined by '+', e.g. subset=0+1+2") from None
    split = params.pop("split", "val")
    n = int_param(params, "n", 500, spec)
    if params:
        raise UsageError(f"dataset synthetic: unknown parameter(s) {sorted(params)}; known: seed, classes, size, clutter, outside, variant, subset, split, n")
    return SyntheticDataset(SyntheticConfig(**kw), split=split, n=n)  # type: ignore[arg-type]


DATASETS.add("synthetic", _synthetic)


def _lazy(module: str) -> Callable[[str | None, dict[str, str]], SaliencyDataset]:
    def factory(arg: str | None, params: dict[str, str]) -> SaliencyDataset:
        import importlib

        return importlib.import_module(f"salbench.datasets.{module}").from_spec(arg, params)

    return factory


DATASETS.add("imagenet", _lazy("imagenet"))
DATASETS.add("folder", _lazy("folder"))


def build_dataset(spec: str) -> SaliencyDataset:
    name, arg, params = parse_spec(spec)
    return DATASETS.get(name)(arg, params)


__all__ = ["Batch", "Sample", "SaliencyDataset", "collate", "DATASETS", "build_dataset", "parse_spec"]
