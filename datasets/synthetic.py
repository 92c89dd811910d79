"""Synthetic ground-truth benchmark: one textured object per image on class-independent clutter.

A class is a (shape, texture) pair and nothing else: the object's colours, position, scale,
rotation, texture phase and period, and the background clutter are all drawn from distributions
that do not depend on the class. Every image depends only on ``(seed, split, index)`` (its own
``numpy`` generator), so any subset, order or shard gives the same bytes. Each image comes with
its exact box and pixel mask.

Variants:
  * ``single`` (default): one object, area 5% to 50% of the image. Its centre is uniform over the
    positions that keep at least ``1 - outside`` of its width inside the image (default: up to a
    quarter may be cut off by the border, as objects in photographs are). Without that, large
    objects could only sit in the middle and a fixed centre box would localise them: with
    ``outside=0`` the centre control's LE is 53%, with 0.25 it is 74% (500 val images).
  * ``twin``: two identical copies side by side (the CASM thought experiment: a classifier may
    need only one copy, a classifier-agnostic map should cover both). Two boxes per image.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from salbench.datasets.base import Sample, SaliencyDataset
from salbench.errors import UsageError

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "diamond", "crescent", "tee")
TEXTURES = ("hstripes", "vstripes", "diagonal", "checker", "dots", "solid", "rings", "grid", "antidiagonal", "speckle")
SPLITS = {"train": 1, "val": 2, "test": 3}
MAX_CLASSES = len(SHAPES) * len(TEXTURES)


def class_parts(k: int) -> tuple[str, str]:
    """Class ``k`` -> (shape, texture); distinct pairs for k < 100, one new shape per class up to 10."""
    s = k % len(SHAPES)
    t = (s + k // len(SHAPES)) % len(TEXTURES)
    return SHAPES[s], TEXTURES[t]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape predicate in object coordinates (the shape fits in the unit disc)."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # equilateral, apex up, inscribed in the unit circle
        return (v <= 0.5) & (np.sqrt(3) * u - v <= 1.0) & (-np.sqrt(3) * u - v <= 1.0)
    if shape == "star":
        theta = np.arctan2(v, u)
        rad = 0.45 + 0.55 * np.abs(np.cos(2.5 * theta + np.pi / 2)) ** 1.5
        return np.sqrt(r2) <= rad
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "hexagon":
        a = np.abs(u)
        b = np.abs(v)
        return (b <= 0.866) & (np.sqrt(3) * a + b <= np.sqrt(3))
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.8**2)
    if shape == "tee":
        return ((v <= -0.45) & (v >= -0.95) & (np.abs(u) <= 0.95)) | ((np.abs(u) <= 0.28) & (v >= -0.95) & (v <= 0.95))
    raise ValueError(shape)


def _unit_area(shape: str) -> float:
    g = np.linspace(-1, 1, 401)
    u, v = np.meshgrid(g, g)
    return float(_shape_mask(shape, u, v).mean() * 4.0)


_UNIT_AREA = {s: _unit_area(s) for s in SHAPES}


def _texture(texture: str, x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator, r: np.ndarray) -> np.ndarray:
    """Texture value in {0,1} at object-aligned pixel coordinates (x, y)."""
    p = period
    if texture == "hstripes":
        return (np.sin(2 * np.pi * y / p) > 0).astype(np.float32)
    if texture == "vstripes":
        return (np.sin(2 * np.pi * x / p) > 0).astype(np.float32)
    if texture == "diagonal":
        return (np.sin(2 * np.pi * (x + y) / (p * 1.41)) > 0).astype(np.float32)
    if texture == "antidiagonal":
        return (np.sin(2 * np.pi * (x - y) / (p * 1.41)) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(x / (p / 2)) + np.floor(y / (p / 2))) % 2).astype(np.float32)
    if texture == "dots":
        dx = np.mod(x, p) - p / 2
        dy = np.mod(y, p) - p / 2
        return (dx * dx + dy * dy <= (p / 3.2) ** 2).astype(np.float32)
    if texture == "grid":
        return ((np.mod(x, p) < 1.6) | (np.mod(y, p) < 1.6)).astype(np.float32)
    if texture == "rings":
        return (np.sin(2 * np.pi * r / p) > 0).astype(np.float32)
    if texture == "speckle":
        cells = rng.random((64, 64)) < 0.5
        xi = np.clip((np.floor(x / 2) % 64).astype(int), 0, 63)
        yi = np.clip((np.floor(y / 2) % 64).astype(int), 0, 63)
        return cells[yi, xi].astype(np.float32)
    if texture == "solid":
        return np.zeros_like(x, dtype=np.float32)
    raise ValueError(texture)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least 0.45 apart in mean intensity, order random."""
    lo = rng.uniform(0.0, 0.3, 3) + rng.uniform(-0.1, 0.1)
    hi = rng.uniform(0.65, 1.0, 3) + rng.uniform(-0.1, 0.1)
    lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    return (lo, hi) if rng.random() < 0.5 else (hi, lo)


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_classes: int = 10
    size: int = 64
    variant: str = "single"
    min_area: float = 0.05
    max_area: float = 0.5
    clutter: int = 6
    outside: float = 0.25  # largest fraction of the object's width that may fall outside the image
    classes: tuple[int, ...] | None = None  # restrict labels to these classes (unseen-class splits)

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise UsageError(f"synthetic num_classes={self.num_classes} must be between 2 and {MAX_CLASSES}")
        if self.size < 16:
            raise UsageError(f"synthetic size={self.size} must be at least 16 pixels")
        if self.variant not in ("single", "twin"):
            raise UsageError(f"synthetic variant={self.variant!r}: expected 'single' or 'twin'")
        if not 0 < self.min_area <= self.max_area < 1:
            raise UsageError(f"synthetic areas min={self.min_area}, max={self.max_area}: expected 0 < min <= max < 1")
        if not 0 <= self.outside < 0.5:
            raise UsageError(f"synthetic outside={self.outside}: expected 0 <= outside < 0.5 (a fraction of the object's width)")
        if self.classes is not None and (not self.classes or any(not 0 <= c < self.num_classes for c in self.classes)):
            raise UsageError(f"synthetic classes={self.classes}: expected a non-empty subset of 0..{self.num_classes - 1}")

    def key(self) -> str:
        return hashlib.sha1(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]


