"""The metric registry: one registered object per metric, from which tables and reports derive.

A metric (torchmetrics-style) is a small class with

* ``compute(ctx)``: a pure batched function on the device, returning one B-long tensor per
  output column;
* ``needs``: what it reads (``maps``, ``binary``, ``box``, ``gt_boxes``, ``gt_masks``, ``diagnostics`` (the method's),
  ``source``: the source classifier's clean prediction; ``eval``: an eval classifier's logits;
  ``model``: the classifiers themselves, to score perturbed images: deletion / insertion, ROAD);
* ``table``: which Parquet table its columns go to (``localization``: one row per image x
  method x source classifier; ``agnosticism``: one row per image x method x source x eval
  classifier x image variant; ``sanity``: one row per image x method x source x sanity test,
  on the first images of the run only, see ``metrics/sanity.py``);
* ``columns``: ``MetricInfo`` per output column: Arrow type, direction (higher / lower / none is
  better), unit (percent or not), how it is aggregated over images (``mean``; ``by_variant``:
  the agnosticism summary per image variant, cross-classifier and self; ``None``: stored only),
  whether the leaderboard shows it (with a 95% bootstrap interval or not) and whether
  ``salbench compare`` checks it;
* ``summaries``: extra dataset-level values derived from a column (e.g. ``area_std``), or from
  per-image sufficient statistics by a ``reduce`` function (``aggregate="dataset"``: MaxBoxAccV2,
  PxAP), which the leaderboard bootstraps by resampling images and reducing again.

Everything downstream reads the registry: the Parquet schemas (``table_schema``), the runner's
evaluation loop, the leaderboard and its HTML page, ``salbench compare`` and the parametrised
tests. A new metric is one new module in ``metrics/`` with a ``@register_metric`` class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch

from salbench.errors import UsageError, close_matches
from salbench.registry import Registry

Direction = Literal["lower", "higher"] | None
Aggregate = Literal["mean", "std", "by_variant", "dataset"] | None
AGGREGATES = ("mean", "std", "by_variant", "dataset", None)
#: ``reduce(stats, weights) -> values`` of a dataset-level summary: ``stats`` holds one n x k float64
#: array per ``sources`` column (row i: image i's statistics), ``weights`` is R x n (how often each
#: image is drawn: all ones for the point estimate, bootstrap counts for the interval); one value
#: per row of ``weights``.
Reducer = Callable[[list[np.ndarray], np.ndarray], np.ndarray]

TABLES = ("localization", "agnosticism", "sanity")
NEEDS = frozenset({"maps", "binary", "box", "gt_boxes", "gt_masks", "source", "eval", "diagnostics", "model"})
VARIANTS = ("original", "masked_in", "masked_out", "inpainted")
#: What a good map does to a classifier's score on each image variant: keep the object in the
#: masked-in image (+1: the score's own direction), remove it from masked-out and inpainted (-1).
VARIANT_GOAL = {"original": 1, "masked_in": 1, "masked_out": -1, "inpainted": -1}
#: The agnosticism variants the leaderboard shows (original is the reference, kept in the frame).
SHOWN_VARIANTS = ("masked_in", "masked_out", "inpainted")


@dataclass(frozen=True)
class MetricInfo:
    """One output column of a metric, or one derived summary: what tables and reports need."""

    name: str
    direction: Direction  # "lower" / "higher" is better; None: descriptive, no ranking
    percent: bool  # per-image values in [0, 1] shown x100 with a % sign
    description: str
    aggregate: Aggregate = "mean"
    ci: bool = False  # the leaderboard gives a bootstrap interval over images
    leaderboard: bool = False  # shown in the leaderboard (always present in leaderboard.json)
    compare: bool = False  # checked by ``salbench compare``
    header: str = ""  # leaderboard header; default: the name
    digits: int = 1
    dtype: pa.DataType = field(default=pa.float32(), compare=False)
    source: str = ""  # for summaries: the column they are computed from
    table_name: str = ""  # the name in the Parquet table when it differs (agnosticism 'entropy')
    sources: tuple[str, ...] = ()  # aggregate "dataset": the per-image statistic columns ``reduce`` reads
    reduce: Reducer | None = field(default=None, compare=False)  # aggregate "dataset": see ``Reducer``

    def __post_init__(self) -> None:
        if self.direction not in ("lower", "higher", None):
            raise ValueError(f"direction must be 'lower', 'higher' or None, got {self.direction!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if (self.aggregate == "dataset") != (self.reduce is not None and bool(self.sources)):
            raise ValueError(f"{self.name}: a 'dataset' aggregate needs both sources and reduce (and only it takes them)")

    @property
    def column(self) -> str:
        """The column's name in its Parquet table."""
        return self.table_name or self.name

    @property
    def arrow(self) -> str:
        """``↓`` / ``↑`` for column headers, empty when the metric does not rank."""
        return {"lower": "↓", "higher": "↑"}.get(self.direction or "", "")

    @property
    def higher_is_better(self) -> bool | None:
        return None if self.direction is None else self.direction == "higher"


