"""Typed validation of a run spec (pydantic v2): every key's type and range, one line per error.

``RunSpec`` stays a plain dataclass (its ``asdict`` is the input of the run hash, so existing run
directory names stay valid); this module is the validator behind it. Scalars are strict (no
``True`` for an int, no ``"no"`` for a bool, no ``2.5`` for a count); lists accept any sequence
but not a bare string. Errors are ``SpecError``: a ``UsageError`` that also carries the key path,
so a file loader can add the line the key is on.
"""

from __future__ import annotations

import inspect
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, field_validator

from salbench.errors import SpecError, UsageError, close_matches

Number = StrictInt | StrictFloat
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]


__all__ = ["SpecError", "validate_spec"]


# ------------------------------------------------------------------ model_overrides entries
def _channel_values(v: list[float], name: str, positive: bool) -> list[float]:
    if len(v) not in (1, 3):
        raise ValueError(f"{name}: expected 3 values (R, G, B) or 1")
    if positive and any(x <= 0 for x in v):
        raise ValueError(f"{name}: expected values > 0")
    return v


class ModelOverride(BaseModel):
    """Per-classifier preprocessing and feature-layer overrides (``Preprocess`` fields)."""

    model_config = ConfigDict(extra="forbid")

    mean: list[Number] | None = None
    std: list[Number] | None = None
    input_size: PositiveInt | list[PositiveInt] | None = None
    interpolation: StrictStr | None = None
    crop_pct: Annotated[Number, Field(gt=0, le=2)] | None = None
    feature_layer: NonEmptyStr | None = None
    channels_last: StrictBool | None = None

    @field_validator("mean")
    @classmethod
    def _mean(cls, v):
        return None if v is None else _channel_values(v, "mean", positive=False)

    @field_validator("std")
    @classmethod
    def _std(cls, v):
        return None if v is None else _channel_values(v, "std", positive=True)

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, v):
        if isinstance(v, list) and (len(v) not in (2, 3) or (len(v) == 3 and v[0] != 3)):
            raise ValueError("input_size: expected N, [H, W] or [3, H, W]")
        return v

    @field_validator("interpolation")
    @classmethod
    def _interpolation(cls, v):
        from salbench.classifiers import INTERPOLATIONS

        if v is not None and v not in INTERPOLATIONS:
            raise ValueError("interpolation: unknown")
        return v


OVERRIDE_EXPECTED = {
    "mean": "3 numbers (R, G, B) or 1",
    "std": "3 numbers > 0 (R, G, B) or 1",
    "input_size": "a positive size N, [H, W] or [3, H, W]",
    "interpolation": "one of bilinear, bicubic, nearest, area, lanczos, random",
    "crop_pct": "a number in (0, 2]",
    "feature_layer": "a module name of the classifier, e.g. layer4 or conv_head",
    "channels_last": "true or false (this classifier's memory format, over the run's channels_last)",
}


# ------------------------------------------------------------------ the spec
def is_safe_run_name(name: str) -> bool:
    """A run name becomes a directory under the results root: no separators, no '..', not absolute."""
    return bool(name.strip()) and not (
        "/" in name or "\\" in name or name in (".", "..") or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
    )


class RunSpecModel(BaseModel):
    """The schema of ``salbench.config.RunSpec`` (same fields, same defaults)."""

    model_config = ConfigDict(extra="forbid")

    dataset: NonEmptyStr = "synthetic"
    methods: Annotated[list[NonEmptyStr], Field(min_length=1)] = ["*"]
    exclude_methods: list[NonEmptyStr] = []
    models: Annotated[list[NonEmptyStr], Field(min_length=1)] = ["zoo:*"]
    eval_models: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = None
    limit: PositiveInt | None = None
    binarize: NonEmptyStr = "mean_area"
    binarize_params: dict[StrictStr, Any] = {}
    box: NonEmptyStr = "largest"
    inpaint: NonEmptyStr = "telea"
    target: Literal["label", "predicted"] = "label"
    seed: Annotated[StrictInt, Field(ge=0, lt=2**32)] = 0
    batch_size: PositiveInt = 64
    device: NonEmptyStr = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    channels_last: StrictBool = False
    workers: Annotated[StrictInt, Field(ge=0)] = 0
    map_cache: NonEmptyStr | None = None
    map_precision: Literal["float32", "float16", "uint8"] = "float32"
    method_params: dict[StrictStr, dict[StrictStr, Any]] = {}
    metrics: Annotated[list[NonEmptyStr], Field(min_length=1)] = ["*"]
    exclude_metrics: list[NonEmptyStr] = []
    metric_params: dict[StrictStr, dict[StrictStr, Any]] = {}
    model_overrides: dict[StrictStr, ModelOverride] = {}
    name: NonEmptyStr | None = None
    plugins: list[NonEmptyStr] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v is not None and not is_safe_run_name(v):
            raise ValueError("name: not a plain directory name")
        return v


