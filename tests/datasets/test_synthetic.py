import hashlib

import numpy as np
import pytest
import torch

from salbench.datasets import build_dataset, collate
from salbench.datasets.synthetic import SHAPES, TEXTURES, SyntheticConfig, SyntheticDataset, class_parts, render
from salbench.errors import UsageError


def digest(ds, idx):
    h = hashlib.sha256()
    for i in idx:
        s = ds[i]
        h.update(s.image.numpy().tobytes())
        h.update(s.boxes.numpy().tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_image_depends_only_on_index():
    a = SyntheticDataset(SyntheticConfig(seed=3), "val", 50)
    b = SyntheticDataset(SyntheticConfig(seed=3), "val", 200)  # a longer split: same first images
    assert digest(a, range(10)) == digest(b, range(10))
    assert digest(a, [7]) == digest(b, [7])
    c = SyntheticDataset(SyntheticConfig(seed=4), "val", 50)
    assert digest(a, range(10)) != digest(c, range(10))
    t = SyntheticDataset(SyntheticConfig(seed=3), "train", 50)
    assert digest(a, range(10)) != digest(t, range(10))


@pytest.mark.parametrize("variant", ["single", "twin"])
def test_boxes_are_tight_around_the_exact_mask(variant):
    ds = SyntheticDataset(SyntheticConfig(variant=variant), "val", 60)
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.float32
        assert 0 <= s.image.min() and s.image.max() <= 1
        mask = s.gt_mask.numpy()
        assert s.boxes.shape == ((2, 4) if variant == "twin" else (1, 4))
        covered = np.zeros_like(mask)
        for x0, y0, x1, y1 in s.boxes.int().tolist():
            covered[y0:y1, x0:x1] = True
            sub = mask[y0:y1, x0:x1]
            # tight: every border row/column of the box touches the object
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
        assert not (mask & ~covered).any(), "object pixels outside the boxes"


def test_object_area_range_and_balanced_labels():
    ds = SyntheticDataset(SyntheticConfig(), "val", 400)
    areas = np.array([ds[i].gt_mask.float().mean().item() for i in range(len(ds))])
    assert areas.min() >= 0.03 and areas.max() <= 0.52
    assert areas.min() < 0.08 and areas.max() > 0.35  # spans the 5%..50% range
    labels = [ds[i].label for i in range(len(ds))]
    assert np.bincount(labels).tolist() == [40] * 10


def test_twin_copies_are_identical():
    ds = SyntheticDataset(SyntheticConfig(variant="twin", clutter=0), "val", 10)
    for i in range(10):
        s = ds[i]
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = s.boxes.int().tolist()
        assert (ax1 - ax0, ay1 - ay0) == (bx1 - bx0, by1 - by0)
        m = s.gt_mask.numpy()
        assert (m[ay0:ay1, ax0:ax1] == m[by0:by1, bx0:bx1]).all()
        assert ax1 <= bx0, "copies side by side, not overlapping"


def test_classes_are_distinct_shape_texture_pairs():
    pairs = [class_parts(k) for k in range(100)]
    assert len(set(pairs)) == 100
    assert {p[0] for p in pairs[:10]} == set(SHAPES)
    assert all(t in TEXTURES for _, t in pairs)


def test_colours_do_not_depend_on_class():
    # mean object colour per class is close to the global mean: colour carries no class signal
    ds = SyntheticDataset(SyntheticConfig(), "train", 1000)
    cols = np.zeros((10, 3))
    for i in range(len(ds)):
        s = ds[i]
        cols[s.label] += s.image[:, s.gt_mask].mean(1).numpy() / 100
    assert np.abs(cols - cols.mean(0)).max() < 0.1


def test_spec_strings_and_bad_values():
    ds = build_dataset("synthetic?n=20&size=48&variant=twin&seed=2")
    assert len(ds) == 20 and ds.image_size == (48, 48) and ds.cfg.variant == "twin"
    assert build_dataset(ds.spec).spec == ds.spec
    with pytest.raises(UsageError, match="size=8"):
        build_dataset("synthetic?size=8")
    with pytest.raises(UsageError, match="unknown parameter"):
        build_dataset("synthetic?colour=red")
    with pytest.raises(UsageError, match="variant"):
        build_dataset("synthetic?variant=triplet")
    with pytest.raises(UsageError, match="'synthtic'"):
        build_dataset("synthtic")


def test_collate_pads_boxes():
    single = SyntheticDataset(SyntheticConfig(), "val", 2)
    twin = SyntheticDataset(SyntheticConfig(variant="twin"), "val", 2)
    b = collate([single[0], twin[1]])
    assert b.boxes.shape == (2, 2, 4)
    assert b.box_valid.tolist() == [[True, False], [True, True]]
    assert b.gt_masks.shape == (2, 64, 64)
    # synthetic boxes are never clipped: the official CASM scoring's unclipped boxes are the same boxes
    assert torch.equal(b.unclipped_boxes, b.boxes) and torch.equal(b.unclipped_valid, b.box_valid)


def test_render_is_pure():
    cfg = SyntheticConfig()
    a = render(cfg, "val", 5)
    b = render(cfg, "val", 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
