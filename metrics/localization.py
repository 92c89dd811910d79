"""Localisation metrics against ground-truth boxes: IoU, LE, OM and continuous F1.

Boxes are ``(x0, y0, x1, y1)`` in pixel edges (salbench convention); ground truth comes padded
as B x K x 4 with a B x K validity mask (``datasets.base.Batch``).

Conventions chosen here:
  * IoU uses the continuous pixel-edge areas ``(x1-x0)*(y1-y0)``; a box with zero (or negative)
    width or height is empty and has IoU 0 with everything.
  * An image without any valid GT box can never hit: LE = OM = 1, and F1 = P = R = 0.
  * For F1 the ground-truth box may have fractional coordinates (dataset rescaling): pixel
    ``(i, j)`` (row i, column j) is inside when its centre ``(j + 0.5, i + 0.5)`` lies in the
    half-open box ``x0 <= j+0.5 < x1, y0 <= i+0.5 < y1``. For integer boxes this is exactly the
    pixels ``x0 <= j < x1, y0 <= i < y1``. ``|B*|`` is that pixel count (so the box is clipped
    to the image).
"""

from __future__ import annotations

import torch

from salbench.metrics._util import acc_dtype, check_maps
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric


def box_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted box (B x 4) with each GT box of its image (B x K x 4) -> B x K."""
    if pred.ndim != 2 or pred.shape[-1] != 4 or gt.ndim != 3 or gt.shape[-1] != 4:
        raise ValueError(f"box_iou wants pred B x 4 and gt B x K x 4, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    dt = torch.promote_types(torch.promote_types(pred.dtype, gt.dtype), torch.float32)
    p = pred.to(dt)[:, None, :]
    g = gt.to(dt)
    iw = (torch.minimum(p[..., 2], g[..., 2]) - torch.maximum(p[..., 0], g[..., 0])).clamp_min(0)
    ih = (torch.minimum(p[..., 3], g[..., 3]) - torch.maximum(p[..., 1], g[..., 1])).clamp_min(0)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0]).clamp_min(0) * (p[..., 3] - p[..., 1]).clamp_min(0)
    area_g = (g[..., 2] - g[..., 0]).clamp_min(0) * (g[..., 3] - g[..., 1]).clamp_min(0)
    union = area_p + area_g - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(dt).tiny), torch.zeros_like(inter))


def localization_error(
    pred: torch.Tensor,
    pred_valid: torch.Tensor,
    gt: torch.Tensor,
    gt_valid: torch.Tensor,
    iou_threshold: float = 0.5,
) -> torch.Tensor:
    """LE per image (B float, 0 or 1): ``1 - [max IoU over valid GT boxes >= iou_threshold]``.

    An invalid predicted box (empty mask) never hits.
    """
    iou = box_iou(pred, gt)
    iou = torch.where(gt_valid.bool(), iou, torch.full_like(iou, -1.0))
    hit = (iou.max(dim=1).values >= iou_threshold) & pred_valid.bool()
    return 1.0 - hit.to(torch.float32)


def official_metric(le: torch.Tensor, source_correct: torch.Tensor) -> torch.Tensor:
    """OM per image (B float): ``1 - [LE hit and the source classifier's clean top-1 is right]``."""
    hit = le < 0.5
    return 1.0 - (hit & source_correct.bool()).to(torch.float32)


def box_pixel_ranges(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Integer pixel ranges ``(c0, r0, c1, r1)`` (… x 4, int64, clipped to the image) of the pixels
    whose centres lie in each box: ``c0 = ceil(x0 - 0.5)``, ``c1 = ceil(x1 - 0.5)``, same for rows."""
    r = torch.ceil(boxes.to(torch.promote_types(boxes.dtype, torch.float32)) - 0.5)
    lim = torch.tensor([w, h, w, h], device=boxes.device, dtype=r.dtype)
    r = torch.minimum(r.clamp_min(0), lim).to(torch.long)
    # an inverted box covers nothing: keep c1 >= c0, r1 >= r0
    return torch.cat([r[..., :2], torch.maximum(r[..., 2:], r[..., :2])], dim=-1)


def box_sums(m: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``m`` (B x H x W) inside each box (B x K x 4) and the box's pixel count, both B x K.

    Batched through a summed-area table (float64 where the device has it), one gather per corner.
    """
    check_maps(m)
    bsz, h, w = m.shape
    k = boxes.shape[1]
    dt = acc_dtype(m.device)
    sat = torch.zeros(bsz, h + 1, w + 1, dtype=dt, device=m.device)
    sat[:, 1:, 1:] = m.to(dt).cumsum(1).cumsum(2)
    flat = sat.reshape(bsz, -1)
    c0, r0, c1, r1 = box_pixel_ranges(boxes, h, w).unbind(-1)

    def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, (r * (w + 1) + c).reshape(bsz, k))

    sums = (at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)).clamp_min(0)  # m >= 0; drop rounding noise
    counts = ((c1 - c0) * (r1 - r0)).to(dt)
    return sums, counts