EXPECTED = {
    "dataset": "a dataset spec string, e.g. synthetic or imagenet:/path/to/val",
    "methods": "a non-empty list of method names or wildcards ('*' for every method)",
    "exclude_methods": "a list of method names or wildcards",
    "models": "a non-empty list of classifier specs (zoo:*, resnet50.a1_in1k, ...)",
    "eval_models": "a non-empty list of classifier specs (leave it out to use the source classifiers)",
    "limit": "a positive integer number of images",
    "binarize": "a binarization name (mean_area, alpha_mean, threshold)",
    "binarize_params": "a mapping of binarization parameters, e.g. {alpha: 1.0}",
    "box": "a box rule name (largest, all, grabcut)",
    "inpaint": "an inpainting backend name (telea, biharmonic, pushpull)",
    "target": "label or predicted",
    "seed": "an integer in [0, 2**32)",
    "batch_size": "a positive integer",
    "device": "a device name (auto, cpu, cuda, cuda:N)",
    "dtype": "float32, bfloat16 or float16",
    "channels_last": "true or false",
    "workers": "a non-negative integer number of processes",
    "map_cache": "a directory or 'auto'",
    "map_precision": "float32, float16 or uint8",
    "method_params": "a mapping of method name -> {parameter: value}",
    "metrics": "a non-empty list of metric names or wildcards ('*' for the default metrics)",
    "exclude_metrics": "a list of metric names or wildcards",
    "metric_params": "a mapping of metric name -> {parameter: value}",
    "model_overrides": "a mapping of classifier spec -> {mean, std, input_size, interpolation, crop_pct, feature_layer, channels_last}",
    "name": "a plain run name (no path separators, no '..', not absolute)",
    "plugins": "a list of plugin files (path/to/my_method.py) or module names (my_package.methods)",
}


def _lookup(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _message(err: dict[str, Any], data: dict[str, Any]) -> SpecError:
    loc = tuple(err["loc"])
    # the key path up to the first list index or union branch pydantic adds (e.g. 'int', 'list[int]')
    path: list[str] = []
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            break
        path.append(part)
        node = node[part]
    if not path:
        path = [str(loc[0])]
    field = path[0]
    if err["type"] == "extra_forbidden" and field == "model_overrides" and len(path) == 3:
        known = list(ModelOverride.model_fields)
        return SpecError(tuple(path), f"model_overrides.{path[1]}: unknown key {path[2]!r}{close_matches(path[2], known)}; known keys: {', '.join(known)}")
    value = _lookup(data, tuple(path))
    if field == "model_overrides" and len(path) >= 3:
        expected = OVERRIDE_EXPECTED.get(path[2], "")
    elif field == "model_overrides" and len(path) == 2:
        expected = "a mapping of " + ", ".join(OVERRIDE_EXPECTED)
    elif field in ("method_params", "metric_params") and len(path) == 2:
        expected = "a mapping of parameter name -> value"
    else:
        expected = EXPECTED.get(field, err["msg"])
    return SpecError(tuple(path), f"{'.'.join(map(str, path))}={value!r}: expected {expected}")


def validate_spec(data: dict[str, Any]) -> None:
    """Check a run spec's fields (a ``RunSpec``'s ``asdict``); raise the first error as a ``SpecError``."""
    try:
        RunSpecModel.model_validate(data)
    except ValidationError as exc:
        raise _message(exc.errors()[0], data) from None
    check_binarize_params(data["binarize"], data["binarize_params"])
    load_spec_plugins(data.get("plugins") or [])
    check_method_params(data["method_params"])
    check_metric_params(data["metric_params"])


def load_spec_plugins(sources: list[str]) -> None:
    """Load the spec's plugins now: the other keys (``methods``, ``method_params``) may name what
    they register. A plugin that fails is a ``SpecError`` on ``plugins``."""
    from salbench.plugins import load_plugin

    for i, source in enumerate(sources):
        try:
            load_plugin(source)
        except UsageError as exc:
            raise SpecError(("plugins",), f"plugins[{i}]: {exc}") from None


def check_binarize_params(rule: str, params: dict[str, Any]) -> None:
    """``binarize_params`` must be keyword parameters of the chosen rule, of its declared types."""
    from salbench.metrics.binarize import BINARIZERS

    try:
        fn = BINARIZERS.get(rule)
    except UsageError as exc:
        raise SpecError(("binarize",), f"binarize={rule!r}: {exc}") from None
    declared = {n: p for n, p in list(inspect.signature(fn).parameters.items())[1:]}
    for key, value in params.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise SpecError(("binarize_params", key), f"binarize_params.{key}={value!r}: binarization {rule!r} has no parameter {key!r}{close_matches(key, declared)}; its parameters: {known}")
        default = declared[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SpecError(("binarize_params", key), f"binarize_params.{key}={value!r}: expected a number")


def check_method_params(method_params: dict[str, dict[str, Any]]) -> None:
    """Every ``method_params`` entry names a registered method and is valid for its ``Params``."""
    from salbench.methods import METHODS
    from salbench.methods.base import check_params

    for method, params in method_params.items():
        try:
            cls = METHODS.get(method)
        except UsageError as exc:
            raise SpecError(("method_params", method), f"method_params.{method}: {exc}") from None
        try:
            check_params(cls, params)
        except SpecError as exc:
            raise SpecError(("method_params", method, *exc.path), f"method_params.{method}: {exc}") from None


def check_metric_params(metric_params: dict[str, dict[str, Any]]) -> None:
    """Every ``metric_params`` entry names a registered metric and is valid for its ``Params``."""
    from salbench.metrics import METRIC_REGISTRY
    from salbench.params import check_params

    for name, params in metric_params.items():
        try:
            cls = type(METRIC_REGISTRY.get(name))
        except UsageError as exc:
            raise SpecError(("metric_params", name), f"metric_params.{name}: {exc}") from None
        try:
            check_params("metric", name, cls.Params, params)
        except SpecError as exc:
            raise SpecError(("metric_params", name, *exc.path), f"metric_params.{name}: {exc}") from None
