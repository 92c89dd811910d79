import numpy as np
import pytest
import torch
from skimage.measure import label as sk_label

from salbench.errors import UsageError
from salbench.metrics.boxes import BOX_RULES, box_from_mask, grabcut_seeds, label_components, largest_component


def _mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in r] for r in rows])[None]


def _reference_box(b: np.ndarray):
    """Largest 4-connected component by skimage; ties -> lowest label (= first in raster order)."""
    lab = sk_label(b, connectivity=1)
    if lab.max() == 0:
        return (0.0, 0.0, 0.0, 0.0), False
    k = int(np.bincount(lab.ravel())[1:].argmax()) + 1
    ys, xs = np.nonzero(lab == k)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), True


def _same_partition(ours: np.ndarray, ref: np.ndarray) -> bool:
    fg = ref > 0
    if not np.array_equal(fg, ours >= 0):
        return False
    pairs = set(zip(ref[fg].tolist(), ours[fg].tolist()))
    return len(pairs) == len(set(ref[fg].tolist())) == len(set(ours[fg].tolist()))


def _spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral corridor (one component whose labels must go round every turn)."""
    a = np.zeros((n, n), bool)
    dirs = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    y = x = d = turns = 0
    a[0, 0] = True
    while turns < 2:
        dy, dx = dirs[d]
        ny, nx, ay, ax = y + dy, x + dx, y + 2 * dy, x + 2 * dx
        inside = 0 <= ny < n and 0 <= nx < n
        ahead = 0 <= ay < n and 0 <= ax < n and a[ay, ax]
        if inside and not a[ny, nx] and not ahead:
            y, x, turns = ny, nx, 0
            a[y, x] = True
        else:
            d, turns = (d + 1) % 4, turns + 1
    return a


def _snake(h: int, w: int) -> np.ndarray:
    """Boustrophedon corridor: rows joined alternately at the right and left ends."""
    a = np.zeros((h, w), bool)
    a[::2] = True
    for r in range(1, h, 2):
        a[r, w - 1 if (r // 2) % 2 == 0 else 0] = True
    return a


def test_rules_registered():
    assert BOX_RULES.names() == ["all", "grabcut", "largest"]
    with pytest.raises(UsageError, match="largest"):
        box_from_mask(torch.zeros(1, 2, 2, dtype=torch.bool), "largets")


def test_single_pixel_box_uses_pixel_edges(device):
    b = torch.zeros(1, 5, 6, dtype=torch.bool, device=device)
    b[0, 2, 3] = True  # row 2, column 3
    boxes, valid = box_from_mask(b)
    assert boxes.dtype == torch.float32 and boxes.device.type == device.type
    assert boxes.cpu().tolist() == [[3.0, 2.0, 4.0, 3.0]] and valid.tolist() == [True]


def test_largest_component_and_all(device):
    b = _mask(
        [
            "##....",
            "##....",
            "......",
            "..###.",
            "..###.",
        ]
    ).to(device)
    boxes, valid = box_from_mask(b)
    assert boxes.cpu().tolist() == [[2.0, 3.0, 5.0, 5.0]] and bool(valid)
    boxes, _ = box_from_mask(b, "all")
    assert boxes.cpu().tolist() == [[0.0, 0.0, 5.0, 5.0]]


def test_tie_goes_to_first_component_in_raster_order(device):
    # Two 3-pixel components. The L-shaped one starts at (row 0, col 4): earlier in raster order
    # than the vertical bar starting at (row 1, col 0), even though the bar reaches further left.
    b = _mask(
        [
            "....#",
            "#...#",
            "#..##",
            "#....",
        ]
    )
    b[0, 2, 3] = False  # make the right one a 3-pixel bar too: (0,4),(1,4),(2,4)
    boxes, _ = box_from_mask(b.to(device))
    assert boxes.cpu().tolist() == [[4.0, 0.0, 5.0, 3.0]]
    ref, _ = _reference_box(b[0].numpy())
    assert tuple(boxes[0].cpu().tolist()) == ref


def test_diagonal_pixels_are_not_connected(device):
    b = torch.eye(6, dtype=torch.bool)[None].to(device)
    lab = label_components(b).cpu()
    assert len(set(lab[lab >= 0].tolist())) == 6
    boxes, _ = box_from_mask(b)
    assert boxes.cpu().tolist() == [[0.0, 0.0, 1.0, 1.0]]  # all size 1: the first pixel wins
    boxes, _ = box_from_mask(b, "all")
    assert boxes.cpu().tolist() == [[0.0, 0.0, 6.0, 6.0]]


def test_empty_mask_gives_invalid_empty_box(device):
    b = torch.zeros(3, 4, 4, dtype=torch.bool, device=device)
    b[1, 1:3, 2] = True
    for rule in ("largest", "all"):
        boxes, valid = box_from_mask(b, rule)
        assert valid.cpu().tolist() == [False, True, False]
        assert boxes[0].cpu().tolist() == [0.0, 0.0, 0.0, 0.0] == boxes[2].cpu().tolist()
        assert boxes[1].cpu().tolist() == [2.0, 1.0, 3.0, 3.0]


def test_full_mask(device):
    boxes, valid = box_from_mask(torch.ones(2, 3, 7, dtype=torch.bool, device=device))
    assert boxes.cpu().tolist() == [[0.0, 0.0, 7.0, 3.0]] * 2 and valid.all()


def test_labels_are_first_pixel_index(device):
    b = _mask([".##", "#.#", "###"])  # a ring: one component whose first pixel is (0, 1)
    lab = label_components(b.to(device)).cpu()[0]
    assert set(lab[lab >= 0].tolist()) == {1}
    assert (lab[~b[0]] == -1).all()


@pytest.mark.parametrize("density", [0.1, 0.3, 0.45, 0.55, 0.6, 0.75, 0.95])
def test_random_masks_match_skimage(device, density):
    g = torch.Generator().manual_seed(int(density * 100))
    b = torch.rand(12, 29, 37, generator=g) < density
    lab = label_components(b.to(device)).cpu().numpy()
    boxes, valid = box_from_mask(b.to(device))
    for i in range(b.shape[0]):
        a = b[i].numpy()
        assert _same_partition(lab[i], sk_label(a, connectivity=1))
        ref, ok = _reference_box(a)
        assert tuple(boxes[i].cpu().tolist()) == ref and bool(valid[i]) == ok


def test_random_blobs_with_many_ties_match_skimage(device):
    # sparse 2x2 squares of equal size: lots of exact ties between components
    g = np.random.default_rng(3)
    masks = np.zeros((10, 32, 32), bool)
    for i in range(10):
        for _ in range(12):
            y, x = g.integers(0, 31, size=2)
            masks[i, y : y + 2, x : x + 2] = True
    boxes, valid = box_from_mask(torch.from_numpy(masks).to(device))
    for i in range(10):
        assert tuple(boxes[i].cpu().tolist()) == _reference_box(masks[i])[0]


def test_snakes_and_spirals_match_skimage(device):
    shapes = [_snake(64, 64), _snake(64, 64).T.copy(), _spiral(64), _spiral(64)[::-1].copy(), _spiral(64)[:, ::-1].copy()]
    b = torch.from_numpy(np.stack(shapes))
    lab = label_components(b.to(device)).cpu().numpy()
    boxes, _ = box_from_mask(b.to(device))
    for i, a in enumerate(shapes):
        assert _same_partition(lab[i], sk_label(a, connectivity=1))
        assert tuple(boxes[i].cpu().tolist()) == _reference_box(a)[0]
    # snakes and spirals are single components: their box is the whole image
    assert boxes.cpu().tolist() == [[0.0, 0.0, 64.0, 64.0]] * 5
    assert all(sk_label(a, connectivity=1).max() == 1 for a in shapes)


def test_largest_component_mask(device):
    b = _mask(["#.##", "#.##", "...."]).to(device)
    sel = largest_component(b).cpu()
    assert torch.equal(sel, _mask(["..##", "..##", "...."]))


# ---------------------------------------------------------------- grabcut


def _scene():
    """A red rectangle on dark noise, with a saliency map on its core."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 40, 48, generator=g) * 0.2
    img[:, 0, 10:30, 12:36] = 0.9
    sal = torch.rand(2, 40, 48, generator=g) * 0.1
    sal[:, 14:26, 16:32] = 1.0
    return img, sal


