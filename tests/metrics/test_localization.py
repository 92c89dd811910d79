import itertools

import pytest
import torch

from salbench.metrics.localization import (
    box_iou,
    box_pixel_ranges,
    box_sums,
    continuous_f1,
    localization_error,
    official_metric,
)


def T(x, device, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype, device=device)


def test_iou_hand_values(device):
    pred = T([[0, 0, 10, 10]], device)
    gt = T(
        [
            [
                [5, 0, 15, 10],  # offset by 5: 50 / 150
                [0, 0, 10, 10],  # identical
                [20, 20, 30, 30],  # disjoint
                [10, 0, 20, 10],  # touching edge: no overlap
                [2, 2, 7, 7],  # contained 5x5: 25 / 100
                [5, 5, 15, 15],  # diagonal offset: 25 / 175
                [3, 3, 3, 8],  # empty (zero width)
            ]
        ],
        device,
    )
    iou = box_iou(pred, gt)
    assert iou.shape == (1, 7) and iou.device.type == device.type
    expect = torch.tensor([[50 / 150, 1.0, 0.0, 0.0, 0.25, 25 / 175, 0.0]])
    torch.testing.assert_close(iou.cpu(), expect)


def test_iou_empty_pred_and_fractional(device):
    gt = T([[[0, 0, 0, 0], [0, 0, 4, 4]], [[0.5, 0.5, 2.5, 2.5], [0, 0, 1, 1]]], device)
    pred = T([[0, 0, 0, 0], [0.5, 0.5, 1.5, 2.5]], device)
    iou = box_iou(pred, gt).cpu()
    torch.testing.assert_close(iou, torch.tensor([[0.0, 0.0], [0.5, 0.25 / 2.75]]))


def test_le_threshold_is_inclusive_and_max_over_boxes(device):
    pred = T([[0, 0, 10, 10]] * 4, device)
    gt = T(
        [
            [[0, 0, 10, 5], [50, 50, 60, 60]],  # IoU exactly 0.5 -> hit
            [[0, 0, 10, 4], [50, 50, 60, 60]],  # IoU 0.4 -> miss
            [[50, 50, 60, 60], [1, 1, 10, 10]],  # second box hits (0.81)
            [[0, 0, 10, 10], [0, 0, 10, 10]],  # perfect, but both padding -> no valid GT
        ],
        device,
    )
    gt_valid = T([[True, True], [True, False], [True, True], [False, False]], device, torch.bool)
    pred_valid = T([True] * 4, device, torch.bool)
    le = localization_error(pred, pred_valid, gt, gt_valid)
    assert le.dtype == torch.float32
    assert le.cpu().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert localization_error(pred, pred_valid, gt, gt_valid, iou_threshold=0.3).cpu().tolist() == [0.0, 0.0, 0.0, 1.0]


def test_invalid_padding_box_does_not_count(device):
    pred = T([[0, 0, 10, 10]], device)
    gt = T([[[40, 40, 50, 50], [0, 0, 10, 10]]], device)
    le = localization_error(pred, T([True], device, torch.bool), gt, T([[True, False]], device, torch.bool))
    assert le.cpu().tolist() == [1.0]


def test_invalid_prediction_never_hits(device):
    # an (invalid) empty box, and an invalid flag on a box that would otherwise hit
    pred = T([[0, 0, 0, 0], [0, 0, 10, 10]], device)
    gt = T([[[0, 0, 10, 10]], [[0, 0, 10, 10]]], device)
    le = localization_error(pred, T([False, False], device, torch.bool), gt, T([[True], [True]], device, torch.bool))
    assert le.cpu().tolist() == [1.0, 1.0]


def test_om_truth_table(device):
    le = T([0.0, 0.0, 1.0, 1.0], device)
    correct = T([True, False, True, False], device, torch.bool)
    assert official_metric(le, correct).cpu().tolist() == [0.0, 1.0, 1.0, 1.0]
    # source_correct given as a 0/1 float (e.g. the top1 score) works the same
    assert official_metric(le, correct.float()).cpu().tolist() == [0.0, 1.0, 1.0, 1.0]


def _hand_map(device):
    m = torch.zeros(1, 4, 4, device=device)
    m[0, 0, 0] = 1.0
    m[0, 0, 1] = 0.5
    m[0, 1, 0] = 0.5
    m[0, 3, 3] = 1.0  # total mass 3
    return m


