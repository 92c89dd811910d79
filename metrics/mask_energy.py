"""Energy inside the object: the share of a map's mass on the ground-truth pixel mask.

The pixel-mask form of the energy-based pointing game (Wang et al. 2020, Score-CAM, Sec. 4.2,
which uses the box): ``sum(m * G) / sum(m)`` per image, for datasets with exact object masks
(the synthetic set). A map that puts all its mass on the object scores 1; a constant map scores
the object's share of the image. Undefined (null) without GT masks or for an all-zero map.
"""

from __future__ import annotations

import torch

from salbench.metrics._util import acc_dtype, check_maps
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric


def mask_energy(m: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``sum(m * gt) / sum(m)`` per image (B float32); NaN where ``sum(m) == 0``."""
    check_maps(m)
    if gt.shape != m.shape:
        raise ValueError(f"mask_energy wants maps and GT masks of one shape, got {tuple(m.shape)} and {tuple(gt.shape)}")
    dt = acc_dtype(m.device)
    x = m.to(dt)
    total = x.sum(dim=(1, 2))
    inside = (x * (gt.to(device=m.device) > 0).to(dt)).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(dt).tiny), torch.full_like(total, float("nan"))).float()


@register_metric
class MaskEnergy(Metric):
    name = "mask_energy"
    needs = frozenset({"maps", "gt_masks"})
    columns = (MetricInfo("mask_energy", "higher", True, "share of the map's mass inside the ground-truth object mask",
                          ci=True, leaderboard=True, compare=True, header="energy in mask %"),)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        return {"mask_energy": mask_energy(ctx.maps, ctx.batch.gt_masks)}
