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
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from salbench.datasets.base import Sample, SaliencyDataset
from salbench.datasets.highbit import unit_range_plane
from salbench.datasets.imagenet_classes import imagenet_synsets
from salbench.errors import UsageError, close_matches

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
#: box_format -> (offset added to x0/y0, offset added to x1/y1) giving pixel edges.
BOX_FORMATS: dict[str, tuple[float, float]] = {"edges": (0.0, 0.0), "inclusive": (0.0, 1.0), "inclusive1": (-1.0, 0.0)}
VERIFY_MODES = ("none", "header", "full")
INTERPOLATIONS = ("bilinear", "bicubic")
#: A mapped box needs at least this width and height (pixels) inside the crop to be kept.
MIN_BOX_SIDE = 1e-6
#: How many unmatched annotation ids ``describe()`` lists.
SHOW_UNMATCHED = 5


# --------------------------------------------------------------------------- spec parameters
def _bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    if n:
        counter[key] = counter.get(key, 0) + n


def parse_int(kind: str, key: str, value: Any, minimum: int | None = None) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{kind} dataset {key}={value!r}: expected an integer" + (f" >= {minimum}" if minimum is not None else "")) from None
    if minimum is not None and v < minimum:
        raise UsageError(f"{kind} dataset {key}={value!r}: expected an integer >= {minimum}")
    return v


def parse_bool(kind: str, key: str, value: Any) -> bool:
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on", ""):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{kind} dataset {key}={value!r}: expected 1/0 or true/false")


def parse_choice(kind: str, key: str, value: Any, choices: Iterable[str]) -> str:
    s = str(value).strip()
    choices = list(choices)
    if s not in choices:
        raise UsageError(f"{kind} dataset {key}={value!r}: expected one of {', '.join(choices)}{close_matches(s, choices)}")
    return s


def check_keys(kind: str, params: dict[str, Any], known: Iterable[str]) -> None:
    known = sorted(known)
    for key in params:
        if key not in known:
            raise UsageError(f"unknown {kind} dataset parameter {key!r}{close_matches(key, known)}; known: {', '.join(known)}")


def spec_value(v: Any) -> str:
    """A parameter value as it appears in a canonical spec string (round-trips ``parse_qsl``)."""
    return quote(str(v), safe="/:,")


