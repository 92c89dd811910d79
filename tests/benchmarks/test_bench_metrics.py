"""The metric hot paths on a batch of 16 maps at 64x64."""

from __future__ import annotations

import pytest
import torch

from salbench.metrics import agnosticism, binarize, boxes, localization, statistics


@pytest.mark.parametrize("rule", sorted(binarize.BINARIZERS.names()))
def test_binarize(benchmark, rule, maps64):
    m = maps64[0]
    benchmark.group = "metrics"
    b = benchmark(binarize.binarize, m, rule)
    assert b.shape == m.shape and b.dtype == torch.bool


@pytest.mark.parametrize("rule", sorted(boxes.BOX_RULES.names()))
def test_box_from_mask(benchmark, rule, maps64):
    m, x, _, _ = maps64
    b = binarize.binarize(m, "mean_area")
    benchmark.group = "metrics"
    box, valid = benchmark(boxes.box_from_mask, b, rule, saliency=m, images=x)
    assert box.shape == (len(m), 4) and valid.shape == (len(m),)


def test_localization(benchmark, maps64):
    m, _, gt, gt_valid = maps64
    box, valid = boxes.box_from_mask(binarize.binarize(m), "largest")
    correct = torch.ones(len(m), dtype=torch.bool)

    def run():
        le = localization.localization_error(box, valid, gt, gt_valid)
        return localization.official_metric(le, correct), localization.continuous_f1(m, gt, gt_valid)

    benchmark.group = "metrics"
    om, (f1, _p, _r) = benchmark(run)
    assert om.shape == f1.shape == (len(m),)


def test_statistics(benchmark, maps64):
    m = maps64[0]
    benchmark.group = "metrics"
    out = benchmark(lambda: (statistics.mask_area(m), statistics.total_variation(m), statistics.mask_entropy(m)))
    assert all(v.shape == (len(m),) for v in out)


@pytest.mark.parametrize("variant", ["masked_in", "masked_out"])
def test_compose(benchmark, variant, maps64):
    m, x, _, _ = maps64
    b = binarize.binarize(m)
    benchmark.group = "metrics"
    out = benchmark(agnosticism.compose, x, b, variant)
    assert out.shape == x.shape


def test_classification_scores(benchmark):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(256, 1000, generator=g), torch.randint(0, 1000, (256,), generator=g)
    benchmark.group = "metrics"
    s = benchmark(agnosticism.classification_scores, logits, labels)
    assert s["top1"].shape == (256,)