def test_f1_hand_computed(device):
    m = _hand_map(device)
    gt = T([[[0, 0, 2, 2], [0, 0, 4, 4], [3, 3, 4, 4]]], device)
    valid = T([[True, True, True]], device, torch.bool)
    inside, count = box_sums(m, gt)
    torch.testing.assert_close(inside.cpu().float(), torch.tensor([[2.0, 3.0, 1.0]]))
    torch.testing.assert_close(count.cpu().float(), torch.tensor([[4.0, 16.0, 1.0]]))
    # box 0: P = 2/3, R = 2/4 -> F1 = 2*(1/3)/(7/6) = 4/7
    # box 1: P = 1, R = 3/16 -> F1 = (6/16)/(19/16) = 6/19
    # box 2: P = 1/3, R = 1 -> F1 = (2/3)/(4/3) = 1/2
    f1, p, r = continuous_f1(m, gt, valid)
    torch.testing.assert_close(f1.cpu(), torch.tensor([4 / 7]))
    torch.testing.assert_close(p.cpu(), torch.tensor([2 / 3]))
    torch.testing.assert_close(r.cpu(), torch.tensor([0.5]))
    # without box 0 the best is box 2 (1/2 > 6/19), with its own P and R
    f1, p, r = continuous_f1(m, gt, T([[False, True, True]], device, torch.bool))
    torch.testing.assert_close(torch.stack([f1, p, r]).cpu()[:, 0], torch.tensor([0.5, 1 / 3, 1.0]))


def test_f1_degenerate_cases(device):
    m = torch.zeros(3, 4, 4, device=device)
    m[1, 0, 0] = 1.0
    m[2, 0, 0] = 1.0
    gt = T([[[0, 0, 2, 2]], [[2, 2, 4, 4]], [[0, 0, 2, 2]]], device)
    valid = T([[True], [True], [False]], device, torch.bool)
    f1, p, r = continuous_f1(m, gt, valid)
    # zero map -> 0; mass entirely outside the box -> P = R = 0 -> 0; no valid GT -> 0
    assert f1.cpu().tolist() == [0.0, 0.0, 0.0]
    assert p.cpu().tolist() == [0.0, 0.0, 0.0] and r.cpu().tolist() == [0.0, 0.0, 0.0]


def test_f1_perfect_mask_is_one(device):
    m = torch.zeros(1, 6, 6, device=device)
    m[0, 1:4, 2:5] = 1.0
    f1, p, r = continuous_f1(m, T([[[2, 1, 5, 4]]], device), T([[True]], device, torch.bool))
    torch.testing.assert_close(torch.stack([f1, p, r]).cpu()[:, 0], torch.ones(3))


def test_fractional_boxes_use_pixel_centres(device):
    ranges = box_pixel_ranges(T([[0.4, 0.0, 1.6, 1.0], [0.6, 0.5, 1.4, 1.5], [-3, -1, 99, 2.51]], device), h=5, w=6)
    # x: centres 0.5, 1.5 in [0.4, 1.6); none of them in [0.6, 1.4); y: centre 0.5 in [0.5, 1.5)
    assert ranges.cpu().tolist() == [[0, 0, 2, 1], [1, 0, 1, 1], [0, 0, 6, 3]]


def test_box_sums_match_brute_force_on_random_fractional_boxes(device):
    g = torch.Generator().manual_seed(0)
    h, w = 9, 11
    m = torch.rand(4, h, w, generator=g)
    raw = torch.rand(4, 6, 4, generator=g) * torch.tensor([w + 4, h + 4, w + 4, h + 4]) - 2
    boxes = torch.stack(
        [torch.minimum(raw[..., 0], raw[..., 2]), torch.minimum(raw[..., 1], raw[..., 3]),
         torch.maximum(raw[..., 0], raw[..., 2]), torch.maximum(raw[..., 1], raw[..., 3])], dim=-1
    )
    boxes[0, 0] = torch.tensor([2.0, 3.0, 7.0, 5.0])  # an integer box
    sums, counts = box_sums(m.to(device), boxes.to(device))
    cy = torch.arange(h)[:, None] + 0.5
    cx = torch.arange(w)[None, :] + 0.5
    for i, k in itertools.product(range(4), range(6)):
        x0, y0, x1, y1 = boxes[i, k].tolist()
        inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
        assert float(counts[i, k]) == int(inside.sum())
        assert float(sums[i, k]) == pytest.approx(float(m[i][inside].double().sum()), abs=1e-5)
    assert float(counts[0, 0]) == 10.0


def test_shapes_checked():
    with pytest.raises(ValueError):
        box_iou(torch.zeros(2, 4), torch.zeros(2, 4))