def test_grabcut_needs_saliency_and_images():
    b = torch.zeros(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="grabcut"):
        box_from_mask(b, "grabcut")


def test_grabcut_seeds_quantiles():
    import cv2

    m = np.linspace(0, 1, 100).reshape(10, 10)
    s = grabcut_seeds(m)
    assert (s.ravel()[:30] == cv2.GC_BGD).all()  # below the 30th percentile
    assert (s.ravel()[95:] == cv2.GC_FGD).all()  # above the 95th percentile
    assert set(np.unique(s.ravel()[30:95])) == {cv2.GC_PR_BGD, cv2.GC_PR_FGD}
    # plateaus: a binary map seeds its ones as foreground and its zeros as background
    b = np.zeros((10, 10))
    b[2:5, 2:6] = 1.0
    s = grabcut_seeds(b)
    assert (s[b == 1] == cv2.GC_FGD).all() and (s[b == 0] == cv2.GC_BGD).all()
    # a constant map seeds no foreground at all
    assert set(np.unique(grabcut_seeds(np.full((6, 6), 0.3)))) == {cv2.GC_PR_BGD}


def test_grabcut_box_finds_the_object_deterministically(device):
    img, sal = _scene()
    b = sal > 0.5
    boxes, valid = box_from_mask(b.to(device), "grabcut", saliency=sal.to(device), images=img.to(device))
    assert valid.all() and boxes.device.type == device.type
    x0, y0, x1, y1 = boxes[0].cpu().tolist()
    # the colour model grows the saliency core (16..32 x 14..26) towards the red object (12..36 x 10..30)
    assert x0 <= 16 and y0 <= 14 and x1 >= 32 and y1 >= 26
    assert x0 >= 10 and y0 >= 8 and x1 <= 38 and y1 <= 32
    again, _ = box_from_mask(b, "grabcut", saliency=sal, images=img)
    assert torch.equal(boxes.cpu(), again)


