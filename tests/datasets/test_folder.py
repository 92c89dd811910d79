"""Generic image folder with a boxes CSV/JSON: class tables, box mapping, bad input, specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salbench.datasets import build_dataset
from salbench.datasets.boxed import CommonOptions, CropGeometry
from salbench.datasets.folder import ImageFolderBoxes, from_spec
from salbench.errors import UsageError


def close(t: torch.Tensor, expected, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(t.numpy(), np.asarray(expected, dtype=np.float64), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, jpeg) -> Path:
    """cats/dogs in nested folders; boxes in pixel edges."""
    write_jpeg = jpeg
    root = tmp_path_factory.mktemp("folder")
    write_jpeg(root / "a" / "cat1.jpg", (480, 320), [(20, 10, 200, 100)])  # -> 336x224, left 56
    write_jpeg(root / "a" / "dog1.jpg", (200, 200), [(50, 50, 150, 150)])  # -> scale 1.12
    write_jpeg(root / "b" / "cat2.png", (320, 480), [(100, 200, 220, 300)], mode="L")  # portrait, top 56
    write_jpeg(root / "b" / "lonely.jpg", (100, 100))  # no row in the CSV
    (root / "notes.txt").write_text("not an image")
    rows = [
        "image,label,x0,y0,x1,y1",
        "a/cat1.jpg,cat,20,10,200,100",
        "a/cat1.jpg,cat,0,0,60,60",  # falls left of the crop: dropped
        "a/dog1.jpg,dog,50,50,150,150",
        "cat2.png,cat,100,200,220,300",  # bare file name, unique in the folder
        "missing.jpg,dog,1,1,5,5",  # no such image
    ]
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_folder(folder):
    ds = ImageFolderBoxes(folder)
    assert [e.id for e in ds.entries] == ["a/cat1.jpg", "a/dog1.jpg", "b/cat2.png"]
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert [e.label for e in ds.entries] == [0, 1, 0]
    assert ds.skipped == {"no_annotation": 1}
    assert ds.describe()["unmatched_annotations"] == {"count": 1, "first": ["missing.jpg"]}
    assert ds.converted == {"L": 1}
    assert ds.box_stats == {"clipped_to_crop": 1, "dropped_outside_crop": 1}
    cat, dog, cat2 = ds[0], ds[1], ds[2]
    close(cat.boxes, [[0.0, 7.0, 84.0, 70.0]])  # 14-56 -> 0, 10*0.7, 200*0.7-56, 100*0.7
    close(dog.boxes, [[56.0, 56.0, 168.0, 168.0]])
    close(cat2.boxes, [[70.0, 140.0 - 56, 154.0, 210.0 - 56]])
    assert cat2.meta == {"converted": "L"} and cat2.image.shape == (3, 224, 224)
    # The red box is where the mapped box says.
    x0, y0, x1, y1 = dog.boxes[0].tolist()
    assert dog.image[0, int((y0 + y1) / 2), int((x0 + x1) / 2)] > 0.8
    assert dog.image[0, int(y0) - 3, int(x0) - 3] < 0.6


def test_json_equals_csv(folder, tmp_path):
    records = {
        "classes": ["cat", "dog"],
        "images": [
            {"image": "a/cat1.jpg", "label": "cat", "boxes": [[20, 10, 200, 100], [0, 0, 60, 60]]},
            {"image": "a/dog1.jpg", "label": 1, "x0": 50, "y0": 50, "x1": 150, "y1": 150},
            {"image": "b/cat2.png", "label": "cat", "boxes": [[100, 200, 220, 300]]},
        ],
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(records))
    js, cs = ImageFolderBoxes(folder, boxes=path), ImageFolderBoxes(folder)
    assert [e.id for e in js.entries] == [e.id for e in cs.entries]
    for i in range(len(js)):
        assert js[i].label == cs[i].label
        close(js[i].boxes, cs[i].boxes.numpy())


def test_class_lists_and_integer_labels(folder, tmp_path):
    ds = from_spec(str(folder), {"classes": "dog,cat,bird"})
    assert ds.class_names == ["dog", "cat", "bird"] and [e.label for e in ds.entries] == [1, 0, 1]
    names = tmp_path / "classes.txt"
    names.write_text("bird\ncat\ndog\n")
    assert from_spec(str(folder), {"classes": str(names)}).num_classes == 3
    ints = tmp_path / "ints.csv"
    ints.write_text("image,label,x0,y0,x1,y1\na/cat1.jpg,281,20,10,200,100\na/dog1.jpg,207,50,50,150,150\n")
    ds = from_spec(str(folder), {"boxes": str(ints), "num_classes": "1000"})
    assert ds.num_classes == 1000 and [e.label for e in ds.entries] == [281, 207]
    assert from_spec(str(folder), {"boxes": str(ints)}).num_classes == 282
    wnids = tmp_path / "wnids.csv"
    wnids.write_text("image,label,x0,y0,x1,y1\na/dog1.jpg,n02119789,50,50,150,150\n")
    ds = from_spec(str(folder), {"boxes": str(wnids), "classes": "imagenet"})
    assert ds.num_classes == 1000 and ds.entries[0].label == 278


def test_label_conflicts_and_label_only_rows(folder, tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("image,label,x0,y0,x1,y1\na/cat1.jpg,cat,20,10,200,100\na/cat1.jpg,dog,20,10,200,100\na/dog1.jpg,dog,,,,\nb/cat2.png,cat,100,200,220,300\n")
    ds = ImageFolderBoxes(folder, boxes=p)
    assert [e.id for e in ds.entries] == ["b/cat2.png"]
    assert ds.skipped == {"label_conflict": 1, "no_box": 1, "no_annotation": 1}
    keep = ImageFolderBoxes(folder, boxes=p, options=CommonOptions(keep_empty=True))
    assert [e.id for e in keep.entries] == ["a/dog1.jpg", "b/cat2.png"] and keep[0].boxes.shape == (0, 4)


def test_corrupt_file_in_folder_is_an_error_sample(tmp_path, jpeg):
    jpeg(tmp_path / "ok.jpg", (64, 48), [(4, 4, 40, 40)])
    data = (tmp_path / "ok.jpg").read_bytes()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "bad.jpg", quality=95)
    raw = (tmp_path / "bad.jpg").read_bytes()
    (tmp_path / "bad.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "boxes.csv").write_text("image,label,x0,y0,x1,y1\nok.jpg,a,4,4,40,40\nbad.jpg,b,8,8,56,56\n")
    assert data
    ds = ImageFolderBoxes(tmp_path, options=CommonOptions(size=32))
    bad = ds[0]
    assert bad.id == "bad.jpg" and "corrupt image" in bad.meta["error"] and bad.image.shape == (3, 32, 32)
    close(bad.boxes, [[4.0, 4.0, 28.0, 28.0]])  # 64x64 -> 32x32: halved
    assert "error" not in ds[1].meta
    full = ImageFolderBoxes(tmp_path, options=CommonOptions(size=32, verify="full"))
    assert [e.id for e in full.entries] == ["ok.jpg"] and full.skipped == {"corrupt_image": 1}


def test_width_height_columns_rescale_boxes(tmp_path, jpeg):
    jpeg(tmp_path / "half.jpg", (100, 100), [(10, 10, 50, 50)])
    (tmp_path / "boxes.csv").write_text("image,label,x0,y0,x1,y1,width,height\nhalf.jpg,a,20,20,100,100,200,200\n")
    ds = ImageFolderBoxes(tmp_path, options=CommonOptions(size=100))
    close(ds[0].boxes, [[10.0, 10.0, 50.0, 50.0]])
    assert ds.box_stats["rescaled_from_annotated_size"] == 1


def test_spec_round_trip(folder):
    ds = from_spec(str(folder), {"limit": "2", "size": "64", "classes": "cat,dog"})
    assert len(ds) == 2 and ds.image_size == (64, 64)
    again = build_dataset(ds.spec)
    assert again.spec == ds.spec and [e.id for e in again.entries] == [e.id for e in ds.entries]
    assert build_dataset(f"folder:{folder}?boxes=boxes.csv").num_classes == 2


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"boxes": "nope.csv"}, "nope.csv"),
        ({"classes": "only_one_name"}, "only_one_name"),
        ({"num_classes": "x"}, "num_classes='x'"),
        ({"box_format": "xywh"}, "'xywh'"),
        ({"subset_seed": "-1"}, "subset_seed='-1'"),
        ({"interpolation": "cubic"}, "did you mean: bicubic"),
        ({"boxs": "a.csv"}, "did you mean: boxes"),
        ({"classes": "dog,bird"}, "label 'cat'"),
    ],
)
def test_bad_params(folder, params, needle):
    with pytest.raises(UsageError) as exc:
        from_spec(str(folder), params)
    assert needle in str(exc.value)


def test_bad_boxes_files(folder, tmp_path):
    p = tmp_path / "cols.csv"
    p.write_text("file,label\na/cat1.jpg,cat\n")
    with pytest.raises(UsageError, match=r"lacks column\(s\) \['image'"):
        ImageFolderBoxes(folder, boxes=p)
    p.write_text("image,label,x0,y0,x1,y1\na/cat1.jpg,cat,1,2,three,4\n")
    with pytest.raises(UsageError, match="cols.csv line 2: x1='three'"):
        ImageFolderBoxes(folder, boxes=p)
    p.write_text("image,label,x0,y0,x1,y1\na/cat1.jpg,cat,1,2,3,4\na/dog1.jpg,7,1,2,3,4\n")
    with pytest.raises(UsageError, match="mixes class names and integer labels"):
        ImageFolderBoxes(folder, boxes=p)
    with pytest.raises(UsageError, match="is not a folder"):
        from_spec(str(tmp_path / "nowhere"), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no boxes.csv"):
        from_spec(str(tmp_path / "empty"), {})


def test_pixels_match_torchvision_resize_and_center_crop(tmp_path):
    from torchvision import transforms as T

    rng = np.random.default_rng(1)
    rows = ["image,label,x0,y0,x1,y1"]
    for k, (w, h) in enumerate([(500, 375), (375, 500), (333, 333), (640, 427), (601, 299)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
        rows.append(f"{k}.png,a,0,0,{w},{h}")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    ds = ImageFolderBoxes(tmp_path, options=CommonOptions(size=224, resize=256))
    tv = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    g = CropGeometry(224, 256)
    for i in range(len(ds)):
        s = ds[i]
        with Image.open(tmp_path / s.id) as im:
            ref = tv(im.convert("RGB"))
            new_w, new_h, left, top = g.plan(*im.size)
        assert torch.equal(s.image, ref)
        # The whole-image box maps to the resized image shifted by the crop offset, clipped.
        close(s.boxes, [[max(0, -left), max(0, -top), min(224, new_w - left), min(224, new_h - top)]])


@pytest.mark.parametrize("writer", ["opencv", "pil"])
def test_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path, writer):
    """A 16-bit grayscale PNG decodes to the pixels of its 8-bit version (within 1/255)."""
    import cv2

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:60, 0:80]
    g8 = np.clip(40 + 2 * x + y + rng.integers(0, 20, (60, 80)), 0, 255).astype(np.uint8)
    g16 = g8.astype(np.uint16) * 257  # the same intensities at 16 bits (255 * 257 = 65535)
    (tmp_path / "d16").mkdir()
    (tmp_path / "d8").mkdir()
    if writer == "opencv":
        cv2.imwrite(str(tmp_path / "d16" / "im.png"), g16)
    else:
        Image.fromarray(g16).save(tmp_path / "d16" / "im.png")
    Image.fromarray(g8).save(tmp_path / "d8" / "im.png")
    for d in ("d16", "d8"):
        (tmp_path / d / "boxes.csv").write_text("image,label,x0,y0,x1,y1\nim.png,a,4,4,40,40\n")
    opts = CommonOptions(size=48)
    hi = ImageFolderBoxes(tmp_path / "d16", options=opts)
    lo = ImageFolderBoxes(tmp_path / "d8", options=opts)
    assert hi.converted == {"I;16": 1} and hi[0].meta["converted"] == "I;16"
    a, b = hi[0].image, lo[0].image
    assert a.shape == b.shape == (3, 48, 48) and a.dtype == torch.float32
    assert (a - b).abs().max().item() <= 1 / 255 + 1e-6
    assert a.mean().item() < 0.9  # not clipped to white


@pytest.mark.parametrize("mode,values,expected", [
    ("I", [0, 32768, 65535], [0.0, 32768 / 65535, 1.0]),
    ("I", [-5, 0, 2**31 - 1], [0.0, 0.0, 1.0]),
    ("F", [0.0, 0.25, 1.0], [0.0, 0.25, 1.0]),
    ("F", [0.0, 51.0, 255.0], [0.0, 0.2, 1.0]),
    ("F", [0.0, 655.35, 65535.0], [0.0, 0.01, 1.0]),
])
def test_32_bit_modes_scaled_by_their_range(mode, values, expected):
    from salbench.datasets.highbit import unit_range_plane

    arr = np.array([values], dtype=np.int32 if mode == "I" else np.float32)
    plane = unit_range_plane(Image.fromarray(arr, mode=mode))
    assert plane.mode == "F"
    np.testing.assert_allclose(np.asarray(plane)[0], expected, atol=1e-6)
    assert unit_range_plane(Image.new("RGB", (2, 2))) is None and unit_range_plane(Image.new("L", (2, 2))) is None


def _official_resize_pos(box, width, height, size=224):
    """kondiz/casme score.resize_pos (break_ratio off), transcribed with 224 as ``size``."""
    if width > height:
        ratio_x = ratio_y = size / height
        xcut, ycut = (width * ratio_x - size) / 2, 0
    else:
        ratio_x = ratio_y = size / width
        xcut, ycut = 0, (height * ratio_y - size) / 2
    pos = [ratio_x * box[0] - xcut, ratio_y * box[1] - ycut, ratio_x * box[2] - xcut, ratio_y * box[3] - ycut]
    return [int(x) for x in pos]


def test_unclipped_boxes_follow_the_official_mapping(folder):
    ds = ImageFolderBoxes(folder)
    cat, dog, cat2 = ds[0], ds[1], ds[2]
    # cat1 480x320: ratio 0.7, cut (336 - 224) / 2 = 56 on x; the box left of the crop is kept, nothing clipped
    assert cat.unclipped_boxes.tolist() == [[-42.0, 7.0, 84.0, 70.0], [-56.0, 0.0, -14.0, 42.0]]
    assert cat.boxes.shape == (1, 4)  # the clipped boxes are unchanged: one kept, clipped at x = 0
    assert dog.unclipped_boxes.tolist() == [[float(v) for v in _official_resize_pos((50, 50, 150, 150), 200, 200)]]
    assert cat2.unclipped_boxes.tolist() == [[70.0, 84.0, 154.0, 154.0]]  # portrait: cut 56 on y
    geo = CropGeometry(224, 224)
    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (375, 500), (333, 500), (500, 333), (300, 300), (1024, 683), (77, 913)]:
        boxes = rng.integers(-20, max(w, h) + 20, (200, 4)).astype(np.float64)
        got = geo.map_boxes_official(boxes, (w, h))
        want = np.array([_official_resize_pos(b.tolist(), w, h) for b in boxes], dtype=np.float32)
        np.testing.assert_array_equal(got, want)  # int() of the official float64 arithmetic, exactly


def test_unclipped_boxes_are_collated_moved_and_selected(folder, tmp_path):
    from salbench.datasets.base import collate

    ds = ImageFolderBoxes(folder)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch.boxes.shape == (3, 1, 4) and batch.unclipped_boxes.shape == (3, 2, 4)
    assert batch.unclipped_valid.tolist() == [[True, True], [True, False], [True, False]]
    sub = batch.select([2, 0]).to("cpu")
    assert torch.equal(sub.unclipped_boxes, batch.unclipped_boxes[[2, 0]]) and torch.equal(sub.unclipped_valid, batch.unclipped_valid[[2, 0]])
    # a box wholly outside the crop: the image is skipped, or with keep_empty=1 kept with its unclipped box
    p = tmp_path / "out.csv"
    p.write_text("image,label,x0,y0,x1,y1\na/cat1.jpg,cat,0,0,60,60\na/dog1.jpg,dog,50,50,150,150\n")
    assert [e.id for e in ImageFolderBoxes(folder, boxes=p).entries] == ["a/dog1.jpg"]
    keep = ImageFolderBoxes(folder, boxes=p, options=CommonOptions(keep_empty=True))
    s = keep[0]
    assert s.boxes.shape == (0, 4) and s.unclipped_boxes.tolist() == [[-56.0, 0.0, -14.0, 42.0]]
    # samples without unclipped boxes: the batch has none (the casm metric falls back to boxes)
    plain = [ds[0], ds[1]]
    plain[1].unclipped_boxes = None
    assert collate(plain).unclipped_boxes is None and collate(plain).unclipped_valid is None


def test_masks_folder_gives_cropped_gt_masks_and_skips_images_without_one(tmp_path, jpeg):
    jpeg(tmp_path / "img" / "wide.jpg", (64, 32), [(8, 4, 24, 20)])  # -> 64x32 at size 32: left 16
    jpeg(tmp_path / "img" / "nomask.jpg", (32, 32), [(2, 2, 10, 10)])
    (tmp_path / "boxes.csv").write_text("image,label,x0,y0,x1,y1\nimg/wide.jpg,a,8,4,24,20\nimg/nomask.jpg,b,2,2,10,10\n")
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[4:20, 20:24] = 255  # object pixels x 20..23 -> crop columns 4..7
    (tmp_path / "masks" / "img").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "masks" / "img" / "wide.png")
    ds = from_spec(str(tmp_path), {"masks": "masks", "size": "32"})
    assert len(ds) == 1 and ds.skipped == {"no_mask": 1} and "masks=" in ds.spec
    s = ds[0]
    expect = torch.zeros(32, 32)
    expect[4:20, 4:8] = 1
    assert s.gt_mask is not None and torch.equal(s.gt_mask, expect)
    assert build_dataset(ds.spec)[0].gt_mask is not None  # the spec round-trips with its masks
    assert ImageFolderBoxes(tmp_path, options=CommonOptions(size=32))[0].gt_mask is None  # no masks=: none
    with pytest.raises(UsageError, match="masks='nowhere'"):
        from_spec(str(tmp_path), {"masks": "nowhere"})
