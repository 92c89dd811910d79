"""Pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"), as
TorchRay's ``torchray/benchmark/pointing_game.py`` scores it.

A map *hits* when its maximum lies within ``tolerance`` pixels of the ground truth: TorchRay
accepts a point ``p`` when some ground-truth pixel ``q`` has ``|p - q|^2 < tolerance^2``
(pixel centres on the integer grid, strict inequality), with ``tolerance = 15`` px at 224 px.
Here the ground truth is the union of the image's GT boxes (any box counts; with ``gt="masks"``
the pixel mask), and the tolerance scales with the image: ``15 * min(H, W) / 224`` by default
(about 4.3 px at 64 px), so a run at another resolution asks the same question.

Ties at the maximum (plateaus are common: saturated masks, quantised maps, controls): TorchRay
takes ``argmax`` of the flattened map, the first maximum in raster order, which favours the
top-left of a plateau. salbench scores the *expected* hit of a maximum drawn uniformly among the
tied ones (``ties="expected"``, the default): the share of maximal pixels that hit. It equals
TorchRay's 0/1 whenever the maximum is unique, and a constant map scores the share of the image
within tolerance of the object, i.e. the hit rate of a random point. ``ties="first"`` reproduces
TorchRay exactly.

The centre-point control (``pointing_centre``) scores the map whose maximum is the image centre
(the centre pixel, or the 2 x 2 / 1 x 2 central pixels of an even-sized image, tied): the
chance level a centre-biased dataset gives away. It does not depend on the method.

TorchRay averages accuracy per class, then over classes; salbench averages over images (the
per-image values feed the bootstrap interval like every other column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from salbench.metrics._util import check_maps
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric
from salbench.metrics.localization import box_pixel_ranges

#: TorchRay's tolerance and the image side it was set for (15 px at 224 px).
TOLERANCE_PX, TOLERANCE_AT = 15.0, 224
TIES = ("expected", "first")
GT_KINDS = ("boxes", "masks")


def default_tolerance(image_size: tuple[int, int]) -> float:
    """15 px scaled from 224 px to the image's shorter side (4.29 px at 64 x 64)."""
    return TOLERANCE_PX * min(image_size) / TOLERANCE_AT


def box_hit_region(boxes: torch.Tensor, valid: torch.Tensor, h: int, w: int, tolerance: float) -> torch.Tensor:
    """B x H x W bool: pixels within ``tolerance`` of some valid box's pixels (``d^2 < tol^2``).

    A box covers the pixels whose centres lie in it (``box_pixel_ranges``); the distance from
    pixel ``(i, j)`` to the box's nearest pixel is per axis ``max(c0 - j, 0, j - (c1 - 1))``.
    Empty boxes (and padding) hit nothing.
    """
    c0, r0, c1, r1 = box_pixel_ranges(boxes, h, w).unbind(-1)  # B x K each
    ok = valid.bool() & (c1 > c0) & (r1 > r0)
    cols = torch.arange(w, device=boxes.device)
    rows = torch.arange(h, device=boxes.device)
    dx = torch.maximum(c0[..., None] - cols, cols - (c1[..., None] - 1)).clamp_min(0).float()  # B x K x W
    dy = torch.maximum(r0[..., None] - rows, rows - (r1[..., None] - 1)).clamp_min(0).float()  # B x K x H
    near = dy[..., :, None].square() + dx[..., None, :].square() < tolerance**2  # B x K x H x W
    return (near & ok[..., None, None]).any(dim=1)


