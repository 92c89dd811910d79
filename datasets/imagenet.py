"""ImageNet (ILSVRC2012) validation images with ground-truth boxes, in timm's class order.

Images: the ``ILSVRC2012_val_<8 digits>.JPEG`` files under a folder, flat or in synset subfolders
(``n01440764/ILSVRC2012_val_00000293.JPEG``), searched recursively; other files are ignored. The
image id is the file stem. Boxes and labels come from one or more annotation sources
(``annotations=``, comma-separated; each is detected by its shape):

* a folder of per-image XML files (``ILSVRC2012_val_*.xml``, the official bounding-box release:
  ``size/width``, ``size/height``, ``object/name``, ``object/bndbox/{xmin,ymin,xmax,ymax}``);
* ``LOC_val_solution.csv`` (Kaggle: ``ImageId,PredictionString`` with repeated
  ``synset x0 y0 x1 y1``);
* a wsolevaluation metadata folder (``localization.txt`` ``path,x0,y0,x1,y1`` per box,
  ``class_labels.txt`` ``path,index``, optional ``image_sizes.txt`` ``path,w,h``).

Without ``annotations=``, XML files under the image folder and a ``LOC_val_solution.csv`` in the
folder or its parent are used, and the canonical ``spec`` names them. Records are matched to
images by id (file stem), whatever the folder layout.

**Labels** are indices into timm's standard ImageNet-1k order, the sorted list of the 1000
ILSVRC2012 wnids (timm's ``data/_info/imagenet_synsets.txt``, as ``timm.data.ImageNetInfo``
reads it; ``class_names`` are the wnids,
``class_descriptions`` their lemmas). Label sources: the subfolder synset, the CSV (first
synset), the XML (first object name), the wsolevaluation ``class_labels.txt`` (an index, taken
to be in the same sorted-wnid order). When several sources speak about one image they must
agree, or the image is skipped as ``label_conflict``. A synset that is not one of the 1000 (in a
folder name, the CSV or an XML) or a class index outside 0..999 is refused (UsageError) before
any work starts. Boxes come from the first source (in ``annotations=`` order) that has boxes for
the image; a box whose synset differs from the image label is dropped (``box_stats["other_class"]``).

**Box coordinates.** ``box_format=inclusive`` (the default) reads the XML/CSV/wsolevaluation
numbers as 0-based inclusive pixel indices, i.e. edges ``(x0, y0, x1 + 1, y1 + 1)``. Evidence:
the ILSVRC2012 val boxes (as copied unchanged into wsolevaluation's ``localization.txt``) often
have ``xmin = 0`` / ``ymin = 0`` at the border, which a 1-based convention cannot produce, and
typically end at ``499`` / ``374`` on the common 500 x 375 images (the last 0-based index); the
evaluation code that ships with those boxes (wsolevaluation, like the VOC-style devkit code)
computes box areas as ``(x1 - x0 + 1) * (y1 - y0 + 1)``, i.e. inclusive pixel indices. Some
boxes reach ``xmax = width`` (one past the last index); those are clipped to the image and
counted as ``box_stats["outside_image"]``. ``box_format=inclusive1`` reads 1-based (PASCAL-style)
indices; ``box_format=edges`` takes the numbers as pixel edges. The difference is at most one
source pixel per side (about 0.6 px after resizing a 500 x 375 image to 224).

**Official CASM scoring** (the ``casm_*`` columns, ``salbench.metrics.casm_protocol``): the
official code (kondiz/casme ``score.py``) takes the XML numbers as they are, so load the dataset
with ``box_format=edges`` to reproduce it; each sample's ``unclipped_boxes`` are then the XML
boxes mapped by the official formula (``ratio * x - (longer * ratio - 224) / 2``, unrounded,
while torchvision's ``CenterCrop`` rounds the offset it cuts the pixels at), neither clipped
nor dropped, truncated toward zero. Images whose boxes all fall outside the crop are skipped
here (``no_box_in_crop``) unless ``keep_empty=1``, which keeps them and lets ``casm`` score them
a miss as the official code does.

Preprocessing, clipping of boxes to the crop, skips and corrupt files: see
``salbench.datasets.boxed`` (the shared ``BoxImageDataset``). In short: resize the shorter side
to ``size`` (224), centre-crop ``size``; a box is clipped to the crop and dropped if nothing of
it is left; an image with no box left is skipped and counted as ``skipped["no_box_in_crop"]``.

Spec: ``imagenet:/data/ILSVRC2012/val?annotations=/data/LOC_val_solution.csv&limit=1000``.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salbench.datasets.boxed import (
    BOX_FORMATS,
    KNOWN_COMMON,
    BoxImageDataset,
    CommonOptions,
    Record,
    Skip,
    check_keys,
    parse_choice,
    spec_value,
    to_edges,
    walk_files,
)
from salbench.datasets.imagenet_classes import imagenet_synsets, synset_index, synset_lemmas
from salbench.errors import UsageError, close_matches

IMAGE_RE = re.compile(r"^(ILSVRC2012_val_\d{8})\.(jpe?g)$", re.IGNORECASE)
XML_RE = re.compile(r"^(ILSVRC2012_val_\d{8})\.xml$", re.IGNORECASE)
WNID_RE = re.compile(r"^n\d{8}$")
CSV_NAME = "LOC_val_solution.csv"


# --------------------------------------------------------------------------- class table


def wnid_to_index(wnid: str, where: str) -> int:
    idx = synset_index().get(wnid)
    if idx is None:
        raise UsageError(f"{where}: unknown synset {wnid!r}, not one of the 1000 ILSVRC2012 classes{close_matches(wnid, imagenet_synsets())}")
    return idx


# --------------------------------------------------------------------------- sources
class _Source:
    """One annotation source: ``ids`` it covers and ``get(id) -> Record`` (may raise Skip)."""

    kind: str
    path: Path
    origin: Path  # what annotations= named (resolved), for the canonical spec
    ids: set[str]

    def get(self, image_id: str, box_format: str) -> Record:
        raise NotImplementedError


class _XmlSource(_Source):
    kind = "xml"

    def __init__(self, path: Path, files: list[Path]):
        self.path = path
        self.files: dict[str, Path] = {}
        for f in files:
            m = XML_RE.match(f.name)
            if m:
                self.files.setdefault(m.group(1), f)
        self.ids = set(self.files)

    def get(self, image_id: str, box_format: str) -> Record:
        path = self.files[image_id]
        try:
            root = ET.parse(path).getroot()
            size = root.find("size")
            ref = None
            if size is not None:
                w, h = int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
                ref = (w, h) if w > 0 and h > 0 else None
            names, coords = [], []
            for obj in root.iter("object"):
                name = (obj.findtext("name") or "").strip()
                bb = obj.find("bndbox")
                if bb is None:
                    continue
                coords.append([float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")])
                names.append(name)
        except (ET.ParseError, ValueError, TypeError, OSError):
            raise Skip("bad_annotation") from None
        labels = [wnid_to_index(n, str(path)) for n in names]
        boxes = to_edges(np.array(coords, dtype=np.float64).reshape(-1, 4), box_format)
        return Record(labels[0] if labels else None, boxes, list(labels), ref)


class _CsvSource(_Source):
    kind = "csv"

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, tuple[int | None, list[int], np.ndarray] | None] = {}
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise UsageError(f"{str(path)!r}: expected the header 'ImageId,PredictionString' of LOC_val_solution.csv, got {header}")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                image_id = row[0].strip()
                tokens = row[1].split() if len(row) > 1 else []
                if len(tokens) % 5 != 0:
                    self.rows[image_id] = None  # malformed: skipped as bad_annotation if the image is used
                    continue
                labels, coords = [], []
                for k in range(0, len(tokens), 5):
                    labels.append(wnid_to_index(tokens[k], f"{path.name} line {line}"))
                    try:
                        coords.append([float(t) for t in tokens[k + 1 : k + 5]])
                    except ValueError:
                        labels = []
                        break
                if not labels:
                    self.rows[image_id] = None
                    continue
                self.rows[image_id] = (labels[0], labels, np.array(coords, dtype=np.float64))
        self.ids = set(self.rows)

    def get(self, image_id: str, box_format: str) -> Record:
        row = self.rows[image_id]
        if row is None:
            raise Skip("bad_annotation")
        label, labels, coords = row
        return Record(label, to_edges(coords, box_format), list(labels), None)


class _WsolSource(_Source):
    kind = "wsol"

    def __init__(self, path: Path):
        self.path = path

        def lines(name: str, fields: int, required: bool) -> list[tuple[str, list[str], str]]:
            p = path / name
            if not p.is_file():
                if required:
                    raise UsageError(f"wsolevaluation metadata {str(path)!r} lacks {name}")
                return []
            out = []
            for n, ln in enumerate(p.read_text().splitlines(), start=1):
                if not ln.strip():
                    continue
                parts = [s.strip() for s in ln.split(",")]
                if len(parts) != fields:
                    raise UsageError(f"{name} line {n}: expected {fields} comma-separated fields, got {ln!r}")
                out.append((Path(parts[0]).stem, parts[1:], f"{name} line {n}"))
            return out

        def ints(vals: list[str], where: str) -> list[float]:
            try:
                return [float(v) for v in vals]
            except ValueError:
                raise UsageError(f"{where}: expected numbers, got {vals}") from None

        self.labels: dict[str, int] = {}
        for stem, (v,), where in lines("class_labels.txt", 2, True):
            k = int(ints([v], where)[0])
            if not 0 <= k < 1000:
                raise UsageError(f"{where}: class index {v!r} outside 0..999")
            self.labels[stem] = k
        self.sizes: dict[str, tuple[int, int]] = {}
        for stem, vals, where in lines("image_sizes.txt", 3, False):
            w, h = ints(vals, where)
            self.sizes[stem] = (int(w), int(h))
        self.boxes: dict[str, list[list[float]]] = {}
        for stem, vals, where in lines("localization.txt", 5, True):
            self.boxes.setdefault(stem, []).append(ints(vals, where))
        self.ids = set(self.labels) | set(self.boxes)

    def get(self, image_id: str, box_format: str) -> Record:
        coords = np.array(self.boxes.get(image_id, []), dtype=np.float64).reshape(-1, 4)
        label = self.labels.get(image_id)
        return Record(label, to_edges(coords, box_format), [None] * len(coords), self.sizes.get(image_id))


def _open_source(value: str) -> _Source:
    p = Path(value).expanduser()
    if not p.exists():
        raise UsageError(f"imagenet annotations={value!r}: no such file or folder")
    p = p.resolve()
    src: _Source
    if p.is_dir():
        if (p / "localization.txt").is_file():
            src = _WsolSource(p)
        else:
            xmls = walk_files(p, lambda n: XML_RE.match(n) is not None)
            if not xmls:
                raise UsageError(f"imagenet annotations={value!r}: a folder with neither ILSVRC2012_val_*.xml files nor wsolevaluation localization.txt")
            src = _XmlSource(p, xmls)
    elif p.suffix.lower() == ".csv":
        src = _CsvSource(p)
    elif p.name == "localization.txt":
        src = _WsolSource(p.parent)
    elif XML_RE.match(p.name):
        src = _XmlSource(p, [p])
    else:
        raise UsageError(f"imagenet annotations={value!r}: expected an XML folder, LOC_val_solution.csv or a wsolevaluation metadata folder")
    src.origin = p
    return src


# --------------------------------------------------------------------------- dataset
@dataclass
class _Image:
    path: Path
    folder_label: int | None


class ImageNetVal(BoxImageDataset):
    """ILSVRC2012 validation images with boxes (see the module docstring)."""

    kind = "imagenet"

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path | list[str | Path] | None = None,
        box_format: str = "inclusive",
        options: CommonOptions | None = None,
    ):
        self._setup(options or CommonOptions())
        root_p = Path(root).expanduser()
        if not root_p.is_dir():
            raise UsageError(f"imagenet dataset: {str(root)!r} is not a folder")
        self.root = root_p.resolve()
        if box_format not in BOX_FORMATS:
            raise UsageError(f"imagenet dataset box_format={box_format!r}: expected one of {', '.join(BOX_FORMATS)}")
        self.box_format = box_format
        self.class_names = list(imagenet_synsets())
        self.class_descriptions = list(synset_lemmas())
        self.num_classes = len(self.class_names)

        images: dict[str, _Image] = {}
        local_xml: list[Path] = []
        for f in walk_files(self.root, lambda n: IMAGE_RE.match(n) is not None or XML_RE.match(n) is not None):
            if XML_RE.match(f.name):
                local_xml.append(f)
                continue
            image_id = IMAGE_RE.match(f.name).group(1)  # type: ignore[union-attr]
            parent = f.parent.name
            label = wnid_to_index(parent, f"image folder {str(f.parent)!r}") if WNID_RE.match(parent) else None
            if image_id in images:
                self.skipped["duplicate_image"] = self.skipped.get("duplicate_image", 0) + 1
                continue
            images[image_id] = _Image(f, label)
        if not images:
            raise UsageError(f"imagenet dataset: no ILSVRC2012_val_*.JPEG images under {str(self.root)!r}")

        if annotations is None:
            sources: list[_Source] = []
            if local_xml:
                sources.append(_XmlSource(self.root, local_xml))
            for cand in (self.root / CSV_NAME, self.root.parent / CSV_NAME):
                if cand.is_file():
                    sources.append(_CsvSource(cand.resolve()))
                    break
            for src in sources:
                src.origin = src.path
            if not sources:
                raise UsageError(
                    f"imagenet dataset {str(self.root)!r}: no annotations found (no ILSVRC2012_val_*.xml under it, no {CSV_NAME} "
                    "in it or its parent); pass annotations=PATH (an XML folder, LOC_val_solution.csv or a wsolevaluation metadata folder)"
                )
        else:
            values = annotations if isinstance(annotations, list) else [v for v in str(annotations).split(",") if v.strip()]
            if not values:
                raise UsageError("imagenet annotations='': expected one or more paths")
            sources = [_open_source(str(v).strip()) for v in values]
        # The spec names the sources even when they were discovered: adding a file later must
        # not silently change what a recorded spec means.
        self.annotation_spec = ",".join(s.origin.as_posix() for s in sources)
        self.sources = [f"{s.kind}:{s.path}" for s in sources]

        covered = set().union(*(s.ids for s in sources))
        self._record_unmatched(covered - set(images))
        self._images, self._sources = images, sources
        self._select(sorted(images), self._resolve)
        del self._images, self._sources
        self._check_nonempty(f"imagenet folder {str(self.root)!r}")

        items: list[tuple[str, Any]] = [("annotations", self.annotation_spec)]
        if box_format != "inclusive":
            items.append(("box_format", box_format))
        items += self.options.spec_items()
        self.spec = f"imagenet:{self.root.as_posix()}?" + "&".join(f"{k}={spec_value(v)}" for k, v in items)

    def _resolve(self, image_id: str) -> tuple[str, int, np.ndarray, tuple[int, int] | None, dict[str, int]]:
        img = self._images[image_id]
        records = [s.get(image_id, self.box_format) for s in self._sources if image_id in s.ids]
        if not records:
            raise Skip("no_annotation")
        labels = {r.label for r in records if r.label is not None}
        if img.folder_label is not None:
            labels.add(img.folder_label)
        if len(labels) > 1:
            raise Skip("label_conflict")
        if not labels:
            raise Skip("no_label")
        label = labels.pop()
        ref = next((r.ref_size for r in records if r.ref_size is not None), None)
        rec = next((r for r in records if r.boxes.shape[0] > 0), records[0])
        same = np.array([bl is None or bl == label for bl in rec.box_labels], dtype=bool).reshape(-1)
        if same.shape[0] != rec.boxes.shape[0]:
            same = np.ones(rec.boxes.shape[0], dtype=bool)
        return str(img.path), label, rec.boxes[same], ref, {"other_class": int((~same).sum())}

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "box_format": self.box_format}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "annotation_sources": list(self.sources)}


def from_spec(arg: str | None, params: dict[str, str]) -> ImageNetVal:
    """``imagenet:/path/to/val?annotations=...&limit=1000&size=224`` -> ``ImageNetVal``.

    Parameters (all optional): ``annotations`` (comma-separated: XML folder, LOC_val_solution.csv,
    wsolevaluation metadata folder), ``box_format`` (inclusive | inclusive1 | edges), and the
    common ``size``, ``resize``, ``interpolation``, ``limit``, ``subset_seed``, ``verify``
    (none | header | full), ``keep_empty``.
    """
    params = dict(params)
    if not arg:
        raise UsageError("imagenet dataset needs a path: imagenet:/path/to/ILSVRC2012/val?annotations=...")
    check_keys("imagenet", params, (*KNOWN_COMMON, "annotations", "box_format"))
    options = CommonOptions.pop_from("imagenet", params)
    box_format = parse_choice("imagenet", "box_format", params.get("box_format", "inclusive"), BOX_FORMATS)
    annotations = params.get("annotations")
    if annotations is not None and not annotations.strip():
        raise UsageError("imagenet annotations='': expected one or more paths")
    return ImageNetVal(arg, annotations=annotations, box_format=box_format, options=options)
