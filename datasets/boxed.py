"""Datasets of images with boxes (image folders, ImageNet val): what they share.

Options common to both (``CommonOptions``: size, resize, interpolation, verification, box
format), the resize + centre-crop geometry and how boxes follow it (``CropGeometry``: clipped
boxes for the metrics, unclipped ones in the official CASM convention), the base class
``BoxImageDataset`` (decoding, skips, error samples) and small spec-parsing helpers. The formats
themselves live in ``salbench.datasets.folder`` (CSV/JSON boxes) and ``salbench.datasets.imagenet``;
the preprocessing is documented in ``folder``'s module docstring.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from salbench.datasets.base import Sample, SaliencyDataset
from salbench.datasets.highbit import unit_range_plane
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
