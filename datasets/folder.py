"""Images on disk with ground-truth boxes: the shared machinery and the generic image folder.

``BoxImageDataset`` is the base of every file-backed dataset (this module's ``ImageFolderBoxes``
and ``salbench.datasets.imagenet.ImageNetVal``). It fixes four things.

**Preprocessing** (DESIGN.md, "Metrics"): resize the shorter side to ``resize`` (default: equal
to ``size``, 224), the longer side to ``int(resize * long / short)`` (torchvision's
``Resize(int)`` rounding), then centre-crop ``size`` x ``size`` with the offsets
``round((new - size) / 2)`` (torchvision's ``CenterCrop``). Images are decoded with PIL,
``.convert("RGB")`` (grayscale, CMYK, palette and RGBA files become RGB; 16-bit and 32-bit
pixels are first scaled by their range into [0, 1], see ``salbench.datasets.highbit``; EXIF orientation is
ignored, as the annotations refer to the stored pixel grid) and resized with PIL's antialiased
``bilinear`` (or ``bicubic``) filter. The sample is float32 3 x size x size in [0, 1].

**Boxes** are held in pixel edges of the annotated image (``x0 <= x < x1`` covers a pixel; see
``salbench.datasets.base``). Source coordinates are converted explicitly by ``box_format``:

* ``edges``       (x0, y0, x1, y1) already pixel edges: kept as is (the default for user folders);
* ``inclusive``   0-based inclusive pixel indices of the first and last covered pixel:
                  edges = (x0, y0, x1 + 1, y1 + 1) (the default for ImageNet, see ``imagenet``);
* ``inclusive1``  1-based inclusive indices (PASCAL VOC): edges = (x0 - 1, y0 - 1, x1, y1).

A box is then clipped to the annotated image (counted as ``box_stats["outside_image"]``), and
mapped with the same per-axis scale and offset as the pixels: ``x' = x * new_w / W - left``,
``y' = y * new_h / H - top``. Pixel edges map exactly under this affine map, and when the file
on disk is a resized copy of the annotated image (annotation ``size`` != file size), ``new_w``
and ``new_h`` come from the file, so the boxes follow the copy. The mapped box is clipped to the
crop ``[0, size]^2`` (``box_stats["clipped_to_crop"]``); a box with no area left inside the crop
is dropped (``box_stats["dropped_outside_crop"]``). An image whose boxes are all dropped (or
that had none) is **skipped** and counted as ``skipped["no_box_in_crop"]`` (``skipped["no_box"]``):
localisation cannot score it. ``keep_empty=1`` keeps such images with an empty (0, 4) box list
instead (``box_stats["images_without_box"]``), for classification-only use.

Alongside ``boxes``, each sample carries ``unclipped_boxes`` for the official CASM scoring
(``salbench.metrics.casm_protocol``): every valid box as annotated, clipped neither to the
image nor to the crop and never dropped, mapped with the official formula
(``CropGeometry.map_boxes_official``: unrounded crop offset) and truncated toward zero like its
``int()``. ``boxes`` and every other metric are unaffected. With ``keep_empty=1`` an image whose
boxes all fall outside the crop is kept and the ``casm`` metric scores it a miss, as the official
code does.

``box_stats`` counts per-box events over the images kept: ``invalid`` (x1 <= x0, y1 <= y0 or
not finite in the source: dropped), ``outside_image``, ``clipped_to_crop``,
``dropped_outside_crop``, ``other_class`` (ImageNet: a box of another synset than the label),
``images_without_box`` and ``rescaled_from_annotated_size`` (per image).

**Bad input never kills a run halfway.** Construction indexes and validates everything that is
cheap (annotations, labels, file headers) and counts what it leaves out in ``skipped[reason]``:

* ``no_annotation``        an image with no annotation record;
* ``no_box``               a record without any usable box (after dropping invalid boxes);
* ``label_conflict``       two label sources disagree (e.g. an XML class vs the CSV label);
* ``no_label``             records without any class (e.g. an XML file with no object);
* ``bad_annotation``       an annotation record that cannot be parsed;
* ``unreadable_image``     the file header is not an image (``verify=header``, the default);
* ``corrupt_image``        the file does not decode (only with ``verify=full``);
* ``duplicate_image``      the same image id found twice (the first path in sorted order wins);
* ``no_box_in_crop``       see above.
* ``no_mask``              ``masks=`` given but the image has no mask file (generic folder only).

Annotations that name no image on disk are recorded as ``unmatched_annotations`` (a count and
the first few ids) rather than as skips: they are not images of the dataset. Non-RGB files are
counted in ``converted[mode]`` from their header. A file that passes the header check but fails
to decode later (a truncated JPEG) is *not* an exception in ``__getitem__``: the sample comes
back with a black image, its label and boxes, and ``meta["error"] = "corrupt image: ..."``, so a
DataLoader worker never dies and the runner can write an error row. ``load_errors`` counts these
in the process that loaded them (with ``num_workers > 0`` the runner must count from the samples'
``meta``). ``verify=full`` decodes every selected image at construction instead and skips the
corrupt ones up front; ``verify=none`` reads no file at construction when the annotations give
the image size.

**Subsets**: candidates are ordered by id; ``subset_seed`` permutes them with
``numpy.random.default_rng(subset_seed)``; the first ``limit`` candidates that pass validation
are kept (so ``limit=N`` gives N usable images whenever there are that many), then re-sorted by
id. Skip counts cover the candidates examined.

The generic folder (``ImageFolderBoxes``, spec ``folder:/path?boxes=boxes.csv``): any image
files under a folder (recursively) plus a boxes file:

* CSV with a header ``image,label,x0,y0,x1,y1`` (optional ``width,height`` columns: the size of
  the image the boxes were drawn on), one row per box; a row with empty box fields gives the
  image's label only. ``image`` is a path relative to the folder (or a file name that is unique
  in it); ``label`` is a class name or an integer index.
* JSON: a list of records, or ``{"classes": [...], "images": [records]}``; a record has
  ``image``, ``label``, and either ``boxes: [[x0, y0, x1, y1], ...]`` or ``x0, y0, x1, y1``
  (optionally ``width``, ``height``).

Class names come from ``classes=`` (inline ``a,b,c``, a ``.txt`` file with one name per line or
a ``.json`` list, or ``imagenet`` for timm's 1000 ImageNet synsets in standard order), or else
from the boxes file: the sorted distinct label names, or, when every label is an integer,
indices ``0..max`` (``num_classes=`` widens that, e.g. to 1000). A label that is neither a known
name nor a valid index is refused (UsageError) before any work starts.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salbench.datasets.base import Sample
from salbench.datasets.imagenet_classes import imagenet_synsets
from salbench.errors import UsageError, close_matches

from salbench.datasets.boxed import (
    BOX_FORMATS,
    BoxImageDataset,
    CommonOptions,
    IMAGE_EXTENSIONS,
    KNOWN_COMMON,
    Skip,
    check_keys,
    parse_choice,
    parse_int,
    spec_value,
    to_edges,
    walk_files,
)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _int_like(s: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", s.strip()) is not None


def load_class_list(value: str, where: str = "folder") -> list[str]:
    """``classes=`` value -> names: ``imagenet``, inline ``a,b,c``, or a .txt / .json file."""
    value = value.strip()
    if value == "imagenet":
        return list(imagenet_synsets())
    if "," in value:
        names = [v.strip() for v in value.split(",") if v.strip()]
    else:
        p = Path(value).expanduser()
        if not p.is_file():
            raise UsageError(f"{where} dataset classes={value!r}: expected 'imagenet', names separated by commas, or an existing .txt/.json file")
        if p.suffix.lower() == ".json":
            try:
                names = [str(v) for v in json.loads(p.read_text())]
            except (ValueError, TypeError):
                raise UsageError(f"{where} dataset classes file {str(p)!r}: expected a JSON list of class names") from None
        else:
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if len(names) < 1 or len(set(names)) != len(names):
        raise UsageError(f"{where} dataset classes={value!r}: expected at least one class and no duplicate names")
    return names


@dataclass
class _Row:
    where: str  # "boxes.csv line 3"
    image: str
    label: str
    box: tuple[float, float, float, float] | None
    ref_size: tuple[int, int] | None


def _num(where: str, key: str, v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {key}={v!r} is not a number") from None
    return x


def _read_box_rows(path: Path) -> tuple[list[_Row], list[str] | None]:
    """Rows of a boxes CSV/JSON file (and the JSON's class list when it has one)."""
    rows: list[_Row] = []
    name = path.name
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"boxes file {str(path)!r} is not valid JSON: {exc}") from None
        classes = None
        if isinstance(data, dict):
            classes = data.get("classes")
            if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                raise UsageError(f"boxes file {str(path)!r}: 'classes' must be a list of names")
            data = data.get("images")
        if not isinstance(data, list):
            raise UsageError(f"boxes file {str(path)!r}: expected a list of records or {{'classes': [...], 'images': [...]}}")
        for k, rec in enumerate(data):
            where = f"{name} record {k}"
            if not isinstance(rec, dict) or "image" not in rec or "label" not in rec:
                raise UsageError(f"{where}: expected an object with 'image', 'label' and 'boxes' (or x0, y0, x1, y1)")
            ref = None
            if "width" in rec and "height" in rec:
                ref = (int(_num(where, "width", rec["width"])), int(_num(where, "height", rec["height"])))
            boxes = rec.get("boxes")
            if boxes is None and all(k2 in rec for k2 in ("x0", "y0", "x1", "y1")):
                boxes = [[rec["x0"], rec["y0"], rec["x1"], rec["y1"]]]
            if not boxes:
                rows.append(_Row(where, str(rec["image"]), str(rec["label"]), None, ref))
                continue
            for b in boxes:
                if not isinstance(b, (list, tuple)) or len(b) != 4:
                    raise UsageError(f"{where}: box {b!r} is not [x0, y0, x1, y1]")
                rows.append(_Row(where, str(rec["image"]), str(rec["label"]), tuple(_num(where, "box", v) for v in b), ref))  # type: ignore[arg-type]
        return rows, classes
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image", "label", "x0", "y0", "x1", "y1") if c not in fields]
        if missing:
            raise UsageError(f"boxes file {str(path)!r} lacks column(s) {missing}: expected a header image,label,x0,y0,x1,y1")
        reader.fieldnames = fields
        for line, r in enumerate(reader, start=2):
            where = f"{name} line {line}"
            coords = [(r.get(k) or "").strip() for k in ("x0", "y0", "x1", "y1")]
            box = None
            if any(coords):
                if not all(coords):
                    raise UsageError(f"{where}: a box needs all of x0, y0, x1, y1 (got {coords})")
                box = tuple(_num(where, k, v) for k, v in zip(("x0", "y0", "x1", "y1"), coords))
            ref = None
            if (r.get("width") or "").strip() and (r.get("height") or "").strip():
                ref = (int(_num(where, "width", r["width"])), int(_num(where, "height", r["height"])))
            rows.append(_Row(where, (r.get("image") or "").strip(), (r.get("label") or "").strip(), box, ref))  # type: ignore[arg-type]
    return rows, None


