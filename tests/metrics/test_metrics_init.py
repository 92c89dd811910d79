"""Tests for ``salbench.metrics`` itself (metrics/__init__.py): descriptors and aggregation."""

import math

import numpy as np
import pytest
import torch

from salbench.errors import UsageError
from salbench.metrics import METRICS, MeanAccumulator, MetricInfo, bootstrap_ci, metric_info


def test_descriptor_table():
    expect = {
        "le": ("lower", True),
        "om": ("lower", True),
        "f1": ("higher", True),
        "top1": ("higher", True),
        "top5": ("higher", True),
        "ce": ("lower", False),
        "area": (None, False),
        "area_std": (None, False),
        "tv": (None, False),
        "entropy": (None, False),
        "masked_in_top1": ("higher", True),
        "masked_out_top1": ("lower", True),
        "inpainted_top1": ("lower", True),
        "original_top1": ("higher", True),
    }
    for name, (direction, percent) in expect.items():
        info = METRICS[name]
        assert info.name == name and info.direction == direction and info.percent == percent
        assert info.description
    for name in ("precision", "recall", "pred_entropy"):
        assert name in METRICS
    assert METRICS["le"].arrow == "↓" and METRICS["f1"].arrow == "↑" and METRICS["tv"].arrow == ""
    assert METRICS["f1"].higher_is_better is True and METRICS["area"].higher_is_better is None


def test_metric_info_is_frozen_and_validated():
    with pytest.raises(Exception):
        METRICS["le"].direction = "higher"  # type: ignore[misc]
    with pytest.raises(ValueError):
        MetricInfo("x", "up", False, "")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="top1"):
        metric_info("top_1")


def test_mean_accumulator():
    acc = MeanAccumulator(name="le")
    assert acc.direction == "lower" and acc.state_names == ("sum", "count")
    assert math.isnan(acc.compute())
    acc.update(torch.tensor([1.0, 0.0, 1.0]))
    acc.update(np.array([0.0]))
    acc.update([1.0, float("nan")])  # NaN (a failed image) is skipped
    assert acc.compute() == pytest.approx(3 / 5)
    other = MeanAccumulator("lower")
    other.update(torch.ones(5))
    acc.merge(other)
    assert acc.compute() == pytest.approx(8 / 10)
    acc.reset()
    assert math.isnan(acc.compute())
    strict = MeanAccumulator(ignore_nan=False)
    strict.update([1.0, float("nan")])
    assert math.isnan(strict.compute())
    with pytest.raises(ValueError):
        MeanAccumulator("up")  # type: ignore[arg-type]


def test_mean_accumulator_on_device(device):
    acc = MeanAccumulator("higher")
    acc.update(torch.tensor([0.25, 0.75], device=device))
    assert acc.sum.device.type == device.type
    assert acc.compute() == pytest.approx(0.5)


def test_bootstrap_ci_deterministic_and_sane():
    rng = np.random.default_rng(0)
    v = (rng.random(400) < 0.3).astype(float)
    lo, hi = bootstrap_ci(v, n_boot=500, seed=1)
    assert (lo, hi) == bootstrap_ci(torch.tensor(v), n_boot=500, seed=1)  # numpy or torch, same seed
    assert lo < v.mean() < hi
    # about +-1.96 standard errors
    se = v.std() / np.sqrt(v.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci(v, n_boot=500, seed=2) != (lo, hi)
    assert bootstrap_ci([0.4] * 10) == pytest.approx((0.4, 0.4))
    assert all(math.isnan(t) for t in bootstrap_ci([]))
    narrow = bootstrap_ci(v, n_boot=500, alpha=0.5, seed=1)
    assert lo <= narrow[0] <= narrow[1] <= hi
