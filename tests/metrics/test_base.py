"""The metric registry, parametrised over every registered metric: a new metric module is tested
here without editing this file (its own definition test pins it to its paper)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from salbench.datasets.base import Batch
from salbench.metrics import METRIC_REGISTRY, MapContext, ScoreContext, metric_info, metrics_for, table_schema
from salbench.metrics.base import Metric, MetricInfo, descriptors, register_metric, unregister_metric
from salbench.metrics.binarize import binarize
from salbench.metrics.boxes import box_from_mask

B, H, W = 5, 16, 16


def _batch(device) -> Batch:
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[[2.0, 3.0, 10.0, 12.0], [0, 0, 0, 0]]]).repeat(B, 1, 1)
    valid = torch.tensor([[True, False]]).repeat(B, 1)
    masks = torch.zeros(B, H, W)
    masks[:, 3:12, 2:10] = 1
    return Batch(index=torch.arange(B), ids=[f"i{i}" for i in range(B)], images=torch.rand(B, 3, H, W, generator=g),
                 labels=torch.arange(B) % 3, boxes=boxes, box_valid=valid, gt_masks=masks).to(device)


class _PixelLinear(torch.nn.Module):
    """A pixel-space scorer for metrics that call classifiers: per-image products and sums, so its
    logits do not depend on the batch (a conv net's may, by float rounding)."""

    def __init__(self, seed: int, classes: int = 3):
        super().__init__()
        self.w = torch.randn(classes, 3, H, W, generator=torch.Generator().manual_seed(seed)) / 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] * self.w.to(x.device)).sum((2, 3, 4))


_SCORERS = {"src": _PixelLinear(10), "other": _PixelLinear(11)}


def _localization_values(batch: Batch, maps: torch.Tensor) -> dict[str, torch.Tensor]:
    b = binarize(maps, "mean_area")
    box, ok = box_from_mask(b, "largest")
    models = dict(classifiers=_SCORERS, source_model="src", eval_models=tuple(_SCORERS), shared={},
                  logits_clean={n: c(batch.images) for n, c in _SCORERS.items()})  # for metrics that need "model"
    ctx = MapContext(maps=maps, binary=b, box=box, box_valid=ok, batch=batch, source_correct=batch.index % 2 == 0, targets=batch.labels,
                     **models)
    for m in metrics_for("localization"):
        if m.applies(ctx):
            ctx.values.update(m.compute(ctx))
    return ctx.values


@pytest.mark.parametrize("name", METRIC_REGISTRY.names())
def test_declaration_matches_schema_and_descriptors(name):
    metric = METRIC_REGISTRY.get(name)
    schema = table_schema(metric.table)
    for col in metric.columns:
        assert schema.field(col.column).type == col.dtype
        assert col.description
        assert metric_info(col.name) is col
        if col.leaderboard or col.compare:
            assert col.aggregate is not None, f"{name}.{col.name}: shown or compared but not aggregated"
    for s in metric.summaries:
        assert set(s.sources or (s.source,)) <= {c.name for c in metric.columns}
        assert metric_info(s.name) is s


@pytest.mark.parametrize("name", [m.name for m in metrics_for("localization")])
def test_localization_metric_is_batched_and_batch_invariant(name, device):
    metric = METRIC_REGISTRY.get(name)
    batch = _batch(device)
    maps = torch.rand(B, H, W, generator=torch.Generator().manual_seed(1)).to(device)
    full = _localization_values(batch, maps)
    part = _localization_values(batch.select([1, 3]), maps[[1, 3]])
    for col in metric.columns:
        v = full[col.column]
        assert v.shape[0] == B and v.device.type == device.type
        torch.testing.assert_close(v[[1, 3]].cpu(), part[col.column].cpu(), rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: f"{col.name}: differs when the batch changes ({m})")  # NaN: undefined
        if col.percent:
            finite = v[torch.isfinite(v)]
            assert ((finite >= 0) & (finite <= 1)).all(), f"{col.name}: a percent metric outside [0, 1]"


@pytest.mark.parametrize("name", [m.name for m in metrics_for("agnosticism")])
def test_score_metric_is_batched(name, device):
    metric = METRIC_REGISTRY.get(name)
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(2)).to(device)
    labels = torch.tensor([0, 1, 2, 3, 4, 5], device=device)
    out = metric.compute(ScoreContext(logits, labels))
    sub = metric.compute(ScoreContext(logits[2:4], labels[2:4]))
    for col in metric.columns:
        assert out[col.column].shape == (6,)
        assert torch.allclose(out[col.column][2:4], sub[col.column])


@pytest.mark.parametrize("name", [m.name for m in metrics_for("sanity")])
def test_sanity_metric_is_batched_and_batch_invariant(name, device):
    from salbench.metrics.sanity import SanityContext

    metric = METRIC_REGISTRY.get(name)
    g = torch.Generator().manual_seed(3)
    original, other = torch.rand(B, H, W, generator=g).to(device), torch.rand(B, H, W, generator=g).to(device)
    out = metric.compute(SanityContext(original, other, "mprt"))
    sub = metric.compute(SanityContext(original[[1, 3]], other[[1, 3]], "mprt"))
    for col in metric.columns:
        v = out[col.column]
        assert v.shape == (B,) and v.device.type == device.type
        assert torch.allclose(v[[1, 3]], sub[col.column], atol=1e-5, equal_nan=True)