class ImageFolderBoxes(BoxImageDataset):
    """Users' own images with boxes from a CSV or JSON file (see the module docstring)."""

    kind = "folder"

    def __init__(
        self,
        root: str | Path,
        boxes: str | Path | None = None,
        classes: list[str] | str | None = None,
        num_classes: int | None = None,
        box_format: str = "edges",
        options: CommonOptions | None = None,
        masks: str | Path | None = None,
    ):
        self._setup(options or CommonOptions())
        classes_spec: str | None = None
        if isinstance(classes, str):
            classes_spec = classes.strip()
            classes = load_class_list(classes_spec)
            if classes_spec != "imagenet" and "," not in classes_spec:
                classes_spec = str(Path(classes_spec).expanduser().resolve())
        elif classes is not None:
            classes = [str(c) for c in classes]
            classes_spec = ",".join(classes)
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UsageError(f"folder dataset: {str(root)!r} is not a folder")
        self.root = root.resolve()
        if box_format not in BOX_FORMATS:
            raise UsageError(f"folder dataset box_format={box_format!r}: expected one of {', '.join(BOX_FORMATS)}")
        self.box_format = box_format
        if boxes is None:
            found = [p for p in (self.root / "boxes.csv", self.root / "boxes.json") if p.is_file()]
            if not found:
                raise UsageError(f"folder dataset {str(self.root)!r}: no boxes.csv or boxes.json in it; pass boxes=PATH")
            boxes = found[0]
        bpath = Path(boxes).expanduser()
        if not bpath.is_absolute() and not bpath.exists():
            bpath = self.root / bpath
        if not bpath.is_file():
            raise UsageError(f"folder dataset boxes={str(boxes)!r}: file not found")
        self.boxes_path = bpath.resolve()
        self.masks_dir: Path | None = None
        if masks is not None:
            mpath = Path(masks).expanduser()
            if not mpath.is_absolute() and not mpath.exists():
                mpath = self.root / mpath
            if not mpath.is_dir():
                raise UsageError(f"folder dataset masks={str(masks)!r}: expected a folder of PNG masks (one <image path>.png per image)")
            self.masks_dir = mpath.resolve()

        files = walk_files(self.root, _is_image)
        if self.masks_dir is not None:  # masks kept inside the folder are not images of the dataset
            files = [f for f in files if not f.resolve().is_relative_to(self.masks_dir)]
        if not files:
            raise UsageError(f"folder dataset {str(self.root)!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
        by_rel = {p.relative_to(self.root).as_posix(): p for p in files}
        by_name: dict[str, list[str]] = {}
        for rel in by_rel:
            by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)

        rows, json_classes = _read_box_rows(self.boxes_path)
        if classes is None and json_classes is not None:
            classes = list(json_classes)
        self.class_names, to_index = self._class_table(rows, classes, num_classes)
        self.num_classes = len(self.class_names)

        per_image: dict[str, list[_Row]] = {}
        unmatched: set[str] = set()
        for r in rows:
            rel = self._match(r.image, by_rel, by_name)
            if rel is None:
                unmatched.add(r.image)
            else:
                per_image.setdefault(rel, []).append(r)
        self._record_unmatched(unmatched)
        self._rows = per_image
        self._to_index = to_index
        self._by_rel = by_rel
        self._select(sorted(by_rel), self._resolve)
        del self._rows, self._to_index, self._by_rel
        self._check_nonempty(f"folder {str(self.root)!r} with boxes {str(self.boxes_path)!r}")
        items: list[tuple[str, Any]] = [("boxes", self.boxes_path)]
        if classes_spec is not None:
            items.append(("classes", classes_spec))
        if num_classes is not None:
            items.append(("num_classes", num_classes))
        if box_format != "edges":
            items.append(("box_format", box_format))
        if self.masks_dir is not None:
            items.append(("masks", self.masks_dir))
        items += self.options.spec_items()
        self.spec = f"folder:{self.root.as_posix()}?" + "&".join(f"{k}={spec_value(v)}" for k, v in items)

    def mask_path(self, image_path: str | Path) -> Path:
        """The mask of an image: ``<masks>/<image path relative to the folder, extension .png>``."""
        assert self.masks_dir is not None
        return self.masks_dir / Path(image_path).resolve().relative_to(self.root).with_suffix(".png")

    def __getitem__(self, i: int) -> Sample:
        """The sample, with ``gt_mask`` (H x W float32 in {0, 1}: mask pixel > 0) when ``masks=`` is
        given: resized to the image's plan with nearest-neighbour sampling and cropped like it."""
        sample = super().__getitem__(i)
        if self.masks_dir is None:
            return sample
        from PIL import Image

        s = self.options.size
        try:
            with Image.open(self.mask_path(self.entries[i].path)) as im:
                grey = im.convert("L")
            new_w, new_h, left, top = self.geometry.plan(*grey.size)
            grey = grey.resize((new_w, new_h), resample=Image.Resampling.NEAREST).crop((left, top, left + s, top + s))
            sample.gt_mask = torch.from_numpy((np.asarray(grey) > 0).astype(np.float32))
        except Exception as exc:  # like a corrupt image: an error row, not a dead worker
            sample.gt_mask = torch.zeros(s, s, dtype=torch.float32)
            sample.meta.setdefault("error", f"corrupt mask for {self.entries[i].path}: {type(exc).__name__}: {str(exc)[:200]}")
        return sample

    def _match(self, image: str, by_rel: dict[str, Path], by_name: dict[str, list[str]]) -> str | None:
        s = image.replace("\\", "/")
        p = Path(s)
        if p.is_absolute():
            try:
                s = p.resolve().relative_to(self.root).as_posix()
            except ValueError:
                s = p.name
        s = s[2:] if s.startswith("./") else s
        if s in by_rel:
            return s
        hits = by_name.get(s.rsplit("/", 1)[-1], [])
        return hits[0] if len(hits) == 1 else None

    def _class_table(self, rows: list[_Row], classes: list[str] | None, num_classes: int | None) -> tuple[list[str], Callable[[_Row], int]]:
        labels = {r.label for r in rows}
        if classes is not None:
            names = list(classes)
            if num_classes is not None and num_classes != len(names):
                raise UsageError(f"folder dataset num_classes={num_classes} disagrees with the {len(names)} class names given")
            lookup = {n: k for k, n in enumerate(names)}
        elif labels and all(_int_like(v) for v in labels):
            top = max(int(v) for v in labels)
            k = num_classes if num_classes is not None else top + 1
            if k <= top:
                raise UsageError(f"folder dataset num_classes={num_classes}: the boxes file uses label {top}")
            names = [str(i) for i in range(k)]
            lookup = {}
        elif any(_int_like(v) for v in labels):
            bad = sorted(v for v in labels if _int_like(v))[:3]
            raise UsageError(f"boxes file {str(self.boxes_path)!r} mixes class names and integer labels ({bad}); pass classes=... to say which is which")
        else:
            names = sorted(labels)
            if num_classes is not None and num_classes != len(names):
                raise UsageError(f"folder dataset num_classes={num_classes} disagrees with the {len(names)} class names in {self.boxes_path.name}")
            lookup = {n: k for k, n in enumerate(names)}
        if not names:
            raise UsageError(f"boxes file {str(self.boxes_path)!r} has no rows")

        def to_index(r: _Row) -> int:
            if r.label in lookup:
                return lookup[r.label]
            if _int_like(r.label) and 0 <= int(r.label) < len(names):
                return int(r.label)
            raise UsageError(f"{r.where}: label {r.label!r} is neither a class name nor an index 0..{len(names) - 1}{close_matches(r.label, names)}")

        for r in rows:  # refuse unknown labels up front, before any work starts
            to_index(r)
        return names, to_index

    def _resolve(self, rel: str) -> tuple[str, int, np.ndarray, tuple[int, int] | None]:
        rows = self._rows.get(rel)
        if not rows:
            raise Skip("no_annotation")
        labels = {self._to_index(r) for r in rows}
        if len(labels) > 1:
            raise Skip("label_conflict")
        refs = {r.ref_size for r in rows if r.ref_size is not None}
        if len(refs) > 1:
            raise Skip("bad_annotation")
        if self.masks_dir is not None and not self.mask_path(self._by_rel[rel]).is_file():
            raise Skip("no_mask")
        boxes = [r.box for r in rows if r.box is not None]
        edges = to_edges(np.array(boxes, dtype=np.float64).reshape(-1, 4), self.box_format)
        return str(self._by_rel[rel]), labels.pop(), edges, (refs.pop() if refs else None)


