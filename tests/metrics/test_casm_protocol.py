"""Conformance of ``salbench.metrics.casm_protocol`` with the official CASM scoring.

``_official_image`` below is a direct transcription of kondiz/casme's per-image procedure
(``model_basics.binarize_mask`` / ``get_rectangular_mask`` and ``score.get_loc_scores`` /
``compute_f1`` / ``compute_iou``) in NumPy, scipy and torch, one image at a time; the batched
metric must agree with it image by image. The hand-built cases pin each rule on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from salbench.datasets.base import Batch
from salbench.metrics import METRIC_REGISTRY, MapContext
from salbench.metrics.binarize import keep_counts
from salbench.metrics.boxes import largest_component, tight_boxes
from salbench.metrics.casm_protocol import official_binarize, official_box, official_box_mask, official_scores


# ----------------------------------------------------------------------------- the official procedure
def _clip(x, a, b):
    if x < a:
        return a
    if x > b:
        return b
    return x


def _official_binary(m: np.ndarray, device="cpu") -> np.ndarray:
    """model_basics.binarize_mask on one float32 H x W mask (float32 H x W of 0 / 1). As in the
    official code the mean is taken on the device the masks live on (it differs in the last bits
    between CPU and CUDA), the kth value on the CPU."""
    h, w = m.shape
    mask = torch.from_numpy(m)[None, None].to(device)
    avg = F.avg_pool2d(mask, (h, w), stride=1).squeeze()
    flat = mask.cpu().view(1, -1)[0]
    kth = 1 + int((flat.size(0) - 1) * (1 - avg.item()) + 0.5)
    th, _ = torch.kthvalue(flat, kth)
    th.clamp_(1e-6, 1 - 1e-6)
    return flat.gt(th).float().view(h, w).numpy()


def _official_rect(m: np.ndarray, device="cpu") -> np.ndarray:
    """The official rectangular mask (float32 H x W) of one float32 H x W continuous mask."""
    h, w = m.shape
    binary = _official_binary(m, device)
    # model_basics.get_rectangular_mask (skipped for an empty binary mask)
    rect = binary.copy()
    if rect.sum() != 0:
        lab, _ = scipy.ndimage.label(binary)
        largest = np.argmax(np.bincount(lab.reshape(-1), weights=binary.reshape(-1)))
        lc = lab == largest
        x, y = lc.any(1), lc.any(0)
        xmin, xmax = np.argmax(x), np.argmax(np.cumsum(x))
        ymin, ymax = np.argmax(y), np.argmax(np.cumsum(y))
        rect = np.zeros((h, w), dtype=np.float32)
        rect[xmin : xmax + 1, ymin : ymax + 1] = 1
    return rect


def _official_image(m: np.ndarray, boxes: list[list[int]], correct: bool, device="cpu") -> tuple[float, float, float, np.ndarray]:
    """(F1, LE, OM, rectangular mask) of one float32 H x W mask; ``boxes`` already int() (unclipped)."""
    h, w = m.shape
    rect = _official_rect(m, device)
    # score.get_loc_scores per box (224 generalised to w for x and h for y)
    f1s, hits = [], []
    for xmin, ymin, xmax, ymax in boxes:
        size = (xmax - xmin) * (ymax - ymin)
        xmin_c, xmax_c = _clip(xmin, 0, w), _clip(xmax, 0, w)
        ymin_c, ymax_c = _clip(ymin, 0, h), _clip(ymax, 0, h)
        if xmin_c == xmax_c or ymin_c == ymax_c:
            f1s.append(0)
            hits.append(0)
            continue
        gt = np.zeros((h, w))
        gt[ymin_c:ymax_c, xmin_c:xmax_c] = 1
        inside = (m * gt).sum()
        precision = inside / (m.sum() + 1e-6)
        recall = inside / size
        f1s.append((2 * precision * recall) / (precision + recall + 1e-6))
        inter = (rect * gt).sum()
        hits.append(1 * (inter / (rect.sum() + size - inter) > 0.5))
    f1 = float(np.array(f1s).max())
    le = 1 - float(np.array(hits).max())
    om = 1 - float(np.array(hits).max() * correct)
    return f1, le, om, rect


def _scores(m: torch.Tensor, boxes, correct=None, device="cpu"):
    gt = torch.tensor(boxes, dtype=torch.float32).reshape(m.shape[0], -1, 4)
    valid = torch.ones(gt.shape[:2], dtype=torch.bool)
    c = torch.ones(m.shape[0], dtype=torch.bool) if correct is None else torch.as_tensor(correct)
    out = official_scores(m.to(device), gt.to(device), valid.to(device), c.to(device))
    return {k: v.cpu() for k, v in out.items()}


def _block(h=32, w=32, rows=(0, 8), cols=(0, 8)) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[0, rows[0] : rows[1], cols[0] : cols[1]] = 1
    return m


# ----------------------------------------------------------------------------- binarisation
def test_ties_at_the_threshold_are_all_dropped(device):
    # N = 16: 3 x 0.9, 5 x 0.5, 8 x 0 -> avg 0.325, kth = 1 + int(15 * 0.675 + 0.5) = 11 -> the 11th
    # smallest is 0.5 (ranks 9..13): only the values strictly above it survive
    vals = torch.tensor([0.9] * 3 + [0.5] * 5 + [0.0] * 8)
    m = vals[torch.randperm(16, generator=torch.Generator().manual_seed(0))].view(1, 4, 4).to(device)
    b = official_binarize(m)
    assert b.sum().item() == 3 and bool((m[b] == 0.9).all())
    assert int(keep_counts(m)[0]) == 6  # salbench's mean_area keeps ceil(5.2) = 6 pixels: 3 of the ties too


def test_a_mask_made_of_its_kth_value_keeps_nothing(device):
    m = torch.full((1, 8, 8), 0.5, device=device)
    b = official_binarize(m)
    assert not b.any()
    # one larger value on top of the repeated kth value: it alone survives
    m2 = m.clone()
    m2[0, 3, 4] = 0.75
    b2 = official_binarize(m2)
    assert b2.sum().item() == 1 and bool(b2[0, 3, 4])
    s = _scores(m.cpu(), [[0, 0, 8, 8]], device=device)
    assert s["casm_le"].item() == 1.0 and s["casm_om"].item() == 1.0  # no rectangle: a miss even on a box covering everything


def test_clamp_all_ones_keeps_everything_and_all_zeros_nothing(device):
    # the official clamp puts th at 1 - 1e-6 for a mask of ones; 1 > 1 - 1e-6, so every pixel is kept and
    # the rectangle is the whole image (the official code's 'max' baseline is exactly that rectangle)
    ones = torch.ones(1, 16, 16, device=device)
    assert official_binarize(ones).all()
    assert official_box_mask(official_binarize(ones)).all()
    s = _scores(ones.cpu(), [[0, 0, 16, 9]], device=device)  # IoU 144/256 > 0.5
    assert s["casm_le"].item() == 0.0
    s = _scores(ones.cpu(), [[0, 0, 16, 8]], device=device)  # IoU exactly 0.5
    assert s["casm_le"].item() == 1.0
    # a mask of zeros: th clamps up to 1e-6, nothing is above it: an empty binary mask, a miss, F1 0
    zeros = torch.zeros(1, 16, 16, device=device)
    assert not official_binarize(zeros).any() and not official_box_mask(official_binarize(zeros)).any()
    s = _scores(zeros.cpu(), [[0, 0, 16, 16]], device=device)
    assert (s["casm_le"].item(), s["casm_om"].item(), s["casm_f1"].item()) == (1.0, 1.0, 0.0)
    # values between 1e-6 and the lowest kept value: a tiny positive mask keeps its positive pixels only
    tiny = torch.zeros(1, 16, 16, device=device)
    tiny[0, 2:4, 2:4] = 1e-7  # below the clamp: th = 1e-6, nothing kept
    assert not official_binarize(tiny).any()


def test_kth_follows_the_float32_mean_of_the_official_code(device):
    # The official avg is a float32 avg_pool2d: on noise masks it is ~1e-6 off the exact mean, enough to move
    # kth by one on a few images in 64. The binarisation must follow the float32 value, not the exact one.
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(64, 224, 224, generator=g)
    n = 224 * 224
    exact = torch.floor((n - 1) * (1 - masks.double().mean((1, 2))) + 0.5)
    f32 = torch.floor((n - 1) * (1 - F.avg_pool2d(masks[:, None].to(device), 224, stride=1).flatten().double().cpu()) + 0.5)
    assert (exact != f32).any()  # the case this test is about is present
    b = official_binarize(masks.to(device)).cpu()
    for i in torch.nonzero(exact != f32).flatten().tolist() + [0, 1]:
        assert torch.equal(b[i], torch.from_numpy(_official_binary(masks[i].numpy(), device).astype(bool))), i


# ----------------------------------------------------------------------------- IoU and the GT boxes
def test_iou_exactly_half_misses_and_just_above_hits(device):
    m = _block()  # an 8 x 8 block of ones: binary = the block, rectangle 64 pixels
    assert official_box_mask(official_binarize(m.to(device))).sum().item() == 64
    s = _scores(m, [[0, 0, 8, 16]], device=device)  # 64 / 128 = 0.5: a miss (salbench's >= 0.5 counts it)
    assert s["casm_le"].item() == 1.0
    s = _scores(m, [[0, 0, 8, 15]], device=device)  # 64 / 120 > 0.5: a hit
    assert s["casm_le"].item() == 0.0 and s["casm_om"].item() == 0.0
    s = _scores(m, [[0, 0, 8, 15]], correct=[False], device=device)
    assert s["casm_le"].item() == 0.0 and s["casm_om"].item() == 1.0


def test_boxes_crossing_the_border_use_the_unclipped_area(device):
    m = _block()  # rectangle = pixels [0, 8) x [0, 8), sum(m) = 64
    # unclipped (-8, 0, 8, 8): area 16 * 8 = 128; clipped pixels [0, 8) x [0, 8) = 64
    s = _scores(m, [[-8, 0, 8, 8]], device=device)
    assert s["casm_le"].item() == 1.0  # IoU = 64 / (64 + 128 - 64) = 0.5 (clipped it would be 1.0)
    p, r = 64 / (64 + 1e-6), 64 / 128
    assert s["casm_f1"].item() == pytest.approx(2 * p * r / (p + r + 1e-6), abs=1e-6)  # ~ 0.6667, not ~1
    # (-4, 0, 8, 8): area 96, IoU 64 / 96: a hit
    s = _scores(m, [[-4, 0, 8, 8]], device=device)
    assert s["casm_le"].item() == 0.0
    # float boxes are truncated toward zero like int(): -4.9 -> -4, 8.9 -> 8
    s2 = _scores(m, [[-4.9, 0.7, 8.9, 8.2]], device=device)
    assert s2["casm_le"].item() == 0.0 and s2["casm_f1"].item() == pytest.approx(s["casm_f1"].item(), abs=1e-7)


def test_two_equal_components_the_first_in_raster_order_wins(device):
    m = torch.zeros(1, 32, 32)
    m[0, 10:13, 2:5] = 1  # left, lower
    m[0, 2:5, 20:23] = 1  # right, upper: its first pixel comes first in raster order
    b = official_binarize(m.to(device))
    box, ok = official_box(b)
    assert bool(ok[0]) and box[0].tolist() == [20.0, 2.0, 23.0, 5.0]
    assert tight_boxes(largest_component(b))[0][0].tolist() == [20.0, 2.0, 23.0, 5.0]  # the device labelling agrees
    rect = official_box_mask(b)[0].cpu().numpy()
    _, _, _, ref = _official_image(m[0].numpy(), [[20, 2, 23, 5]], True)
    assert np.array_equal(rect, ref.astype(bool))
    assert _scores(m, [[20, 2, 23, 5]], device=device)["casm_le"].item() == 0.0
    assert _scores(m, [[2, 10, 5, 13]], device=device)["casm_le"].item() == 1.0


def test_a_box_empty_after_clipping_scores_nothing(device):
    m = _block()
    for box in ([40, 0, 50, 8], [32, 0, 40, 8], [0, -9, 8, 0], [-10, 2, -1, 6]):
        s = _scores(m, [box], device=device)
        assert (s["casm_le"].item(), s["casm_f1"].item()) == (1.0, 0.0), box
    # next to a box that hits, the empty one changes nothing (max over boxes)
    s = _scores(m, [[40, 0, 50, 8], [0, 0, 8, 8]], device=device)
    assert s["casm_le"].item() == 0.0 and s["casm_f1"].item() > 0.99


def test_no_valid_gt_box_is_a_miss(device):
    m = _block().to(device)
    gt = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]], device=device)
    out = official_scores(m, gt, torch.zeros(1, 1, dtype=torch.bool, device=device), torch.ones(1, dtype=torch.bool, device=device))
    assert (out["casm_le"].item(), out["casm_om"].item(), out["casm_f1"].item()) == (1.0, 1.0, 0.0)


# ----------------------------------------------------------------------------- randomised comparison
def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    out = np.empty((n, h, w), dtype=np.float32)
    for i in range(n):
        kind = i % 6
        if kind == 0:  # continuous noise
            m = rng.random((h, w))
        elif kind == 1:  # quantised: many ties at the threshold
            m = np.round(rng.random((h, w)) * 4) / 4
        elif kind == 2:  # smooth blobs: several components after thresholding
            m = scipy.ndimage.gaussian_filter(rng.random((h, w)), sigma=max(1.0, h / 16))
            m = (m - m.min()) / max(m.max() - m.min(), 1e-9)
            m = m ** rng.uniform(1, 6)
        elif kind == 3:  # sparse binary blocks (equal-size components, exact zeros)
            m = np.zeros((h, w))
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
                s = rng.integers(2, max(3, h // 4))
                m[y : y + s, x : x + s] = 1.0
        elif kind == 4:  # a soft object with a flat top at 1
            yy, xx = np.mgrid[0:h, 0:w]
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            m = np.clip(1.5 - np.hypot((yy - cy) / (h / 5), (xx - cx) / (w / 5)), 0, 1)
        else:  # constant, ones, zeros or a small fraction of noise
            m = [np.full((h, w), rng.random()), np.ones((h, w)), np.zeros((h, w)), rng.random((h, w)) * (rng.random((h, w)) > 0.95)][(i // 6) % 4]
        out[i] = m
    return out


def _random_boxes(rng: np.random.Generator, masks: np.ndarray, k: int) -> np.ndarray:
    """Float boxes (official int() applies), many crossing the border, some entirely outside."""
    n, h, w = masks.shape
    x0 = rng.uniform(-0.4 * w, 1.1 * w, (n, k))
    y0 = rng.uniform(-0.4 * h, 1.1 * h, (n, k))
    x1 = x0 + rng.uniform(1, 1.2 * w, (n, k))
    y1 = y0 + rng.uniform(1, 1.2 * h, (n, k))
    b = np.stack([x0, y0, x1, y1], -1)
    for i in range(n):  # the first box of every other image near the official rectangle: hits and near misses
        rect = _official_rect(masks[i])  # only places boxes: the CPU's mean is fine here
        if i % 2 or not rect.any():
            continue
        rows, cols = np.nonzero(rect.any(1))[0], np.nonzero(rect.any(0))[0]
        r = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
        span = np.array([r[2] - r[0], r[3] - r[1]] * 2)
        b[i, 0] = r + rng.uniform(-0.35, 0.35, 4) * span
        b[i, 0, 2:] = np.maximum(b[i, 0, 2:], b[i, 0, :2] + 1)
    whole = rng.random((n, k)) < 0.5  # half the boxes on integer coordinates
    b[whole] = np.round(b[whole])
    return b.astype(np.float32)


@pytest.mark.parametrize("size", [32, 224])
def test_randomised_against_the_official_procedure(size, device):
    rng = np.random.default_rng(size)
    n, k = 48, 3
    masks = _random_masks(rng, n, size, size)
    boxes = _random_boxes(rng, masks, k)
    nbox = rng.integers(1, k + 1, n)
    valid = np.arange(k)[None] < nbox[:, None]
    correct = rng.random(n) < 0.7
    out = official_scores(torch.from_numpy(masks).to(device), torch.from_numpy(boxes).to(device), torch.from_numpy(valid).to(device),
                          torch.from_numpy(correct).to(device))
    binary = official_binarize(torch.from_numpy(masks).to(device))
    box, ok = official_box(binary)
    # the batched device labelling (the CPU path uses OpenCV) gives the same boxes, ties included
    dev_box, dev_ok = tight_boxes(largest_component(binary))
    assert torch.equal(dev_ok, ok) and torch.equal(dev_box, box)
    rect = official_box_mask(binary).cpu().numpy()
    binary = binary.cpu().numpy()
    le, om, f1 = (out[c].cpu().numpy() for c in ("casm_le", "casm_om", "casm_f1"))
    hits = 0
    for i in range(n):
        ints = [[int(v) for v in boxes[i, j].tolist()] for j in range(nbox[i])]  # score.resize_pos: int() of each coordinate
        rf1, rle, rom, rrect = _official_image(masks[i], ints, bool(correct[i]), device)
        assert np.array_equal(binary[i], _official_binary(masks[i], device).astype(bool)), f"image {i}: binary mask"
        assert np.array_equal(rect[i], rrect.astype(bool)), f"image {i}: rectangle"
        assert le[i] == rle and om[i] == rom, f"image {i}: LE/OM {le[i]}, {om[i]} vs official {rle}, {rom}"
        assert abs(f1[i] - rf1) <= 1e-6, f"image {i}: F1 {f1[i]} vs official {rf1}"
        hits += rle == 0
    assert 0 < hits < n  # the comparison saw both hits and misses


# ----------------------------------------------------------------------------- the registered metric
def _batch(boxes, valid, unclipped=None, unclipped_valid=None, b=2, h=32, w=32) -> Batch:
    return Batch(index=torch.arange(b), ids=[str(i) for i in range(b)], images=torch.zeros(b, 3, h, w), labels=torch.zeros(b, dtype=torch.long),
                 boxes=boxes, box_valid=valid, unclipped_boxes=unclipped, unclipped_valid=unclipped_valid)


def test_metric_reads_the_unclipped_boxes_and_falls_back_to_boxes(device):
    metric = METRIC_REGISTRY.get("casm")
    assert metric.per_source and {"maps", "gt_boxes", "source"} <= metric.needs
    assert [c.name for c in metric.columns] == ["casm_le", "casm_om", "casm_f1"]
    maps = torch.cat([_block(), _block()]).to(device)
    clipped = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]).repeat(2, 1, 1)  # what the dataset clipped (-8, 0, 8, 8) to
    valid = torch.ones(2, 1, dtype=torch.bool)
    unclipped = torch.tensor([[[-8.0, 0.0, 8.0, 8.0]], [[-4.0, 0.0, 8.0, 8.0]]])
    correct = torch.tensor([True, False], device=device)

    def run(batch):
        ctx = MapContext(maps=maps, binary=maps > 0, box=torch.zeros(2, 4, device=device), box_valid=torch.ones(2, dtype=torch.bool, device=device),
                         batch=batch.to(device), source_correct=correct, targets=torch.zeros(2, dtype=torch.long, device=device))
        return {k: v.cpu().tolist() for k, v in metric.compute(ctx).items()}

    with_unclipped = run(_batch(clipped, valid, unclipped, valid))
    assert with_unclipped["casm_le"] == [1.0, 0.0] and with_unclipped["casm_om"] == [1.0, 1.0]
    fallback = run(_batch(clipped, valid))
    assert fallback["casm_le"] == [0.0, 0.0] and fallback["casm_om"] == [0.0, 1.0]
    assert fallback["casm_f1"][0] > with_unclipped["casm_f1"][0]
