"""ImageNet val loader: every annotation format, label order, box mapping, bad input, specs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from salbench.datasets import build_dataset, collate
from salbench.datasets.boxed import CommonOptions, CropGeometry
from salbench.datasets.imagenet import ImageNetVal, from_spec, imagenet_synsets, synset_lemmas
from salbench.errors import UsageError


def close(t: torch.Tensor, expected, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(t.numpy(), np.asarray(expected, dtype=np.float64), rtol=0, atol=atol)


def _ids(ds) -> list[int]:
    return [int(e.id.rsplit("_", 1)[1]) for e in ds.entries]


@pytest.fixture(scope="module")
def xml_ds(imagenet_dir) -> ImageNetVal:
    return ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml))


def test_class_order_is_timm_sorted_wnids(truth):
    names = imagenet_synsets()
    assert len(names) == 1000 and list(names) == sorted(names)
    assert [names.index(w) for w in truth.TIMM_INDEX] == list(truth.TIMM_INDEX.values())
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert list(names) == list(info.label_names())
    assert synset_lemmas()[999] == info.index_to_description(999)


@pytest.mark.parametrize("fmt", ["xml", "csv", "wsol"])
def test_each_format_gives_the_same_dataset(truth, imagenet_dir, imagenet_annotations, fmt):
    ds = ImageNetVal(imagenet_dir.root, annotations=imagenet_annotations[fmt])
    assert _ids(ds) == truth.KEPT
    assert [s for s in (e.label for e in ds.entries)] == [truth.TIMM_INDEX[truth.BY_NUM[n].wnid] for n in truth.KEPT]
    assert ds.num_classes == 1000 and ds.class_names[0] == truth.TENCH
    assert ds.skipped == truth.SKIPPED
    assert ds.converted == {"L": 1, "CMYK": 1}
    assert ds.box_stats == {"clipped_to_crop": 3, "dropped_outside_crop": 1, "outside_image": 1}
    d = ds.describe()
    assert d["unmatched_annotations"] == {"count": 1, "first": ["ILSVRC2012_val_00000008"]}
    assert d["num_images"] == len(truth.KEPT) and d["skipped"] == truth.SKIPPED
    first = ds[0]
    assert first.image.shape == (3, 224, 224) and first.image.dtype == torch.float32
    assert first.boxes.dtype == torch.float32 and first.boxes.shape == (1, 4)


def test_boxes_mapped_by_hand(xml_ds):
    by_id = {int(xml_ds[i].id[-2:]): xml_ds[i] for i in range(len(xml_ds))}
    # 448x336, XML box 100,50,299,199 inclusive -> edges 100,50,300,200. Shorter side 336 -> 224:
    # new size 298x224 (int(224*448/336) = 298), left = round((298-224)/2) = 37, top = 0.
    # x' = x*298/448 - 37, y' = y*224/336.
    b = by_id[1].boxes[0].tolist()
    assert b == pytest.approx([100 * 298 / 448 - 37, 50 * 224 / 336, 300 * 298 / 448 - 37, 200 * 224 / 336], abs=1e-4)
    assert b == pytest.approx([29.51786, 33.33333, 162.55357, 133.33333], abs=1e-4)
    # 480x320 -> 336x224 (scale 0.7 both ways), left 56. Box 20,10,199,99 -> edges 20,10,200,100
    # -> 14-56, 7, 140-56, 70 -> clipped x0 = 0. Box 0,0,59,59 -> x1 = 42-56 < 0: dropped.
    close(by_id[2].boxes, [[0.0, 7.0, 84.0, 70.0]])
    # 300x300 grayscale, scale 224/300, no crop: edges 10..290 -> 7.4667..216.5333.
    close(by_id[4].boxes, [[10 * 224 / 300, 10 * 224 / 300, 290 * 224 / 300, 290 * 224 / 300]])
    # 500x375 with xmax = 500 (past the last pixel): clipped to the image, then to the crop.
    close(by_id[10].boxes, [[0.0, 0.0, 224.0, 224.0]])


def test_pixels_follow_the_boxes(xml_ds):
    s = xml_ds[0]  # image 1: the box is red on grey
    x0, y0, x1, y1 = s.boxes[0].tolist()
    inside = s.image[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
    assert inside[0] > 0.8 and inside[1] < 0.2
    edge_in = s.image[:, int(y0) + 2, int(np.ceil(x0)) + 2]
    edge_out = s.image[:, int(y0) + 2, int(x0) - 3]
    assert edge_in[0] > 0.7 and abs(float(edge_out[0]) - 128 / 255) < 0.06
    assert s.image.min() >= 0 and s.image.max() <= 1


def test_grayscale_and_cmyk_become_rgb(xml_ds):
    by_id = {int(xml_ds[i].id[-2:]): xml_ds[i] for i in range(len(xml_ds))}
    assert by_id[4].meta == {"converted": "L"} and by_id[5].meta == {"converted": "CMYK"}
    gray = by_id[4].image
    assert gray.shape == (3, 224, 224) and torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    assert by_id[5].image.shape == (3, 224, 224) and "error" not in by_id[5].meta


def test_truncated_jpeg_is_an_error_sample_not_a_crash(truth, imagenet_dir):
    ds = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml))
    i = _ids(ds).index(6)
    s = ds[i]
    assert s.meta["error"].startswith("corrupt image: ") and "ILSVRC2012_val_00000006" in s.meta["error"]
    assert s.image.shape == (3, 224, 224) and float(s.image.abs().sum()) == 0.0
    assert s.label == truth.TIMM_INDEX[truth.GOLDFISH]
    # 400x300 -> 298x224, left 37: edges 100,100,300,200 -> 37.5, 74.67, 186.5, 149.33.
    close(s.boxes, [[37.5, 100 * 224 / 300, 186.5, 200 * 224 / 300]])
    assert ds.load_errors == {"corrupt_image": 1}
    # Collation and worker processes survive it; the runner reads errors from the samples.
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate))
    assert sum(len(b) for b in batches) == len(truth.KEPT)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    errors = [s.id for s in loader if "error" in s.meta]
    assert errors == ["ILSVRC2012_val_00000006"]


def test_verify_full_skips_corrupt_files_up_front(imagenet_dir):
    ds = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.csv), options=CommonOptions(verify="full"))
    assert 6 not in _ids(ds) and ds.skipped["corrupt_image"] == 1
    assert all("error" not in ds[i].meta for i in range(len(ds)))


def test_verify_none_reads_no_header_when_sizes_are_known(imagenet_dir):
    ds = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), options=CommonOptions(verify="none"))
    # Without header checks the garbage file is kept and becomes an error sample at load time.
    assert 11 in _ids(ds) and "unreadable_image" not in ds.skipped
    s = ds[_ids(ds).index(11)]
    assert "error" in s.meta and s.boxes.shape[1] == 4


def test_keep_empty_keeps_images_without_a_box_in_the_crop(imagenet_dir):
    ds = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), options=CommonOptions(keep_empty=True))
    assert 3 in _ids(ds) and "no_box_in_crop" not in ds.skipped
    s = ds[_ids(ds).index(3)]
    assert s.boxes.shape == (0, 4) and ds.box_stats["images_without_box"] == 1
    b = collate([s, ds[0]])
    assert b.box_valid.tolist() == [[False], [True]]


def test_xml_class_disagreeing_with_csv_label_is_skipped(imagenet_dir):
    ds = ImageNetVal(imagenet_dir.root, annotations=f"{imagenet_dir.csv},{imagenet_dir.xml_conflict}")
    assert 1 not in _ids(ds) and ds.skipped["label_conflict"] == 2  # image 1 (XML vs CSV) and 9 (folder)
    assert len(ds.sources) == 2


def test_limit_and_seeded_subset(truth, imagenet_dir):
    ann = str(imagenet_dir.csv)
    first = ImageNetVal(imagenet_dir.root, annotations=ann, options=CommonOptions(limit=3))
    assert _ids(first) == truth.KEPT[:3]
    # Candidates past the limit are not examined: image 3 is skipped on the way, 7 never reached.
    assert first.skipped == {"no_box_in_crop": 1}
    a = ImageNetVal(imagenet_dir.root, annotations=ann, options=CommonOptions(limit=4, subset_seed=7))
    b = ImageNetVal(imagenet_dir.root, annotations=ann, options=CommonOptions(limit=4, subset_seed=7))
    assert _ids(a) == _ids(b) and len(a) == 4 and set(_ids(a)) <= set(truth.KEPT) and _ids(a) == sorted(_ids(a))
    seeds = {tuple(_ids(ImageNetVal(imagenet_dir.root, annotations=ann, options=CommonOptions(limit=3, subset_seed=s)))) for s in range(6)}
    assert len(seeds) > 1
    every = ImageNetVal(imagenet_dir.root, annotations=ann, options=CommonOptions(subset_seed=3))
    assert _ids(every) == truth.KEPT  # a permutation without a limit keeps everything, in id order


def test_box_formats(imagenet_dir):
    ref = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), options=CommonOptions(limit=1))
    edges = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), box_format="edges", options=CommonOptions(limit=1))
    one = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), box_format="inclusive1", options=CommonOptions(limit=1))
    r, e, o = ref[0].boxes[0], edges[0].boxes[0], one[0].boxes[0]
    sx, sy = 298 / 448, 224 / 336
    assert (r - e).tolist() == pytest.approx([0, 0, sx, sy], abs=1e-4)
    assert (r - o).tolist() == pytest.approx([sx, sy, sx, sy], abs=1e-4)


def test_size_and_resize_options(imagenet_dir):
    ds = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), options=CommonOptions(size=112, resize=128, limit=1))
    s = ds[0]
    assert s.image.shape == (3, 112, 112) and ds.image_size == (112, 112)
    # 448x336 -> 170x128 (int(128*448/336) = 170), left = round(29) = 29, top = round(8) = 8.
    assert s.boxes[0].tolist() == pytest.approx([100 * 170 / 448 - 29, 50 * 128 / 336 - 8, 300 * 170 / 448 - 29, 200 * 128 / 336 - 8], abs=1e-4)
    assert CropGeometry(224, 256).plan(500, 375) == (341, 256, 58, 16)  # torchvision Resize(256)+CenterCrop(224)


def test_resized_copy_keeps_boxes_on_the_object(truth, tmp_path, imagenet_dir):
    """An XML for a 448x336 image with the file stored at half size: boxes follow the file."""
    root = tmp_path / "small"
    root.mkdir()
    from PIL import Image

    with Image.open(imagenet_dir.root / truth.TENCH / "ILSVRC2012_val_00000001.JPEG") as im:
        im.resize((224, 168)).save(root / "ILSVRC2012_val_00000001.JPEG", quality=95)
    shutil.copy(imagenet_dir.xml / "ILSVRC2012_val_00000001.xml", root)
    ds = ImageNetVal(root)  # discovers the XML next to the image
    full = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), options=CommonOptions(limit=1))
    assert ds.box_stats["rescaled_from_annotated_size"] == 1
    close(ds[0].boxes, full[0].boxes.numpy(), atol=0.5)


def test_from_spec_round_trip(truth, imagenet_dir):
    ds = from_spec(str(imagenet_dir.root), {"annotations": str(imagenet_dir.csv), "limit": "5", "size": "96", "subset_seed": "1"})
    assert len(ds) == 5 and ds.image_size == (96, 96)
    again = build_dataset(ds.spec)
    assert again.spec == ds.spec and [e.id for e in again.entries] == [e.id for e in ds.entries]
    auto = build_dataset(f"imagenet:{imagenet_dir.root}")  # finds ../LOC_val_solution.csv
    assert "annotations=" in auto.spec and _ids(auto) == truth.KEPT


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"limit": "abc"}, "'abc'"),
        ({"limit": "0"}, "limit='0'"),
        ({"size": "-3"}, "size='-3'"),
        ({"resize": "100", "size": "224"}, "resize=100"),
        ({"box_format": "xyxy"}, "'xyxy'"),
        ({"verify": "maybe"}, "'maybe'"),
        ({"keep_empty": "perhaps"}, "'perhaps'"),
        ({"limt": "3"}, "did you mean: limit"),
        ({"annotations": "/nonexistent/LOC.csv"}, "/nonexistent/LOC.csv"),
        ({"annotations": ""}, "annotations=''"),
    ],
)
def test_bad_params_are_refused_naming_the_value(imagenet_dir, params, needle):
    with pytest.raises(UsageError, match=None) as exc:
        from_spec(str(imagenet_dir.root), {"annotations": str(imagenet_dir.csv), **params})
    assert needle in str(exc.value)


def test_bad_folders_are_refused(truth, tmp_path, imagenet_dir):
    with pytest.raises(UsageError, match="is not a folder"):
        from_spec(str(tmp_path / "missing"), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no ILSVRC2012_val"):
        from_spec(str(tmp_path / "empty"), {})
    with pytest.raises(UsageError, match="needs a path"):
        from_spec(None, {})
    # Images but no annotations anywhere.
    lone = tmp_path / "lone" / "val"
    lone.mkdir(parents=True)
    shutil.copy(imagenet_dir.root / truth.TENCH / "ILSVRC2012_val_00000001.JPEG", lone)
    with pytest.raises(UsageError, match="no annotations found"):
        from_spec(str(lone), {})


def test_unknown_synsets_are_refused(truth, tmp_path):
    fx = truth.write_imagenet(tmp_path / "a")
    text = fx.csv.read_text().replace("n15075141", "n15075142")
    fx.csv.write_text(text)
    with pytest.raises(UsageError, match=r"unknown synset 'n15075142'.*did you mean: n15075141"):
        ImageNetVal(fx.root, annotations=str(fx.csv))
    (fx.root / "n99999999").mkdir()
    shutil.copy(fx.root / truth.TENCH / "ILSVRC2012_val_00000001.JPEG", fx.root / "n99999999" / "ILSVRC2012_val_00000099.JPEG")
    with pytest.raises(UsageError, match="n99999999"):
        ImageNetVal(fx.root, annotations=str(fx.xml))


def test_nothing_usable_is_refused_with_the_skip_counts(tmp_path, imagenet_dir):
    root = tmp_path / "val"
    root.mkdir()
    shutil.copy(imagenet_dir.root / "ILSVRC2012_val_00000011.JPEG", root)  # garbage bytes
    with pytest.raises(UsageError, match="unreadable_image"):
        ImageNetVal(root, annotations=str(imagenet_dir.csv))


def test_malformed_annotation_records_are_skipped_not_fatal(truth, tmp_path):
    fx = truth.write_imagenet(tmp_path / "b")
    (fx.xml / "ILSVRC2012_val_00000001.xml").write_text("<annotation><size><width>4")
    ds = ImageNetVal(fx.root, annotations=str(fx.xml))
    assert ds.skipped["bad_annotation"] == 1 and 1 not in _ids(ds)
    lines = fx.csv.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 2)[0]  # image 2: a box missing its last coordinate
    fx.csv.write_text("\n".join(lines) + "\n")
    ds = ImageNetVal(fx.root, annotations=str(fx.csv))
    assert ds.skipped["bad_annotation"] == 1 and 2 not in _ids(ds)


def test_unclipped_boxes_for_the_official_casm_scoring(truth, imagenet_dir):
    """box_format=edges takes the XML numbers as they are, as kondiz/casme score.py does; the
    unclipped boxes are its resize_pos: int(ratio * x - cut), cut = (longer * ratio - 224) / 2."""
    ds = ImageNetVal(imagenet_dir.root, annotations=str(imagenet_dir.xml), box_format="edges", options=CommonOptions(keep_empty=True))
    by_id = {int(ds[i].id[-2:]): ds[i] for i in range(len(ds))}

    def official(num):
        im = truth.BY_NUM[num]
        w, h = im.size
        if w > h:
            r, xcut, ycut = 224 / h, (w * (224 / h) - 224) / 2, 0
        else:
            r, xcut, ycut = 224 / w, 0, (h * (224 / w) - 224) / 2
        return [[float(int(v)) for v in (r * x0 - xcut, r * y0 - ycut, r * x1 - xcut, r * y1 - ycut)] for x0, y0, x1, y1 in im.boxes]

    for num, s in by_id.items():
        assert s.unclipped_boxes.tolist() == official(num), num
    # 448x336: ratio 2/3, cut (298.67 - 224) / 2 = 37.33 (the pixels are cut at round(37) = 37)
    assert by_id[1].unclipped_boxes.tolist() == [[29.0, 33.0, 162.0, 132.0]]
    # 480x320: the box left of the crop is kept, unclipped; 320x480: kept only with keep_empty, its box above the crop
    assert by_id[2].unclipped_boxes.tolist() == [[-42.0, 7.0, 83.0, 69.0], [-56.0, 0.0, -14.0, 41.0]]
    assert by_id[3].boxes.shape == (0, 4) and by_id[3].unclipped_boxes.tolist() == [[0.0, -56.0, 69.0, -14.0]]
    # 500x375 with xmax = width: not clipped to the image either
    assert by_id[10].unclipped_boxes[0, 2].item() == int(224 / 375 * 500 - (500 * (224 / 375) - 224) / 2)
