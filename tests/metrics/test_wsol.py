"""Definition tests for MaxBoxAccV2 and PxAP (Choe et al. 2020; clovaai/wsolevaluation).

wsolevaluation is not pip-installable (a script repository), so the oracles are OpenCV's
``findContours(RETR_TREE)`` + ``boundingRect`` per mask (what its ``compute_bboxes_from_scoremaps``
calls) and torchmetrics' / scikit-learn's average precision on the pooled pixels."""

import math

import numpy as np
import pytest
import torch

from salbench.metrics.wsol import (
    best_iou_per_threshold,
    contour_boxes,
    max_box_acc_v2,
    minmax_normalize,
    pixel_average_precision,
    pixel_counts,
    sweep_thresholds,
)

H = W = 16


def _smooth_maps(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(H, W), mode="bilinear", align_corners=False)[:, 0]


def test_contour_boxes_match_opencv_find_contours_including_holes():
    cv2 = pytest.importorskip("cv2")
    ring = torch.zeros(1, 1, H, W, dtype=torch.bool)
    ring[0, 0, 2:10, 2:10] = True
    ring[0, 0, 4:6, 4:7] = False  # a hole: its contour box is (3, 3, 8, 7)
    ring[0, 0, 12:14, 13:15] = True  # a second component
    boxes, idx = contour_boxes(ring)
    assert sorted(map(tuple, boxes.int().tolist())) == [(2, 2, 10, 10), (3, 3, 8, 7), (13, 12, 15, 14)] and (idx == 0).all()
    fg = minmax_normalize(_smooth_maps(6))[:, None] > sweep_thresholds(10)[None, :, None, None]
    boxes, idx = contour_boxes(fg)
    for i, mask in enumerate(fg.reshape(-1, H, W)):
        found = cv2.findContours(mask.numpy().astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        ref = sorted((x, y, x + w, y + h) for x, y, w, h in map(cv2.boundingRect, found))
        assert sorted(map(tuple, boxes[idx == i].int().tolist())) == ref


def test_perfect_map_scores_100_and_known_ious():
    gt = torch.tensor([[[4.0, 4.0, 12.0, 12.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    perfect = torch.zeros(1, H, W)
    perfect[0, 4:12, 4:12] = 1.0
    iou = best_iou_per_threshold(perfect, gt, valid, sweep_thresholds(5))
    assert torch.equal(iou, torch.ones(1, 5))
    assert max_box_acc_v2([iou.double().numpy()], np.ones((1, 1)))[0] == 1.0
    half = torch.zeros(1, H, W)
    half[0, 4:12, 4:8] = 1.0  # half the GT box: IoU 0.5, a hit at 0.3 and 0.5, not at 0.7
    iou = best_iou_per_threshold(half, gt, valid, sweep_thresholds(5))
    assert torch.allclose(iou, torch.full((1, 5), 0.5))
    assert math.isclose(max_box_acc_v2([iou.double().numpy()], np.ones((1, 1)))[0], 2 / 3)
    # two blobs: the contour box of the right one matches (all contours count, not only the largest)
    two = torch.zeros(1, H, W)
    two[0, 0:2, 0:10] = 1.0  # the larger blob, far from the object
    two[0, 4:12, 4:12] = 0.6
    assert best_iou_per_threshold(two, gt, valid, torch.tensor([0.0]))[0, 0].item() == 1.0
    assert best_iou_per_threshold(torch.zeros(1, H, W), gt, valid, sweep_thresholds(4)).eq(0).all()  # flat: no contour


def test_max_box_acc_takes_the_best_threshold_per_iou_over_the_dataset():
    # 2 images x 3 thresholds; IoU >= .5 at t0 for image 0, at t2 for image 1: best accuracy 50% at d=.5
    iou = np.array([[0.9, 0.2, 0.1], [0.1, 0.4, 0.6]])
    expect = np.mean([0.5, 0.5, 0.5])  # per d the best threshold localises one of the two images
    assert math.isclose(max_box_acc_v2([iou], np.ones((1, 2)))[0], expect)
    w = np.array([[2.0, 0.0], [1.0, 1.0]])  # weights are image multiplicities (bootstrap resamples)
    assert np.allclose(max_box_acc_v2([iou], w), [np.mean([1.0, 1.0, 1.0]), expect])


def test_pxap_equals_torchmetrics_and_sklearn_on_pooled_pixels():
    tm = pytest.importorskip("torchmetrics.classification")
    maps = _smooth_maps(4, seed=3)
    masks = torch.zeros(4, H, W)
    masks[:, 3:11, 5:13] = 1
    masks[2, :, :] = 0
    masks[2, 0:4, 0:4] = 1
    t = sweep_thresholds(20)
    tp, fp = pixel_counts(maps, masks, t)
    ours = pixel_average_precision([tp.double().numpy(), fp.double().numpy()], np.ones((1, 4)))[0]
    norm = minmax_normalize(maps)
    ref = tm.BinaryAveragePrecision(thresholds=torch.cat([t, torch.ones(1)]))(norm.flatten(), masks.flatten().long()).item()
    assert math.isclose(ours, ref, rel_tol=1e-5)
    # on maps already on the threshold grid, binned AP is the exact AP (scikit-learn)
    sk = pytest.importorskip("sklearn.metrics")
    grid = torch.round(norm * 20) / 20
    tp, fp = pixel_counts(grid, masks, t)
    ours = pixel_average_precision([tp.double().numpy(), fp.double().numpy()], np.ones((1, 4)))[0]
    assert math.isclose(ours, sk.average_precision_score(masks.flatten().numpy(), grid.flatten().numpy()), rel_tol=1e-5)


def test_pxap_perfect_constant_and_no_positives():
    masks = torch.zeros(2, H, W)
    masks[:, 2:6, 2:6] = 1
    t = sweep_thresholds(10)
    tp, fp = pixel_counts(masks.clone(), masks, t)
    stats = [tp.double().numpy(), fp.double().numpy()]
    assert pixel_average_precision(stats, np.ones((1, 2)))[0] == 1.0
    tp, fp = pixel_counts(torch.full((2, H, W), 0.4), masks, t)  # flat -> zeros: precision = object share
    assert math.isclose(pixel_average_precision([tp.double().numpy(), fp.double().numpy()], np.ones((1, 2)))[0], 16 / 256)
    tp, fp = pixel_counts(masks, torch.zeros_like(masks), t)
    assert math.isnan(pixel_average_precision([tp.double().numpy(), fp.double().numpy()], np.ones((1, 2)))[0])


def test_per_dataset_sweep_sizes_and_validation():
    from salbench.errors import SpecError
    from salbench.metrics import select_metrics

    small = select_metrics(["maxboxacc", "pxap"], image_size=(64, 64))
    assert small["maxboxacc"].params.thresholds == 10 and small["pxap"].params.thresholds == 100
    assert select_metrics(["maxboxacc"], image_size=(224, 224))["maxboxacc"].params.thresholds == 50
    assert select_metrics(["maxboxacc"], params={"maxboxacc": {"thresholds": 30}})["maxboxacc"].params.thresholds == 30
    with pytest.raises(SpecError, match="thresholds=1"):
        select_metrics(["pxap"], params={"pxap": {"thresholds": 1}})