def from_spec(arg: str | None, params: dict[str, str]) -> ImageFolderBoxes:
    """``folder:/path?boxes=boxes.csv&classes=...&limit=...`` -> ``ImageFolderBoxes``.

    Parameters (all optional): ``boxes`` (CSV/JSON path, default ``boxes.csv``/``boxes.json`` in
    the folder), ``classes``, ``num_classes``, ``box_format`` (edges | inclusive | inclusive1),
    and the common ``size``, ``resize``, ``interpolation``, ``limit``, ``subset_seed``,
    ``verify`` (none | header | full), ``keep_empty``, ``masks`` (a folder of object masks: one PNG
    per image at the image's relative path with extension ``.png``, nonzero = object; images
    without one are skipped as ``no_mask``; enables the pixel-mask metrics such as PxAP).
    """
    params = dict(params)
    if not arg:
        raise UsageError("folder dataset needs a path: folder:/path/to/images?boxes=boxes.csv")
    check_keys("folder", params, (*KNOWN_COMMON, "boxes", "classes", "num_classes", "box_format", "masks"))
    options = CommonOptions.pop_from("folder", params)
    classes = params["classes"] if "classes" in params else None
    num_classes = parse_int("folder", "num_classes", params["num_classes"], 1) if "num_classes" in params else None
    box_format = parse_choice("folder", "box_format", params.get("box_format", "edges"), BOX_FORMATS)
    return ImageFolderBoxes(arg, boxes=params.get("boxes") or None, classes=classes, num_classes=num_classes, box_format=box_format, options=options,
                           masks=params.get("masks") or None)