@dataclass(frozen=True)
class CommonOptions:
    """The options every file-backed dataset takes (see the module docstring)."""

    size: int = 224
    resize: int | None = None
    interpolation: str = "bilinear"
    limit: int | None = None
    subset_seed: int | None = None
    verify: str = "header"
    keep_empty: bool = False

    def __post_init__(self) -> None:
        if self.size < 8:
            raise UsageError(f"dataset size={self.size}: expected a crop size of at least 8 pixels")
        if self.resize is not None and self.resize < self.size:
            raise UsageError(f"dataset resize={self.resize}: expected the shorter-side size to be >= the crop size {self.size}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"dataset interpolation={self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"dataset limit={self.limit}: expected a positive image count")
        if self.verify not in VERIFY_MODES:
            raise UsageError(f"dataset verify={self.verify!r}: expected one of {', '.join(VERIFY_MODES)}")

    @property
    def resize_to(self) -> int:
        return self.size if self.resize is None else self.resize

    @classmethod
    def pop_from(cls, kind: str, params: dict[str, Any]) -> "CommonOptions":
        """Take the common keys out of ``params`` (strings from a spec) and validate them."""
        kw: dict[str, Any] = {}
        if "size" in params:
            kw["size"] = parse_int(kind, "size", params.pop("size"), 8)
        if "resize" in params:
            kw["resize"] = parse_int(kind, "resize", params.pop("resize"), 8)
        if "limit" in params:
            kw["limit"] = parse_int(kind, "limit", params.pop("limit"), 1)
        if "subset_seed" in params:
            kw["subset_seed"] = parse_int(kind, "subset_seed", params.pop("subset_seed"), 0)
        if "interpolation" in params:
            kw["interpolation"] = parse_choice(kind, "interpolation", params.pop("interpolation"), INTERPOLATIONS)
        if "verify" in params:
            kw["verify"] = parse_choice(kind, "verify", params.pop("verify"), VERIFY_MODES)
        if "keep_empty" in params:
            kw["keep_empty"] = parse_bool(kind, "keep_empty", params.pop("keep_empty"))
        return cls(**kw)

    def spec_items(self) -> list[tuple[str, Any]]:
        """Non-default options, in a fixed order, for the canonical spec string."""
        out: list[tuple[str, Any]] = []
        if self.limit is not None:
            out.append(("limit", self.limit))
        if self.subset_seed is not None:
            out.append(("subset_seed", self.subset_seed))
        if self.size != 224:
            out.append(("size", self.size))
        if self.resize is not None and self.resize != self.size:
            out.append(("resize", self.resize))
        if self.interpolation != "bilinear":
            out.append(("interpolation", self.interpolation))
        if self.verify != "header":
            out.append(("verify", self.verify))
        if self.keep_empty:
            out.append(("keep_empty", 1))
        return out


KNOWN_COMMON = ("size", "resize", "interpolation", "limit", "subset_seed", "verify", "keep_empty")


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class CropGeometry:
    """Resize the shorter side to ``resize``, centre-crop ``size`` (torchvision's rounding)."""

    size: int = 224
    resize: int = 224

    def plan(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(new_w, new_h, left, top) for an image of ``width`` x ``height``."""
        if width <= height:
            new_w, new_h = self.resize, int(self.resize * height / width)
        else:
            new_w, new_h = int(self.resize * width / height), self.resize
        left = int(round((new_w - self.size) / 2.0))
        top = int(round((new_h - self.size) / 2.0))
        return new_w, new_h, left, top

    def map_boxes(self, boxes: np.ndarray, ref_size: tuple[int, int], file_size: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int]:
        """Map pixel-edge boxes of the annotated image (``ref_size`` = (W, H)) into the crop.

        ``file_size`` is the size of the file actually decoded (default: ``ref_size``). Returns
        (kept boxes float32 (k, 4) clipped to the crop, number of kept boxes that were clipped,
        number of boxes dropped for having no area inside the crop).
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] == 0:
            return np.zeros((0, 4), dtype=np.float32), 0, 0
        fw, fh = file_size if file_size is not None else ref_size
        new_w, new_h, left, top = self.plan(fw, fh)
        sx, sy = new_w / ref_size[0], new_h / ref_size[1]
        mapped = boxes * np.array([sx, sy, sx, sy]) - np.array([left, top, left, top], dtype=np.float64)
        clipped = np.clip(mapped, 0.0, float(self.size))
        keep = ((clipped[:, 2] - clipped[:, 0]) > MIN_BOX_SIDE) & ((clipped[:, 3] - clipped[:, 1]) > MIN_BOX_SIDE)
        changed = np.any(np.abs(clipped - mapped) > 1e-9, axis=1)
        return clipped[keep].astype(np.float32), int((keep & changed).sum()), int((~keep).sum())


    def map_boxes_official(self, boxes: np.ndarray, ref_size: tuple[int, int]) -> np.ndarray:
        """The official CASM mapping of boxes of the annotated image (``ref_size`` = (W, H)) into
        the crop, not clipped and nothing dropped: float32 (n, 4), truncated toward zero.

        kondiz/casme ``score.py`` ``resize_pos``: ``ratio = resize / shorter side``, the longer
        axis is shifted by ``cut = (longer * ratio - size) / 2`` (not rounded: torchvision's
        ``CenterCrop``, which cuts the pixels, rounds its offset, and ``Resize`` truncates the
        longer side, so the two can differ by up to a pixel; the official code keeps this
        formula for its boxes and so does this), the shorter axis by ``(resize - size) / 2``
        (0 for the official resize = size = 224), then ``int()`` of each coordinate. Computed in
        float64 with the official operation order, so the truncation matches it exactly; the
        integers are exact in float32. For ``salbench.metrics.casm_protocol`` only.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] == 0:
            return np.zeros((0, 4), dtype=np.float32)
        width, height = ref_size
        if width > height:
            ratio = self.resize / height
            xcut, ycut = (width * ratio - self.size) / 2, (self.resize - self.size) / 2
        else:
            ratio = self.resize / width
            xcut, ycut = (self.resize - self.size) / 2, (height * ratio - self.size) / 2
        mapped = np.stack([ratio * boxes[:, 0] - xcut, ratio * boxes[:, 1] - ycut, ratio * boxes[:, 2] - xcut, ratio * boxes[:, 3] - ycut], axis=1)
        return np.trunc(mapped).astype(np.float32)


def to_edges(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Source coordinates -> pixel edges, by ``box_format`` (see the module docstring)."""
    a, b = BOX_FORMATS[box_format]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes + np.array([a, a, b, b])


# --------------------------------------------------------------------------- entries
@dataclass
class Record:
    """What one annotation source says about one image (before validation).

    ``boxes`` are pixel edges in the coordinates of an image of ``ref_size`` (None: the file's own
    size, read from its header). ``box_labels`` gives each box's class when the source names it.
    """

    label: int | None
    boxes: np.ndarray
    box_labels: list[int | None] = field(default_factory=list)
    ref_size: tuple[int, int] | None = None


@dataclass
class Entry:
    """One validated image of the dataset."""

    id: str
    path: str
    label: int
    boxes: np.ndarray  # (n, 4) float64 pixel edges in ref_size coordinates, clipped to the image
    ref_size: tuple[int, int]
    file_size: tuple[int, int] | None = None  # from the header when it was read
    raw_boxes: np.ndarray | None = None  # (m, 4) valid pixel-edge boxes as annotated: not clipped, none dropped (official CASM scoring)


class Skip(Exception):
    """Raised by a dataset's resolver: leave this candidate out, counted under ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def walk_files(root: Path, accept: Callable[[str], bool]) -> list[Path]:
    """Files under ``root`` (recursively, following links) whose name passes ``accept``, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if accept(name):
                out.append(Path(dirpath) / name)
    return sorted(out)


def read_header(path: str | Path, full: bool = False) -> tuple[tuple[int, int], str]:
    """((width, height), PIL mode) of an image file; ``full`` also decodes all pixels."""
    from PIL import Image

    with Image.open(path) as im:
        size, mode = (int(im.size[0]), int(im.size[1])), str(im.mode)
        if full:
            im.load()
    return size, mode


# --------------------------------------------------------------------------- base class
class BoxImageDataset(SaliencyDataset):
    """Base for datasets of image files with boxes (see the module docstring)."""

    kind = "files"

    def _setup(self, options: CommonOptions) -> None:
        self.options = options
        self.geometry = CropGeometry(options.size, options.resize_to)
        self.image_size = (options.size, options.size)
        self.skipped: dict[str, int] = {}
        self.converted: dict[str, int] = {}
        self.box_stats: dict[str, int] = {}
        self.load_errors: dict[str, int] = {}
        self.unmatched: list[str] = []
        self.num_unmatched = 0
        self.entries: list[Entry] = []

    # ------------------------------------------------------------------ selection
    def _select(self, candidates: list[str], resolve: Callable[[str], tuple[Any, ...]]) -> None:
        """Validate candidates in subset order until ``limit`` are kept; fill ``self.entries``.

        ``resolve(id)`` returns (path, label, boxes in pixel edges, annotated size or None[,
        box_stats to add if the image is kept]) or raises ``Skip``.
        """
        opts = self.options
        order = np.arange(len(candidates)) if opts.subset_seed is None else np.random.default_rng(opts.subset_seed).permutation(len(candidates))
        entries: list[Entry] = []
        for i in order:
            if opts.limit is not None and len(entries) >= opts.limit:
                break
            cid = candidates[int(i)]
            try:
                path, label, boxes, ref_size, *extra = resolve(cid)
                entries.append(self._validate(cid, path, label, boxes, ref_size))
            except Skip as s:
                _bump(self.skipped, s.reason)
                continue
            for key, n in (extra[0] if extra else {}).items():
                _bump(self.box_stats, key, n)
        entries.sort(key=lambda e: e.id)
        self.entries = entries

    def _validate(self, cid: str, path: str, label: int, boxes: np.ndarray, ref_size: tuple[int, int] | None) -> Entry:
        opts = self.options
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(axis=1)
        n_invalid = int((~valid).sum())
        boxes = boxes[valid]
        if boxes.shape[0] == 0 and not opts.keep_empty:
            raise Skip("no_box")
        file_size = mode = None
        if opts.verify != "none" or ref_size is None:
            try:
                file_size, mode = read_header(path, full=False)
            except Exception:
                raise Skip("unreadable_image") from None
            if opts.verify == "full":
                try:
                    read_header(path, full=True)
                except Exception:
                    raise Skip("corrupt_image") from None
        if ref_size is None:
            ref_size = file_size
        assert ref_size is not None
        w, h = ref_size
        inside = np.clip(boxes, 0.0, np.array([w, h, w, h], dtype=np.float64))
        outside = np.any(np.abs(inside - boxes) > 1e-9, axis=1)
        keep = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
        mapped, n_clipped, n_dropped = self.geometry.map_boxes(inside[keep], ref_size, file_size)
        if mapped.shape[0] == 0 and not opts.keep_empty:
            raise Skip("no_box_in_crop")
        # Counted only for images the dataset keeps: they describe what the benchmark sees.
        _bump(self.box_stats, "invalid", n_invalid)
        _bump(self.box_stats, "outside_image", int(outside.sum()))
        _bump(self.box_stats, "dropped_outside_crop", n_dropped + int((~keep).sum()))
        _bump(self.box_stats, "clipped_to_crop", n_clipped)
        if mapped.shape[0] == 0:
            _bump(self.box_stats, "images_without_box")
        if file_size is not None and file_size != ref_size:
            _bump(self.box_stats, "rescaled_from_annotated_size")
        if mode is not None and mode != "RGB":
            _bump(self.converted, mode)
        return Entry(cid, str(path), int(label), inside[keep], (int(w), int(h)), file_size, raw_boxes=boxes)

    def _record_unmatched(self, ids: Iterable[str]) -> None:
        ids = sorted(ids)
        self.num_unmatched = len(ids)
        self.unmatched = ids[:SHOW_UNMATCHED]

    def _check_nonempty(self, where: str) -> None:
        if not self.entries:
            raise UsageError(f"no usable images in {where}: skipped {dict(sorted(self.skipped.items())) or 'none'}")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.entries)

    def load_image(self, path: str) -> tuple[torch.Tensor, tuple[int, int], str]:
        """Decode, convert to RGB, resize and crop: (3 x size x size float32, file size, mode)."""
        from PIL import Image

        with Image.open(path) as im:
            mode = str(im.mode)
            plane = unit_range_plane(im)  # 16/32-bit pixels scaled by their range (salbench.datasets.highbit)
            rgb = im.convert("RGB") if plane is None else plane  # forces the decode: a truncated file raises here
        file_size = (int(rgb.size[0]), int(rgb.size[1]))
        new_w, new_h, left, top = self.geometry.plan(*file_size)
        resample = Image.Resampling.BICUBIC if self.options.interpolation == "bicubic" else Image.Resampling.BILINEAR
        s = self.options.size
        rgb = rgb.resize((new_w, new_h), resample=resample).crop((left, top, left + s, top + s))
        if plane is not None:
            grey = torch.from_numpy(np.asarray(rgb, dtype=np.float32).clip(0.0, 1.0).copy())
            return grey.expand(3, -1, -1).contiguous(), file_size, mode
        arr = np.asarray(rgb, dtype=np.uint8)
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        return img, file_size, mode

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self.entries):
            raise IndexError(i)
        e = self.entries[i]
        meta: dict[str, Any] = {}
        try:
            image, file_size, mode = self.load_image(e.path)
            if mode != "RGB":
                meta["converted"] = mode
        except Exception as exc:  # a bad file is an error row for the runner, never a dead worker
            s = self.options.size
            image = torch.zeros(3, s, s, dtype=torch.float32)
            file_size = e.file_size
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            meta["error"] = f"corrupt image: {e.path}: {type(exc).__name__}: {msg}"
            _bump(self.load_errors, "corrupt_image")
        boxes, _, _ = self.geometry.map_boxes(e.boxes, e.ref_size, file_size)
        raw = e.raw_boxes if e.raw_boxes is not None else e.boxes
        unclipped = torch.from_numpy(self.geometry.map_boxes_official(raw, e.ref_size))
        return Sample(index=i, id=e.id, image=image, label=e.label, boxes=torch.from_numpy(boxes), meta=meta, unclipped_boxes=unclipped)

    # ------------------------------------------------------------------ records
    def protocol(self) -> dict[str, Any]:
        g = self.geometry
        return {**super().protocol(), "preprocess": f"resize{g.resize}-centercrop{g.size}-{self.options.interpolation}"}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "converted": dict(sorted(self.converted.items())),
            "box_stats": dict(sorted(self.box_stats.items())),
            "load_errors": dict(sorted(self.load_errors.items())),
            "unmatched_annotations": {"count": self.num_unmatched, "first": list(self.unmatched)},
        }


