import math

import pytest
import torch

from salbench.errors import UsageError
from salbench.metrics.binarize import BINARIZERS, alpha_mean, binarize, keep_counts, mean_area, threshold


def test_registry_names():
    assert BINARIZERS.names() == ["alpha_mean", "mean_area", "threshold"]
    with pytest.raises(UsageError, match="mean_area"):
        binarize(torch.zeros(1, 2, 2), "mean_aera")


def test_mean_area_exact_quarter(device):
    m = torch.zeros(1, 8, 8, device=device)
    m[0, :4, :4] = 1.0  # exactly 25% ones
    b = mean_area(m)
    assert b.dtype == torch.bool and b.device.type == device.type
    assert int(b.sum()) == 16
    assert torch.equal(b, m.bool())


def test_mean_area_float_noise_does_not_add_a_pixel(device):
    # 0.1 in float32 is 0.100000001490...; 100 of them sum to 10.00000015 -> a naive ceil keeps 11
    m = torch.full((1, 10, 10), 0.1, device=device)
    assert int(keep_counts(m)) == 10
    b = mean_area(m)
    assert int(b.sum()) == 10
    # ties broken in raster order: the first row is kept
    assert b[0, 0].all() and not b[0, 1:].any()


def test_mean_area_rounds_up_a_true_fraction(device):
    m = torch.zeros(1, 4, 4, device=device)
    m[0, 0, 0] = 0.5
    m[0, 3, 3] = 0.25  # mean * N = 0.75 -> ceil -> 1 pixel, the larger one
    b = mean_area(m)
    assert int(b.sum()) == 1 and bool(b[0, 0, 0])
    m[0, 1, 1] = 0.45  # mean * N = 1.2 -> ceil -> 2 (rounding would give 1)
    assert int(mean_area(m).sum()) == 2


def test_mean_area_counts_random_binary_masks(device):
    g = torch.Generator().manual_seed(0)
    for k in [0, 1, 7, 50, 99, 100]:
        perm = torch.randperm(100, generator=g)[:k]
        m = torch.zeros(100)
        m[perm] = 1
        m = m.view(1, 10, 10).to(device)
        b = mean_area(m)
        assert int(b.sum()) == k
        assert torch.equal(b, m.bool())


def test_mean_area_matches_float64_reference(device):
    g = torch.Generator().manual_seed(1)
    m = torch.rand(6, 13, 17, generator=g) ** 3
    b = mean_area(m.to(device)).cpu()
    for i in range(6):
        a = m[i].double().numpy()
        k = math.ceil(round(a.sum(), 6))
        assert int(b[i].sum()) == k
        # kept pixels are the k largest (no smaller value kept while a larger one is dropped)
        assert m[i][b[i]].min() >= m[i][~b[i]].max()


def test_mean_area_ties_stable_raster_order(device):
    m = torch.tensor([[[0.0, 0.6, 0.6], [0.6, 0.9, 0.6], [0.0, 0.0, 0.0]]], device=device)
    # sum = 3.3 -> 4 pixels: the 0.9, then the first three 0.6s in raster order
    b = mean_area(m).cpu()
    expect = torch.tensor([[[False, True, True], [True, True, False], [False, False, False]]])
    assert torch.equal(b, expect)


def test_mean_area_edge_cases(device):
    assert not mean_area(torch.zeros(2, 5, 5, device=device)).any()
    assert mean_area(torch.ones(2, 5, 5, device=device)).all()
    m = torch.zeros(2, 4, 4, device=device)
    m[1, 2, 2] = 1.0
    b = mean_area(m)
    assert int(b[0].sum()) == 0 and int(b[1].sum()) == 1 and bool(b[1, 2, 2])


def test_alpha_mean_semantics(device):
    m = torch.tensor([[[0.0, 0.2], [0.4, 0.6]]], device=device)  # mean 0.3
    assert torch.equal(alpha_mean(m).cpu(), torch.tensor([[[False, False], [True, True]]]))
    assert torch.equal(alpha_mean(m, alpha=2.0).cpu(), torch.tensor([[[False, False], [False, True]]]))
    # equality counts: a pixel exactly at alpha * mean is kept
    m2 = torch.tensor([[[0.0, 0.5], [0.5, 1.0]]], device=device)  # mean 0.5
    assert torch.equal(alpha_mean(m2).cpu(), torch.tensor([[[False, True], [True, True]]]))
    # per image, not per batch
    both = torch.stack([m[0], m[0] * 0.1])
    assert torch.equal(alpha_mean(both)[0], alpha_mean(both)[1])
    # the formula taken literally: a constant map keeps everything
    assert alpha_mean(torch.zeros(1, 3, 3, device=device)).all()
    assert torch.equal(binarize(m, "alpha_mean", alpha=2.0), alpha_mean(m, alpha=2.0))


def test_threshold_semantics(device):
    m = torch.tensor([[[0.49, 0.5], [0.51, 1.0]]], device=device)
    assert torch.equal(threshold(m).cpu(), torch.tensor([[[False, True], [True, True]]]))
    assert torch.equal(binarize(m, "threshold", t=0.9).cpu(), torch.tensor([[[False, False], [False, True]]]))


def test_default_is_mean_area(device):
    g = torch.Generator().manual_seed(2)
    m = torch.rand(3, 8, 9, generator=g).to(device)
    assert torch.equal(binarize(m), mean_area(m))


def test_rejects_wrong_rank():
    with pytest.raises(ValueError):
        mean_area(torch.zeros(4, 4))