@dataclass
class MapContext:
    """What a localization-table metric sees for one (method, source classifier) batch.

    ``values`` holds the columns computed so far (metrics listed in ``requires`` run first).
    ``source_correct`` and ``targets`` are None where the maps are shared by every source
    classifier (classifier-independent methods): metrics that need ``source`` run per source.
    Metrics that need ``model`` (they call classifiers on perturbed images) run per source too and
    read ``classifiers`` (every classifier of the run, pixel-space callables), ``source_model``,
    ``eval_models``, ``logits_clean`` (each classifier's logits on the clean batch, computed once)
    and ``shared`` (a per-batch cache for method-independent forwards, e.g. a blurred image's
    logits); they are skipped (null) where no classifiers are given.
    """

    maps: torch.Tensor  # B x H x W in [0, 1]
    binary: torch.Tensor  # B x H x W bool
    box: torch.Tensor  # B x 4 float32, pixel edges
    box_valid: torch.Tensor  # B bool
    batch: Any  # salbench.datasets.Batch on the device: images, labels, boxes, box_valid, gt_masks
    source_correct: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's, B-long (SaliencyMethod.attribute_with_diagnostics)
    classifiers: Mapping[str, Any] | None = None
    source_model: str | None = None
    eval_models: tuple[str, ...] = ()
    logits_clean: Mapping[str, torch.Tensor] | None = None
    shared: dict[Any, Any] | None = None


@dataclass
class ScoreContext:
    """What an agnosticism-table metric sees: an eval classifier's logits on one image variant."""

    logits: torch.Tensor  # B x C
    labels: torch.Tensor  # B