# --------------------------------------------------------------------------- generic folder
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

        files = walk_files(self.root, _is_image)
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
        items += self.options.spec_items()
        self.spec = f"folder:{self.root.as_posix()}?" + "&".join(f"{k}={spec_value(v)}" for k, v in items)

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
        boxes = [r.box for r in rows if r.box is not None]
        edges = to_edges(np.array(boxes, dtype=np.float64).reshape(-1, 4), self.box_format)
        return str(self._by_rel[rel]), labels.pop(), edges, (refs.pop() if refs else None)


def from_spec(arg: str | None, params: dict[str, str]) -> ImageFolderBoxes:
    """``folder:/path?boxes=boxes.csv&classes=...&limit=...`` -> ``ImageFolderBoxes``.

    Parameters (all optional): ``boxes`` (CSV/JSON path, default ``boxes.csv``/``boxes.json`` in
    the folder), ``classes``, ``num_classes``, ``box_format`` (edges | inclusive | inclusive1),
    and the common ``size``, ``resize``, ``interpolation``, ``limit``, ``subset_seed``,
    ``verify`` (none | header | full), ``keep_empty``.
    """
    params = dict(params)
    if not arg:
        raise UsageError("folder dataset needs a path: folder:/path/to/images?boxes=boxes.csv")
    check_keys("folder", params, (*KNOWN_COMMON, "boxes", "classes", "num_classes", "box_format"))
    options = CommonOptions.pop_from("folder", params)
    classes = params["classes"] if "classes" in params else None
    num_classes = parse_int("folder", "num_classes", params["num_classes"], 1) if "num_classes" in params else None
    box_format = parse_choice("folder", "box_format", params.get("box_format", "edges"), BOX_FORMATS)
    return ImageFolderBoxes(arg, boxes=params.get("boxes") or None, classes=classes, num_classes=num_classes, box_format=box_format, options=options)