def render(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Render one image: (HxWx3 float32 in [0,1], label, boxes (n,4), mask HxW bool)."""
    rng = np.random.default_rng([cfg.seed, SPLITS[split], index, cfg.num_classes])
    classes = cfg.classes if cfg.classes is not None else tuple(range(cfg.num_classes))
    label = int(classes[index % len(classes)])
    shape, texture = class_parts(label)
    n = cfg.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5

    # Background: a random two-colour gradient, low-amplitude noise, random strokes and blobs.
    c0, c1 = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = ((xx * np.cos(ang) + yy * np.sin(ang)) / n + 1) / 2
    img = c0[None, None] * (1 - ramp[..., None]) + c1[None, None] * ramp[..., None]
    img += rng.normal(0, 0.03, img.shape)
    for _ in range(cfg.clutter):
        col = rng.uniform(0, 1, 3)
        cx, cy = rng.uniform(0, n, 2)
        if rng.random() < 0.5:  # a stroke
            a = rng.uniform(0, np.pi)
            length = rng.uniform(0.15, 0.5) * n
            t = np.clip(((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / length, -0.5, 0.5) * length
            px, py = cx + t * np.cos(a), cy + t * np.sin(a)
            hit = (xx - px) ** 2 + (yy - py) ** 2 <= (rng.uniform(0.5, 1.5) * n / 64) ** 2
        else:  # a blob
            rx, ry = rng.uniform(0.02, 0.08, 2) * n
            hit = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        img[hit] = col

    # Object geometry: area fraction, aspect jitter and a small rotation; class-independent.
    copies = 2 if cfg.variant == "twin" else 1
    max_area = cfg.max_area / copies if copies == 2 else cfg.max_area
    area = np.exp(rng.uniform(np.log(cfg.min_area / copies if copies == 2 else cfg.min_area), np.log(max_area)))
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    radius = np.sqrt(area * n * n / _UNIT_AREA[shape])
    rx, ry = radius * aspect, radius / aspect
    rot = rng.uniform(-np.pi / 12, np.pi / 12)
    extent = max(rx, ry) * 1.0
    if copies == 2:
        extent = min(extent, n / 4 - 0.5)
        scale = extent / max(rx, ry)
        rx, ry = rx * scale, ry * scale
        cy = rng.uniform(extent, n - extent)
        shift = rng.uniform(-1, 1) * max(0.0, n / 4 - extent - 0.5)  # both copies stay inside
        half = n // 2  # an integer offset: the copies are pixel-identical
        centres = [(n / 4 + shift, cy), (n / 4 + shift + half, cy)]
    else:
        extent = min(extent, n / 2 - 0.5)
        scale = extent / max(rx, ry)
        rx, ry = rx * scale, ry * scale
        margin = extent * (1 - 2 * cfg.outside)  # centre may come this close to the border
        centres = [tuple(rng.uniform(margin, n - margin, 2))]
    period = rng.uniform(4.5, 7.0) * n / 64
    fg_a, fg_b = _contrasting_colours(rng)
    phase = rng.uniform(0, period, 2)
    speckle_seed = int(rng.integers(2**63))  # same pattern on both twin copies

    mask = np.zeros((n, n), dtype=bool)
    boxes = []
    for cx, cy in centres:
        dx, dy = xx - cx, yy - cy
        ox = dx * np.cos(rot) + dy * np.sin(rot)
        oy = -dx * np.sin(rot) + dy * np.cos(rot)
        m = _shape_mask(shape, ox / rx, oy / ry)
        if not m.any():  # degenerate tiny object: keep at least the centre pixel
            m[int(min(max(cy, 0), n - 1)), int(min(max(cx, 0), n - 1))] = True
        t = _texture(texture, ox + phase[0], oy + phase[1], period, np.random.default_rng(speckle_seed), np.sqrt(ox**2 + oy**2))
        obj = fg_a[None, None] * (1 - t[..., None]) + fg_b[None, None] * t[..., None]
        img[m] = obj[m]
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        mask |= m
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img, label, np.asarray(boxes, dtype=np.float32), mask


class SyntheticDataset(SaliencyDataset):
    """``n`` images of one split, rendered on demand (or from an in-memory cache)."""

    def __init__(self, cfg: SyntheticConfig | None = None, split: str = "val", n: int = 500):
        self.cfg = cfg or SyntheticConfig()
        if split not in SPLITS:
            raise UsageError(f"synthetic split {split!r}: expected one of {', '.join(SPLITS)}")
        if n < 1:
            raise UsageError(f"synthetic n={n}: expected a positive image count")
        self.split = split
        self.n = n
        self.num_classes = self.cfg.num_classes
        self.class_names = ["{}-{}".format(*class_parts(k)) for k in range(self.num_classes)]
        self.image_size = (self.cfg.size, self.cfg.size)
        self.skipped = {}
        parts = [f"split={split}", f"n={n}", f"seed={self.cfg.seed}", f"classes={self.cfg.num_classes}", f"size={self.cfg.size}"]
        if self.cfg.outside != SyntheticConfig.outside:
            parts.append(f"outside={self.cfg.outside:g}")
        if self.cfg.variant != "single":
            parts.append(f"variant={self.cfg.variant}")
        if self.cfg.classes is not None:
            parts.append("subset=" + "+".join(map(str, self.cfg.classes)))
        self.spec = "synthetic?" + "&".join(parts)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        img, label, boxes, mask = render(self.cfg, self.split, i)
        return Sample(
            index=i,
            id=f"{self.split}-{i:06d}",
            image=torch.from_numpy(img).permute(2, 0, 1).contiguous(),
            label=label,
            boxes=torch.from_numpy(boxes),
            gt_mask=torch.from_numpy(mask),
            unclipped_boxes=torch.from_numpy(boxes.copy()),  # never clipped: the same boxes (official CASM scoring)
        )

    def protocol(self) -> dict:
        return {**super().protocol(), "variant": self.cfg.variant}

    def arrays(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All images as uint8 N x H x W x 3 and labels (for classifier training)."""
        from tqdm.auto import tqdm

        imgs = np.empty((self.n, self.cfg.size, self.cfg.size, 3), dtype=np.uint8)
        labels = np.empty(self.n, dtype=np.int64)
        for i in tqdm(range(self.n), desc=f"render {self.split}", disable=not progress, leave=False):
            img, label, _, _ = render(self.cfg, self.split, i)
            imgs[i] = np.round(img * 255).astype(np.uint8)
            labels[i] = label
        return imgs, labels
