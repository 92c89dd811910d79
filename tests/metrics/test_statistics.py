import math

import numpy as np
import pytest
import torch

from salbench.metrics.statistics import area_std, mask_area, mask_entropy, total_variation


def test_area(device):
    m = torch.tensor([[[0.0, 1.0], [0.5, 0.5]], [[1.0, 1.0], [1.0, 1.0]]], device=device)
    assert mask_area(m).cpu().tolist() == [0.5, 1.0]


def test_total_variation_hand_computed(device):
    m = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.0, 0.5]]], device=device)
    # horizontal diffs: (1, 0), (0, 0.5) -> squares 1, 0, 0, 0.25 -> mean 1.25/4
    # vertical diffs: (0, -1, -0.5) -> squares 0, 1, 0.25 -> mean 1.25/3
    tv = total_variation(m)
    assert tv.device.type == device.type
    assert float(tv[0]) == pytest.approx(1.25 / 4 + 1.25 / 3)


def test_total_variation_constant_and_checkerboard(device):
    assert total_variation(torch.full((1, 5, 5), 0.3, device=device)).cpu().tolist() == [0.0]
    cb = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    assert total_variation(cb[None].float().to(device)).cpu().tolist() == [2.0]
    # a single row has no vertical pairs: only the horizontal term
    assert total_variation(torch.tensor([[[0.0, 1.0]]], device=device)).cpu().tolist() == [1.0]


def test_entropy_hand_computed(device):
    m = torch.tensor([[[0.5, 0.25], [0.0, 1.0]]], device=device)
    # -0.5 log2 0.5 = 0.5; -0.25 log2 0.25 = 0.5; 0 and 1 excluded; / 4 pixels
    assert float(mask_entropy(m)[0]) == pytest.approx(0.25)


def test_entropy_binary_map_is_zero_and_soft_map_positive(device):
    b = (torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float().to(device)
    assert mask_entropy(b).cpu().tolist() == [0.0, 0.0, 0.0]
    m = torch.full((1, 3, 3), 0.5, device=device)
    assert float(mask_entropy(m)[0]) == pytest.approx(0.5)
    assert not torch.isnan(mask_entropy(torch.zeros(1, 2, 2, device=device))).any()


def test_area_std_population():
    assert area_std([0.0, 1.0]) == pytest.approx(0.5)  # population std (ddof=0), not 0.707
    assert area_std(torch.tensor([0.2, 0.4, 0.6])) == pytest.approx(np.std([0.2, 0.4, 0.6]))
    assert area_std(np.array([0.3])) == 0.0
    assert area_std([0.0, float("nan"), 1.0]) == pytest.approx(0.5)
    assert math.isnan(area_std([]))


def test_area_std_from_mask_area(device):
    m = torch.stack([torch.zeros(4, 4), torch.ones(4, 4), torch.full((4, 4), 0.5)]).to(device)
    assert area_std(mask_area(m)) == pytest.approx(np.std([0.0, 1.0, 0.5]))
