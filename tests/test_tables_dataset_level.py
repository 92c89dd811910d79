"""Dataset-level summaries (``MetricInfo(aggregate="dataset")``): value and bootstrap interval by
resampling images and reducing again, with the same draws as the per-image means."""

import math

import numpy as np
import pandas as pd
import pytest

from salbench.metrics import metric_info
from salbench.metrics.base import MetricInfo
from salbench.tables import bootstrap_many, dataset_summaries, dataset_value


def _mean_reduce(stats, weights):
    return (weights @ stats[0][:, 0]) / weights.sum(1)


def test_a_mean_reduce_reproduces_the_per_image_bootstrap():
    v = np.random.default_rng(1).random(37)
    info = MetricInfo("m", "higher", False, "mean as a dataset reduce", aggregate="dataset", sources=("x",), reduce=_mean_reduce, ci=True)
    value, lo, hi = dataset_value(info, [v[:, None]], n_boot=500, seed=3)
    blo, bhi = bootstrap_many([v], n_boot=500, seed=3)
    assert math.isclose(value, v.mean()) and math.isclose(lo, blo[0]) and math.isclose(hi, bhi[0])


def test_maxboxacc_interval_is_the_resampled_dataset_value():
    info = metric_info("maxboxacc")
    iou = np.random.default_rng(0).random((50, 6))
    value, lo, hi = dataset_value(info, [iou], n_boot=200, seed=0)
    assert math.isclose(value, np.mean([max((iou[:, t] >= d).mean() for t in range(6)) for d in (0.3, 0.5, 0.7)]))
    rng = np.random.default_rng(0)
    brute = [info.reduce([iou[rng.integers(0, 50, 50)]], np.ones((1, 50)))[0] for _ in range(200)]
    assert np.allclose([lo, hi], np.quantile(brute, [0.025, 0.975]))


def test_dataset_summaries_group_and_skip_null_statistics():
    rows = []
    for method, hit in (("good", 1.0), ("bad", 0.0)):
        for i in range(4):
            rows.append({"method": method, "source_model": "s", "image_id": f"{i}", "maxboxacc_iou": np.full(3, hit),
                         "pxap_tp": None, "pxap_fp": None})
    df = pd.DataFrame(rows)
    out = dataset_summaries(df, ["method", "source_model"], [metric_info("maxboxacc"), metric_info("pxap")], n_boot=50).set_index("method")
    assert out.at["good", "maxboxacc"] == 1.0 and out.at["bad", "maxboxacc"] == 0.0
    assert out.at["good", "maxboxacc_lo"] == 1.0 and math.isnan(out.at["good", "pxap"])


def test_a_dataset_aggregate_needs_sources_and_reduce():
    with pytest.raises(ValueError, match="sources and reduce"):
        MetricInfo("x", None, False, "x", aggregate="dataset", sources=("a",))
    with pytest.raises(ValueError, match="sources and reduce"):
        MetricInfo("x", None, False, "x", reduce=_mean_reduce, sources=("a",))