def mask_hit_region(masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """B x H x W bool: pixels within ``tolerance`` of a mask pixel: the mask dilated by the disk
    ``{(dy, dx): dy^2 + dx^2 < tol^2}`` (one convolution; exact on the integer grid)."""
    check_maps(masks, "GT masks")
    r = max(0, int(torch.ceil(torch.tensor(tolerance)).item()) - 1)
    off = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disk = (off[:, None].square() + off[None, :].square() < tolerance**2).float()
    hits = F.conv2d((masks > 0).float()[:, None], disk[None, None], padding=r)
    return hits[:, 0] > 0.5


def centre_pixels(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """H x W bool: the pixel(s) nearest the image centre (1, 2 or 4 of them)."""
    rows = torch.zeros(h, dtype=torch.bool, device=device)
    cols = torch.zeros(w, dtype=torch.bool, device=device)
    rows[(h - 1) // 2 : h // 2 + 1] = True
    cols[(w - 1) // 2 : w // 2 + 1] = True
    return rows[:, None] & cols[None, :]


def pointing_hits(m: torch.Tensor, region: torch.Tensor, ties: str = "expected") -> torch.Tensor:
    """Per image (B float32 in [0, 1]): does the map's maximum fall in ``region`` (B x H x W bool)?

    ``ties="expected"``: the share of the maximal pixels inside the region; ``"first"``: the first
    maximum in raster order (``torch.argmax``, TorchRay's point). NaN maps give NaN.
    """
    check_maps(m)
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}: expected one of {TIES}")
    flat = m.flatten(1)
    reg = region.flatten(1).to(m.device)
    if ties == "first":
        hit = reg.gather(1, flat.argmax(dim=1, keepdim=True))[:, 0].float()
    else:
        top = flat == flat.amax(dim=1, keepdim=True)
        hit = (top & reg).sum(1).float() / top.sum(1).clamp_min(1).float()
    return torch.where(torch.isnan(flat).any(1), torch.full_like(hit, float("nan")), hit)


@register_metric
class PointingGame(Metric):
    """Pointing game: the map's maximum lies within the tolerance of a GT box (TorchRay)."""

    name = "pointing"
    needs = frozenset({"maps", "gt_boxes"})
    description = "pointing game (Zhang et al. 2016, TorchRay): the map's maximum within a tolerance of a GT box"
    columns = (
        MetricInfo("pointing", "higher", True, "pointing game: the map's maximum lies within the tolerance of a GT box "
                   "(share of tied maxima that do)", ci=True, leaderboard=True, compare=True, header="pointing %"),
        MetricInfo("pointing_centre", None, True, "pointing game of the image-centre point (chance level; method-independent)",
                   header="centre-point %"),
    )

    @dataclass(frozen=True)
    class Params:
        tolerance: float = TOLERANCE_PX  # pixels; per dataset: 15 px scaled from 224 px (defaults_for)
        ties: str = "expected"  # "expected" (share of tied maxima that hit) | "first" (TorchRay's argmax)
        gt: str = "boxes"  # "boxes" (any GT box) | "masks" (the GT pixel mask)

        def __post_init__(self):
            if not self.tolerance > 0:
                raise ValueError(f"tolerance={self.tolerance}: expected a positive number of pixels")
            if self.ties not in TIES:
                raise ValueError(f"ties={self.ties!r}: expected one of {', '.join(TIES)}")
            if self.gt not in GT_KINDS:
                raise ValueError(f"gt={self.gt!r}: expected one of {', '.join(GT_KINDS)}")

    @classmethod
    def defaults_for(cls, image_size):
        return {"tolerance": round(default_tolerance(image_size), 3)}

    def applies(self, ctx) -> bool:
        return self.params.gt == "boxes" or getattr(ctx.batch, "gt_masks", None) is not None

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        m = ctx.maps
        _, h, w = m.shape
        p = self.params
        if p.gt == "masks":
            region = mask_hit_region(ctx.batch.gt_masks.to(m.device), p.tolerance)
        else:
            region = box_hit_region(ctx.batch.boxes.to(m.device), ctx.batch.box_valid.to(m.device), h, w, p.tolerance)
        centre = centre_pixels(h, w, m.device)
        centre_hit = (region & centre).flatten(1).sum(1).float() / centre.sum().float()
        return {"pointing": pointing_hits(m, region, p.ties), "pointing_centre": centre_hit}
