"""A tiny ImageNet-shaped validation folder with every annotation format, and its known answers.

Twelve ``ILSVRC2012_val_*`` ids (numbers below), images written once per session:

====  ========  =====  =========  ======  =========================================================
 id    size      mode   synset     where   what it tests
====  ========  =====  =========  ======  =========================================================
  1   448x336   RGB    n01440764  subdir  boxes mapped by hand (scale 298/448, 224/336; left 37)
  2   480x320   RGB    n01443537  subdir  one box clipped at the crop, one dropped (scale 0.7)
  3   320x480   RGB    n15075141  subdir  its only box falls outside the crop -> no_box_in_crop
  4   300x300   L      n02119789  flat    grayscale -> converted["L"]
  5   256x200   CMYK   n01440764  flat    CMYK -> converted["CMYK"]
  6   400x300   RGB    n01443537  subdir  truncated JPEG: passes the header check, fails to decode
  7   300x200   RGB    n02119789  flat    image without annotation -> no_annotation
  8   (none)           n01440764          annotation without image -> unmatched_annotations
  9   360x240   RGB    n01443537  subdir  stored under n01440764/ -> label_conflict
 10   500x375   RGB    n15075141  flat    xmax = width (one past the last pixel) -> outside_image
 11   garbage          n02119789  flat    not an image -> unreadable_image
 12   336x448   RGB    n02119789  subdir  portrait, box clipped at the bottom of the crop
====  ========  =====  =========  ======  =========================================================

Boxes are written as 0-based inclusive pixel indices (ImageNet's convention) in the XML files,
``LOC_val_solution.csv`` and wsolevaluation ``localization.txt``.

Tests reach these helpers through fixtures (``truth``, ``jpeg``), never ``from conftest import``:
with several ``conftest.py`` files in the suite that name is ambiguous.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

TENCH, GOLDFISH, KITFOX, TISSUE = "n01440764", "n01443537", "n02119789", "n15075141"
#: timm's standard order (sorted wnids): the indices the dataset must produce.
TIMM_INDEX = {TENCH: 0, GOLDFISH: 1, KITFOX: 278, TISSUE: 999}


@dataclass
class FakeImage:
    num: int
    size: tuple[int, int] | None
    wnid: str
    boxes: list[tuple[int, int, int, int]]  # 0-based inclusive
    mode: str = "RGB"
    folder: str | None = None  # synset subfolder, None = flat
    kind: str = "ok"  # ok | truncated | garbage | missing | unannotated

    @property
    def id(self) -> str:
        return f"ILSVRC2012_val_{self.num:08d}"


IMAGES = [
    FakeImage(1, (448, 336), TENCH, [(100, 50, 299, 199)], folder=TENCH),
    FakeImage(2, (480, 320), GOLDFISH, [(20, 10, 199, 99), (0, 0, 59, 59)], folder=GOLDFISH),
    FakeImage(3, (320, 480), TISSUE, [(0, 0, 99, 59)], folder=TISSUE),
    FakeImage(4, (300, 300), KITFOX, [(10, 10, 289, 289)], mode="L"),
    FakeImage(5, (256, 200), TENCH, [(50, 40, 199, 159)], mode="CMYK"),
    FakeImage(6, (400, 300), GOLDFISH, [(100, 100, 299, 199)], folder=GOLDFISH, kind="truncated"),
    FakeImage(7, (300, 200), KITFOX, [(10, 10, 100, 100)], kind="unannotated"),
    FakeImage(8, (300, 300), TENCH, [(1, 1, 50, 50)], kind="missing"),
    FakeImage(9, (360, 240), GOLDFISH, [(50, 50, 250, 200)], folder=TENCH),
    FakeImage(10, (500, 375), TISSUE, [(0, 0, 500, 374)]),
    FakeImage(11, (300, 300), KITFOX, [(10, 10, 200, 200)], kind="garbage"),
    FakeImage(12, (336, 448), KITFOX, [(30, 200, 299, 439)], folder=KITFOX),
]
BY_NUM = {im.num: im for im in IMAGES}
#: What the dataset keeps with default options (sorted ids), and why the others go.
KEPT = [1, 2, 4, 5, 6, 10, 12]
SKIPPED = {"no_box_in_crop": 1, "no_annotation": 1, "label_conflict": 1, "unreadable_image": 1}


def _render(im: FakeImage) -> bytes:
    w, h = im.size  # type: ignore[misc]
    if im.kind == "garbage":
        return b"this is not a JPEG file\n" * 20
    if im.kind == "truncated":
        rng = np.random.default_rng(im.num)
        pic = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    else:
        pic = Image.new("RGB", (w, h), (128, 128, 128))
        draw = ImageDraw.Draw(pic)
        for x0, y0, x1, y1 in im.boxes:
            draw.rectangle((x0, y0, x1, y1), fill=(230, 20, 20))  # PIL rectangles are inclusive
    if im.mode != "RGB":
        pic = pic.convert(im.mode)
    buf = io.BytesIO()
    pic.save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2] if im.kind == "truncated" else data


def _xml(im: FakeImage, wnid: str | None = None) -> str:
    w, h = im.size  # type: ignore[misc]
    objs = "".join(
        f"<object><name>{wnid or im.wnid}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in im.boxes
    )
    return (
        f"<annotation><folder>val</folder><filename>{im.id}</filename><source><database>ILSVRC_2012</database></source>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


@dataclass
class ImageNetFixture:
    root: Path  # the image folder
    xml: Path  # folder of XML files
    csv: Path  # LOC_val_solution.csv
    wsol: Path  # wsolevaluation metadata folder
    xml_conflict: Path  # one XML (image 1) naming the wrong class


def write_imagenet(base: Path) -> ImageNetFixture:
    root, xml, wsol, conflict = base / "val", base / "xml", base / "wsol", base / "xml_conflict"
    for d in (root, xml, wsol, conflict):
        d.mkdir(parents=True)
    csv_lines = ["ImageId,PredictionString"]
    ids, labels, sizes, locs = [], [], [], []
    for im in IMAGES:
        if im.kind != "missing":
            folder = root / im.folder if im.folder else root
            folder.mkdir(exist_ok=True)
            (folder / f"{im.id}.JPEG").write_bytes(_render(im))
        if im.kind == "unannotated":
            continue
        (xml / f"{im.id}.xml").write_text(_xml(im))
        csv_lines.append(f"{im.id}," + " ".join(f"{im.wnid} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in im.boxes) + " ")
        rel = f"val/{im.id}.JPEG"
        ids.append(rel)
        labels.append(f"{rel},{TIMM_INDEX[im.wnid]}")
        sizes.append(f"{rel},{im.size[0]},{im.size[1]}")  # type: ignore[index]
        locs += [f"{rel},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in im.boxes]
    csv = base / "LOC_val_solution.csv"
    csv.write_text("\n".join(csv_lines) + "\n")
    for name, lines in (("image_ids.txt", ids), ("class_labels.txt", labels), ("image_sizes.txt", sizes), ("localization.txt", locs)):
        (wsol / name).write_text("\n".join(lines) + "\n")
    (conflict / f"{BY_NUM[1].id}.xml").write_text(_xml(BY_NUM[1], wnid=GOLDFISH))
    return ImageNetFixture(root, xml, csv, wsol, conflict)


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> ImageNetFixture:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="session")
def imagenet_annotations(imagenet_dir: ImageNetFixture) -> dict[str, str]:
    """Annotation format name -> the ``annotations=`` value for it."""
    return {"xml": str(imagenet_dir.xml), "csv": str(imagenet_dir.csv), "wsol": str(imagenet_dir.wsol)}


def write_jpeg(path: Path, size: tuple[int, int], boxes: list[tuple[int, int, int, int]] = (), mode: str = "RGB") -> None:
    """A grey JPEG with red boxes (boxes in pixel edges: x0 <= x < x1)."""
    pic = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(pic)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(230, 20, 20))
    if mode != "RGB":
        pic = pic.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    pic.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None, quality=95)


@pytest.fixture(scope="session")
def truth() -> SimpleNamespace:
    """The fixture's known answers and builders, for tests."""
    return SimpleNamespace(
        TENCH=TENCH, GOLDFISH=GOLDFISH, KITFOX=KITFOX, TISSUE=TISSUE, TIMM_INDEX=TIMM_INDEX,
        IMAGES=IMAGES, BY_NUM=BY_NUM, KEPT=KEPT, SKIPPED=SKIPPED, write_imagenet=write_imagenet,
    )


@pytest.fixture(scope="session")
def jpeg():
    """``write_jpeg(path, size, boxes=(), mode="RGB")``."""
    return write_jpeg