class Metric:
    """Base class of registered metrics; subclasses set the class attributes and ``compute``.

    Parameters (steps, fractions, tolerances) are a frozen ``Params`` dataclass, validated when the
    metric is configured for a run (``metric_params`` in the run spec, beneath per-dataset
    ``defaults_for``); the registry holds one default-configured instance per metric.
    """

    name: ClassVar[str] = ""
    table: ClassVar[str] = "localization"
    needs: ClassVar[frozenset[str]] = frozenset({"maps"})
    columns: ClassVar[tuple[MetricInfo, ...]] = ()
    summaries: ClassVar[tuple[MetricInfo, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # metrics whose columns ``compute`` reads from ctx.values
    description: ClassVar[str] = ""
    default_selected: ClassVar[bool] = True  # part of a run that asks for every metric ("*")

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params: Any):
        from salbench.params import check_params

        self.params = check_params("metric", self.name, self.Params, params)

    @classmethod
    def defaults_for(cls, image_size: tuple[int, int]) -> dict[str, Any]:
        """Parameter defaults suited to images of ``image_size`` (H, W); recorded in run.json."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "params": dataclasses.asdict(self.params)}

    def cost(self) -> tuple[float, float, float] | None:
        """Classifier passes per image and map, for metrics that call classifiers: (source
        forwards, source backwards, forwards per eval classifier other than the source).
        ``None`` for metrics that only read maps (priced as the localisation stage by
        ``salbench plan``)."""
        return None

    def compute(self, ctx: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def applies(self, ctx: Any) -> bool:
        """False where the batch lacks an input (no GT masks): the columns are null, not made up."""
        if "model" in self.needs and getattr(ctx, "classifiers", None) is None:
            return False
        if "gt_masks" in self.needs and getattr(ctx, "batch", None) is not None:
            return ctx.batch.gt_masks is not None
        return True

    @property
    def per_source(self) -> bool:
        return bool({"source", "model"} & self.needs)


METRIC_REGISTRY: Registry[Metric] = Registry("metric")


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: validate the declaration and register one instance under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a metric needs a name")
    if cls.table not in TABLES:
        raise ValueError(f"metric {cls.name!r}: table must be one of {TABLES}, got {cls.table!r}")
    unknown = set(cls.needs) - NEEDS
    if unknown:
        raise ValueError(f"metric {cls.name!r}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")
    if not cls.columns:
        raise ValueError(f"metric {cls.name!r} declares no columns")
    taken = {c.column for m in METRIC_REGISTRY._entries.values() if m.table == cls.table and m.name != cls.name for c in m.columns}
    clash = [c.column for c in cls.columns if c.column in taken | _fixed_names(cls.table)]
    if clash:
        raise ValueError(f"metric {cls.name!r}: column(s) {clash} already exist in the {cls.table} table")
    METRIC_REGISTRY.register(cls.name)(cls())
    return cls


def unregister_metric(name: str) -> None:
    """Remove a metric (for tests and plugins that registered a temporary one)."""
    METRIC_REGISTRY._entries.pop(name, None)


def metrics_for(table: str, selected: Mapping[str, Metric] | None = None) -> list[Metric]:
    """Metrics of ``table`` (registered ones, or the run's ``selected`` configured instances) in
    registration order, each after the metrics it ``requires``."""
    pool = METRIC_REGISTRY._entries if selected is None else selected
    mine = {n: m for n, m in pool.items() if m.table == table}
    done: dict[str, Metric] = {}

    def visit(m: Metric, path: tuple[str, ...]) -> None:
        if m.name in done:
            return
        if m.name in path:
            raise ValueError(f"metrics require each other in a cycle: {' -> '.join((*path, m.name))}")
        for r in m.requires:
            if r not in mine:
                raise ValueError(f"metric {m.name!r} requires {r!r}, which is not a registered {table} metric")
            visit(mine[r], (*path, m.name))
        done[m.name] = m

    for m in mine.values():
        visit(m, ())
    return list(done.values())


def select_metrics(patterns: Iterable[str], exclude: Iterable[str] = (), params: Mapping[str, Mapping[str, Any]] | None = None,
                   image_size: tuple[int, int] = (64, 64)) -> dict[str, Metric]:
    """The metrics a run computes, configured: names/wildcards minus ``exclude``, plus every metric
    they ``require``; each created with its ``defaults_for(image_size)`` beneath ``params[name]``.

    ``["*"]`` means the metrics marked ``default_selected``. Unknown names (in ``params`` too) are
    a ``UsageError`` naming close matches. The result keeps registration order.
    """
    patterns, exclude, params = list(patterns), list(exclude), dict(params or {})
    names = METRIC_REGISTRY.select(patterns, exclude=exclude or None)
    if patterns == ["*"]:
        names = [n for n in names if METRIC_REGISTRY.get(n).default_selected]
    if not names:
        raise UsageError(f"no metrics left: metrics={patterns} minus exclude_metrics={exclude}")
    for n in params:
        METRIC_REGISTRY.get(n)  # unknown name: one line with close matches
    chosen = set(names)
    todo = list(names)
    while todo:  # dependencies come along even when excluded: OM cannot run without LE
        for r in METRIC_REGISTRY.get(todo.pop()).requires:
            if r not in chosen:
                chosen.add(r)
                todo.append(r)
    out: dict[str, Metric] = {}
    for n in METRIC_REGISTRY.names():
        if n in chosen:
            cls = type(METRIC_REGISTRY.get(n))
            out[n] = cls(**{**cls.defaults_for(tuple(image_size)), **params.get(n, {})})
    return out


# ----------------------------------------------------------------------------- schemas
ID_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "localization": [("run_id", pa.string()), ("dataset", pa.string()), ("image_index", pa.int64()), ("image_id", pa.string()),
                     ("label", pa.int64()), ("method", pa.string()), ("source_model", pa.string()), ("binarize", pa.string())],
    "agnosticism": [("run_id", pa.string()), ("dataset", pa.string()), ("image_index", pa.int64()), ("image_id", pa.string()),
                    ("label", pa.int64()), ("method", pa.string()), ("source_model", pa.string()), ("eval_model", pa.string()),
                    ("variant", pa.string()), ("inpaint", pa.string())],
    # sanity checks (metrics/sanity.py): only the first images of a run; test "mprt" (depth: layer
    # groups randomised from the top, of ``groups``; ``layers``: the deepest one) or "random_logit"
    "sanity": [("run_id", pa.string()), ("dataset", pa.string()), ("image_index", pa.int64()), ("image_id", pa.string()),
               ("label", pa.int64()), ("method", pa.string()), ("source_model", pa.string()), ("test", pa.string()),
               ("depth", pa.int32()), ("groups", pa.int32()), ("layers", pa.string())],
}
TAIL_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "localization": [("target", pa.int64()), ("source_correct", pa.bool_()), ("error", pa.string())],
    "agnosticism": [("error", pa.string())],
    "sanity": [("target", pa.int64()), ("error", pa.string())],
}


def _fixed_names(table: str) -> set[str]:
    return {n for n, _ in ID_COLUMNS[table] + TAIL_COLUMNS[table]}


def table_schema(table: str) -> pa.Schema:
    """The Parquet schema of ``table``: id columns, every registered metric's columns, tail columns."""
    if table not in TABLES:
        raise UsageError(f"unknown table {table!r}{close_matches(table, TABLES)}; known: {', '.join(TABLES)}")
    fields = list(ID_COLUMNS[table])
    for m in metrics_for(table):
        fields += [(c.column, c.dtype) for c in m.columns]
    fields += TAIL_COLUMNS[table]
    return pa.schema(fields)


def metric_columns(table: str) -> list[MetricInfo]:
    """Every registered output column of ``table``, in schema order."""
    return [c for m in metrics_for(table) for c in m.columns]


# ----------------------------------------------------------------------------- descriptors
def variant_summary(score: MetricInfo, variant: str) -> MetricInfo:
    """The agnosticism summary ``<variant>_<score>``: direction flipped where a good map removes the object."""
    d = score.direction
    if d is not None and VARIANT_GOAL[variant] < 0:
        d = "lower" if d == "higher" else "higher"
    what = {"original": "on the clean image (reference)", "masked_in": "when only the mask is kept: the object must survive",
            "masked_out": "when the mask is blacked out: the object must be gone",
            "inpainted": "when the mask is inpainted: gone without a black hole"}[variant]
    label = variant.replace("_", "-")
    return MetricInfo(f"{variant}_{score.name}", d, score.percent, f"{score.description} {what}", aggregate="by_variant",
                      ci=score.ci, leaderboard=score.leaderboard and variant in SHOWN_VARIANTS, compare=score.compare,
                      header=f"{label} {score.header or score.name}", digits=score.digits, source=score.name)


def descriptors() -> dict[str, MetricInfo]:
    """Every name a report, ``compare`` or ``--paired-metric`` can use: columns, summaries, variant summaries."""
    out: dict[str, MetricInfo] = {}
    for m in METRIC_REGISTRY._entries.values():
        for c in m.columns:
            out.setdefault(c.name, c)
            if c.aggregate == "by_variant":
                for v in VARIANTS:
                    s = variant_summary(c, v)
                    out.setdefault(s.name, s)
        for s in m.summaries:
            out.setdefault(s.name, s)
    return out


class _Descriptors(Mapping[str, MetricInfo]):
    """Read-only live view of ``descriptors()`` (so ``METRICS[name]`` sees metrics registered later)."""

    def __getitem__(self, name: str) -> MetricInfo:
        return descriptors()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(descriptors())

    def __len__(self) -> int:
        return len(descriptors())


METRICS = _Descriptors()


def metric_info(name: str) -> MetricInfo:
    """The descriptor of ``name``; an unknown name is a ``UsageError`` naming close matches."""
    known = descriptors()
    try:
        return known[name]
    except KeyError:
        raise UsageError(f"unknown metric {name!r}{close_matches(name, known)}; known: {', '.join(known)}") from None


def localization_summaries() -> list[MetricInfo]:
    """Leaderboard values of the localization table: column means, then derived summaries."""
    cols = [c for c in metric_columns("localization") if c.aggregate == "mean"]
    extra = [s for m in metrics_for("localization") for s in m.summaries]
    return cols + extra


def sanity_summaries() -> list[MetricInfo]:
    """Leaderboard values of the sanity table (one per test, e.g. ``mprt_spearman``)."""
    return [s for m in metrics_for("sanity") for s in m.summaries]


def variant_scores() -> list[MetricInfo]:
    """Agnosticism-table columns summarised per image variant (cross-classifier and self)."""
    return [c for c in metric_columns("agnosticism") if c.aggregate == "by_variant"]