def test_metrics_that_need_gt_masks_are_skipped_without_them(device):
    batch = _batch(device)
    batch.gt_masks = None
    values = _localization_values(batch, torch.rand(B, H, W).to(device))
    needing = [c.column for m in metrics_for("localization") if "gt_masks" in m.needs for c in m.columns]
    assert needing and not set(needing) & set(values)


def test_registration_is_validated():
    with pytest.raises(ValueError, match="already exist"):
        @register_metric
        class Clash(Metric):  # noqa: F811
            name = "clash"
            columns = (MetricInfo("le", "lower", True, "x"),)
    with pytest.raises(ValueError, match="unknown needs"):
        @register_metric
        class BadNeeds(Metric):
            name = "bad_needs"
            needs = frozenset({"telepathy"})
            columns = (MetricInfo("bad", None, False, "x"),)
    with pytest.raises(ValueError, match="direction"):
        MetricInfo("x", "up", False, "")  # type: ignore[arg-type]
    assert "clash" not in METRIC_REGISTRY and "bad_needs" not in METRIC_REGISTRY


def test_requires_orders_metrics_and_unknown_requirements_fail():
    @register_metric
    class NeedsOm(Metric):
        name = "zz_needs_om"
        needs = frozenset({"source"})
        requires = ("om",)
        columns = (MetricInfo("zz", None, False, "x"),)

    try:
        order = [m.name for m in metrics_for("localization")]
        assert order.index("om") < order.index("zz_needs_om") and order.index("le") < order.index("om")
        assert "zz" in table_schema("localization").names and "zz" in descriptors()
    finally:
        unregister_metric("zz_needs_om")
    assert "zz" not in table_schema("localization").names

    @register_metric
    class Orphan(Metric):
        name = "zz_orphan"
        requires = ("nope",)
        columns = (MetricInfo("zz_o", None, False, "x"),)

    try:
        with pytest.raises(ValueError, match="requires 'nope'"):
            metrics_for("localization")
    finally:
        unregister_metric("zz_orphan")


def test_variant_summaries_flip_direction_where_a_good_map_removes_the_object():
    assert metric_info("masked_in_top1").direction == "higher"
    assert metric_info("masked_out_top1").direction == "lower" and metric_info("inpainted_top1").direction == "lower"
    assert metric_info("masked_out_ce").direction == "higher"
    assert metric_info("original_top1").leaderboard is False and metric_info("masked_in_top1").leaderboard is True
    assert isinstance(table_schema("agnosticism").field("entropy").type, pa.DataType)


# ---------------------------------------------------------------- run-time selection and parameters
def test_select_metrics_wildcards_requires_and_order():
    from salbench.metrics import select_metrics

    everything = select_metrics(["*"])
    assert list(everything) == [n for n in METRIC_REGISTRY.names() if METRIC_REGISTRY.get(n).default_selected]
    only_om = select_metrics(["om"])
    assert set(only_om) == {"om", "le"}  # OM reads LE: dependencies come along
    assert "le" in select_metrics(["*"], exclude=["le"])  # excluded but required by om
    assert "mask_energy" not in select_metrics(["*"], exclude=["mask_*"])


def test_select_metrics_refuses_unknown_names_and_bad_params():
    from salbench.errors import SpecError, UsageError
    from salbench.metrics import select_metrics

    with pytest.raises(UsageError, match="unknown metric 'lee'.*le"):
        select_metrics(["lee"])
    with pytest.raises(UsageError, match="no metrics left"):
        select_metrics(["le"], exclude=["*"])
    with pytest.raises(SpecError, match="metric 'le' has no parameter 'steps'"):
        select_metrics(["le"], params={"le": {"steps": 3}})


def test_metric_params_reach_the_configured_instance_beneath_the_spec(monkeypatch):
    from dataclasses import dataclass

    from salbench.metrics import select_metrics
    from salbench.metrics.base import Metric

    class Stepped(Metric):
        name = "stepped_probe"
        columns = (MetricInfo("stepped_probe", "higher", False, "probe", aggregate=None),)

        @dataclass(frozen=True)
        class Params:
            steps: int = 10
            fraction: float = 0.5

        @classmethod
        def defaults_for(cls, image_size):
            return {"steps": image_size[0] // 8}

    try:
        register_metric(Stepped)
        got = select_metrics(["stepped_probe"], params={"stepped_probe": {"fraction": 0.25}}, image_size=(64, 64))["stepped_probe"]
        assert got.params == Stepped.Params(steps=8, fraction=0.25)  # per-dataset default beneath the spec's value
        assert got.config() == {"name": "stepped_probe", "params": {"steps": 8, "fraction": 0.25}}
        from salbench.errors import SpecError

        with pytest.raises(SpecError, match="steps=True: expected an integer"):
            select_metrics(["stepped_probe"], params={"stepped_probe": {"steps": True}})
    finally:
        unregister_metric("stepped_probe")
