"""Mask statistics: how big, how smooth and how decided a saliency map is (B x H x W in [0,1]).

Per-image functions return B float32 tensors on the input's device; ``area_std`` is the one
dataset-level number, computed from the per-image areas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from salbench.metrics._util import check_maps
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric


def mask_area(m: torch.Tensor) -> torch.Tensor:
    """Mean mask value per image: the fraction of the image the map (softly) covers."""
    check_maps(m)
    return m.float().mean(dim=(1, 2))


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """Mean squared horizontal difference + mean squared vertical difference, per image.

    Low values mean smooth, blob-like maps; high values mean speckle. A direction with no
    neighbouring pixel pairs (W = 1 or H = 1) contributes 0.
    """
    check_maps(m)
    x = m.float()
    dh = x[:, :, 1:] - x[:, :, :-1]
    dv = x[:, 1:, :] - x[:, :-1, :]
    th = dh.square().mean(dim=(1, 2)) if dh.shape[2] > 0 else x.new_zeros(x.shape[0])
    tv = dv.square().mean(dim=(1, 2)) if dv.shape[1] > 0 else x.new_zeros(x.shape[0])
    return th + tv


def mask_entropy(m: torch.Tensor) -> torch.Tensor:
    """``sum over pixels with 0 < m < 1 of -m * log2(m)``, divided by the pixel count, per image.

    Exactly the DESIGN.md definition (not the binary entropy): 0 for a binary map, positive for
    undecided soft values, so it measures how far a map is from a hard mask.
    """
    check_maps(m)
    x = m.float()
    soft = (x > 0) & (x < 1)
    safe = torch.where(soft, x, torch.ones_like(x))
    return (-(safe * torch.log2(safe))).mean(dim=(1, 2))


def area_std(areas: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """Std across images of the per-image mean mask (``mask_area``), as a Python float.

    Population std (ddof = 0): it describes the spread of the evaluated images themselves,
    not an estimate for a larger population, and is defined (0) for a single image. NaN
    entries (failed images) are ignored; no finite entry gives NaN.
    """
    if isinstance(areas, torch.Tensor):
        a = areas.detach().to("cpu", torch.float64).numpy().ravel()
    else:
        a = np.asarray(areas, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan
    return float(np.std(a, ddof=0))


@register_metric
class MaskStatistics(Metric):
    """How big, how smooth and how decided each map is (descriptive: no direction)."""

    name = "mask_statistics"
    needs = frozenset({"maps", "binary"})
    columns = (
        MetricInfo("area", None, False, "mean mask value per image", leaderboard=True, header="area", digits=3),
        MetricInfo("binary_area", None, False, "share of pixels kept by the binarisation", digits=3),
        MetricInfo("tv", None, False, "total variation: mean squared horizontal + vertical differences", digits=4),
        MetricInfo("entropy", None, False, "mask entropy: sum of -m log2 m over 0<m<1, per pixel", digits=4),
    )
    summaries = (MetricInfo("area_std", None, False, "population std across images of the per-image mean mask", aggregate="std",
                            source="area", digits=3),)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        return {"area": mask_area(ctx.maps), "binary_area": ctx.binary.float().flatten(1).mean(1),
                "tv": total_variation(ctx.maps), "entropy": mask_entropy(ctx.maps)}