def test_grabcut_constant_map_is_invalid():
    img, _ = _scene()
    sal = torch.full((2, 40, 48), 0.3)
    boxes, valid = box_from_mask(sal > 0.5, "grabcut", saliency=sal, images=img)
    assert not valid.any() and (boxes == 0).all()


def test_images_in_a_batch_do_not_connect(device):
    # image 0's last row and image 1's first row are adjacent in memory, not in the picture
    b = torch.zeros(2, 4, 5, dtype=torch.bool)
    b[0, 3, :] = True
    b[0, 0, 0] = True
    b[1, 0, 1:4] = True
    boxes, valid = box_from_mask(b.to(device))
    assert boxes.cpu().tolist() == [[0.0, 3.0, 5.0, 4.0], [1.0, 0.0, 4.0, 1.0]]
    lab = label_components(b.to(device)).cpu()
    assert lab[1, 0, 1] == 1 and lab[0, 3, 0] == 15


def test_cpu_opencv_path_matches_batched_labelling():
    """The CPU fast path (OpenCV) and the batched device algorithm give identical boxes, ties included."""
    from salbench.metrics.boxes import largest_box, largest_component, tight_boxes

    g = torch.Generator().manual_seed(1)
    b = torch.rand(64, 24, 31, generator=g) > 0.55
    # exact ties: two equal squares, the first in raster order must win
    tie = torch.zeros(1, 24, 31, dtype=torch.bool)
    tie[0, 10:14, 20:24] = True
    tie[0, 2:6, 25:29] = True
    b = torch.cat([b, tie, torch.zeros(1, 24, 31, dtype=torch.bool)])
    fast, fast_valid = largest_box(b)
    ref, ref_valid = tight_boxes(largest_component(b))
    assert torch.equal(fast_valid, ref_valid)
    assert torch.equal(fast, ref)
    assert fast[-2].tolist() == [25.0, 2.0, 29.0, 6.0]