def continuous_f1(
    m: torch.Tensor, gt: torch.Tensor, gt_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Continuous F1, precision and recall of maps ``m`` against GT boxes (each B, float32).

    Per GT box B*: ``P = sum_{B*} m / sum m``, ``R = sum_{B*} m / |B*|``, ``F1 = 2PR / (P + R)``
    (0 when ``P + R = 0`` or ``sum m = 0``). Per image: the best F1 over its valid GT boxes, and
    the precision / recall of that box (first box on ties).
    """
    check_maps(m)
    inside, count = box_sums(m, gt)
    total = m.to(inside.dtype).sum(dim=(1, 2))[:, None]
    zero = torch.zeros_like(inside)
    p = torch.where(total > 0, inside / total.clamp_min(1e-30), zero)
    r = torch.where(count > 0, inside / count.clamp_min(1), zero)
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-30), zero)
    valid = gt_valid.bool()
    best = torch.where(valid, f1, torch.full_like(f1, -1.0)).argmax(dim=1, keepdim=True)
    any_valid = valid.any(dim=1)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return torch.where(any_valid, x.gather(1, best)[:, 0], 0.0).to(torch.float32)

    return pick(f1), pick(p), pick(r)


# ----------------------------------------------------------------------------- registered metrics
@register_metric
class LocalizationErrorMetric(Metric):
    """LE: the predicted box misses every GT box (IoU < 0.5)."""

    name = "le"
    needs = frozenset({"box", "gt_boxes"})
    columns = (MetricInfo("le", "lower", True, "localisation error: box IoU with every GT box < 0.5",
                          ci=True, leaderboard=True, compare=True, header="LE %"),)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        return {"le": localization_error(ctx.box, ctx.box_valid, ctx.batch.boxes, ctx.batch.box_valid)}


@register_metric
class OfficialMetric(Metric):
    """OM: LE miss or a wrong top-1 of the source classifier on the clean image."""

    name = "om"
    needs = frozenset({"source"})
    requires = ("le",)
    columns = (MetricInfo("om", "lower", True, "official ImageNet metric: LE miss or wrong source top-1",
                          ci=True, leaderboard=True, compare=True, header="OM %"),)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        return {"om": official_metric(ctx.values["le"], ctx.source_correct)}


@register_metric
class ContinuousF1Metric(Metric):
    """Continuous F1 of the map against the best GT box, with its precision and recall."""

    name = "f1"
    needs = frozenset({"maps", "gt_boxes"})
    columns = (
        MetricInfo("f1", "higher", True, "continuous F1 of the map against the best GT box", ci=True, leaderboard=True, compare=True,
                   header="F1 %"),
        MetricInfo("precision", "higher", True, "share of the map's mass inside the best GT box"),
        MetricInfo("recall", "higher", True, "mean map value inside the best GT box"),
    )

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        f1, p, r = continuous_f1(ctx.maps, ctx.batch.boxes, ctx.batch.box_valid)
        return {"f1": f1, "precision": p, "recall": r}
