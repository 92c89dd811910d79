"""Definition tests for the pointing game (Zhang et al. 2016, TorchRay's tolerance rule)."""

import math

import pytest
import torch

from salbench.datasets.base import Batch
from salbench.metrics import select_metrics
from salbench.metrics.base import MapContext
from salbench.metrics.pointing import box_hit_region, centre_pixels, default_tolerance, mask_hit_region, pointing_hits

H = W = 32
BOX = torch.tensor([[[10.0, 10.0, 20.0, 20.0]]])  # pixels 10..19 in both axes
VALID = torch.tensor([[True]])


def _peak(y, x):
    m = torch.zeros(1, H, W)
    m[0, y, x] = 1.0
    return m


def _torchray_hit(mask: torch.Tensor, point: tuple[int, int], tol: float) -> bool:
    """TorchRay's PointingGame.evaluate, restated: any mask pixel with squared distance < tol^2."""
    v, u = torch.meshgrid((torch.arange(mask.shape[0]).float() - point[1]) ** 2, (torch.arange(mask.shape[1]).float() - point[0]) ** 2,
                          indexing="ij")
    return bool((mask & ((v + u) < tol**2)).any())


@pytest.mark.parametrize(("y", "x", "hit"), [(15, 15, 1.0), (10, 19, 1.0), (15, 23, 1.0), (15, 24, 0.0), (22, 22, 1.0), (23, 22, 0.0), (2, 2, 0.0)])
def test_maximum_inside_or_within_the_tolerance_hits(device, y, x, hit):
    region = box_hit_region(BOX.to(device), VALID.to(device), H, W, 4.5)  # 4.5 px: 4 columns right of x=19 hit, the 5th not
    assert pointing_hits(_peak(y, x).to(device), region).item() == hit


def test_region_matches_torchray_for_boxes_and_masks():
    tol = 4.286
    region = box_hit_region(BOX, VALID, H, W, tol)[0]
    gt = torch.zeros(H, W, dtype=torch.bool)
    gt[10:20, 10:20] = True
    gt_mask = torch.zeros(1, H, W)
    gt_mask[0, 3:6, 25:30] = 1
    mregion = mask_hit_region(gt_mask, tol)[0]
    for y in range(H):
        for x in range(W):
            assert bool(region[y, x]) == _torchray_hit(gt, (x, y), tol)
            assert bool(mregion[y, x]) == _torchray_hit(gt_mask[0].bool(), (x, y), tol)


def test_any_box_counts_and_padding_never_hits():
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [28.0, 28.0, 32.0, 32.0], [14.0, 14.0, 18.0, 18.0]]])
    valid = torch.tensor([[True, True, False]])
    region = box_hit_region(boxes, valid, H, W, 1.0)
    assert pointing_hits(_peak(30, 30), region).item() == 1.0
    assert pointing_hits(_peak(15, 15), region).item() == 0.0  # the padded box is ignored


def test_ties_expected_share_or_torchray_first_maximum():
    region = box_hit_region(BOX, VALID, H, W, 1.0)
    m = torch.zeros(1, H, W)
    m[0, 0, 0] = m[0, 15, 15] = m[0, 12, 12] = m[0, 31, 31] = 1.0  # 2 of 4 maxima inside
    assert pointing_hits(m, region, "expected").item() == 0.5
    assert pointing_hits(m, region, "first").item() == 0.0  # raster-first maximum is (0, 0)
    flat = torch.full((1, H, W), 0.3)  # a constant map scores the share of the image that hits
    assert math.isclose(pointing_hits(flat, region).item(), region.float().mean().item(), rel_tol=1e-6)


def test_centre_control_and_defaults():
    assert centre_pixels(5, 5)[2, 2] and centre_pixels(5, 5).sum() == 1
    c = centre_pixels(4, 6)
    assert c.sum() == 4 and c[1:3, 2:4].all()
    assert math.isclose(default_tolerance((224, 224)), 15.0) and math.isclose(default_tolerance((64, 64)), 15 * 64 / 224)
    metric = select_metrics(["pointing"], image_size=(64, 64))["pointing"]
    assert math.isclose(metric.params.tolerance, 4.286)
    # centre box: the centre pixels hit; a corner box: they do not (chance level is per image)
    boxes = torch.tensor([[[12.0, 12.0, 20.0, 20.0]], [[0.0, 0.0, 4.0, 4.0]]])
    batch = Batch(index=torch.arange(2), ids=["a", "b"], images=torch.zeros(2, 3, H, W), labels=torch.zeros(2, dtype=torch.long),
                  boxes=boxes, box_valid=torch.ones(2, 1, dtype=torch.bool))
    maps = torch.rand(2, H, W, generator=torch.Generator().manual_seed(0))
    out = metric.compute(MapContext(maps=maps, binary=maps > 0.5, box=torch.zeros(2, 4), box_valid=torch.ones(2, dtype=torch.bool), batch=batch))
    assert out["pointing_centre"].tolist() == [1.0, 0.0]


def test_bad_parameters_are_one_line_errors():
    from salbench.errors import SpecError

    with pytest.raises(SpecError, match="ties='max'"):
        select_metrics(["pointing"], params={"pointing": {"ties": "max"}})
    with pytest.raises(SpecError, match="tolerance=0"):
        select_metrics(["pointing"], params={"pointing": {"tolerance": 0}})
