"""The official CASM scoring, per image (Zolna et al.; kondiz/casme ``model_basics.py`` + ``score.py``).

salbench's own ``le`` / ``om`` / ``f1`` columns use its ``mean_area`` protocol (README, "Metrics").
This metric re-implements, batched, what the official CASM evaluation code does to every image,
so that numbers can be put next to the CASM paper's Tables 1-3 (``casm_le``, ``casm_om``,
``casm_f1``). On a continuous mask ``m`` (H x W in [0, 1], N = H * W pixels):

1. **Binarise** (``official_binarize``): ``avg = mean(m)`` (float32, as ``F.avg_pool2d`` gives it
   to the official code), ``kth = 1 + int((N - 1) * (1 - avg) + 0.5)`` (float64, as Python does
   it), ``th`` = the kth smallest value, clamped to ``[1e-6, 1 - 1e-6]`` in the map's dtype;
   binary = ``m > th`` strictly (every pixel tied with the threshold is dropped). The clamp makes
   a mask of all ones keep every pixel (``1 > 1 - 1e-6``) and a mask of all zeros keep none.
2. **Box** (``official_box`` / ``official_box_mask``): an empty binary mask gives no rectangle (a
   miss). Otherwise the largest 4-connected component (``scipy.ndimage.label``'s default
   structure), ties to the lowest label, i.e. the component whose first pixel comes first in
   raster order; its tight bounding rectangle of pixels ``[rmin:rmax+1, cmin:cmax+1]``. This
   reuses ``salbench.metrics.boxes.box_from_mask(b, "largest")``: its components are ranked by
   pixel count and ties go to the component whose first pixel comes first in raster order (on the
   device: labels are the flat index of that first pixel and ``argmax`` takes the first maximum;
   on the CPU: OpenCV numbers components in raster order of their first pixel), which is exactly
   scipy's label order and ``argmax(bincount(...))``'s tie rule (tested against scipy).
3. **GT boxes**: truncated toward zero (``int()``) and *not* clipped for the box area
   ``(x1 - x0) * (y1 - y0)``; the GT pixel mask uses the coordinates clipped to ``[0, W]`` /
   ``[0, H]``. A box with nothing left after clipping scores F1 = 0 and no hit.
4. **F1** on the continuous mask: ``inside = sum(m * gt)``, ``P = inside / (sum(m) + 1e-6)``,
   ``R = inside / area`` (unclipped area), ``F1 = 2PR / (P + R + 1e-6)``.
5. **IoU** of the rectangle with the clipped GT pixels over the unclipped area:
   ``inter / (|rect| + area - inter)``; a hit is ``IoU > 0.5`` strictly (computed exactly in
   integers: ``2 * inter > union``).
6. Per image: ``F1 = max`` over the GT boxes, ``LE = 1 - max(hit)``, ``OM = 1 - max(hit) * correct``
   (the source classifier's clean top-1 against the label).

GT boxes: ``batch.unclipped_boxes`` / ``batch.unclipped_valid`` when the dataset provides them
(``salbench.datasets.boxed.CropGeometry``, for folders and ImageNet: the box mapped to the crop by the official formula
``ratio * x - (longer * ratio - size) / 2``, before any clipping and without dropping boxes that
fall outside the crop, already truncated toward zero; the synthetic set: its boxes, which are
never clipped). Otherwise ``batch.boxes`` (clipped to the crop by the dataset). To take the XML
numbers as they are, as the official code does, load ImageNet with ``box_format=edges``.

Deviations that remain (documented in README): an image without any GT box scores LE = OM = 1
and F1 = 0 (the official code cannot score it); images whose boxes all fall outside the crop are
skipped by the datasets unless ``keep_empty=1``; on MPS (no float64) ``kth`` is computed in
float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salbench.metrics._util import acc_dtype, check_maps
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric
from salbench.metrics.boxes import box_from_mask
from salbench.metrics.localization import box_sums

#: The official clamp of the threshold.
TH_MIN, TH_MAX = 1e-6, 1 - 1e-6
#: The official epsilon in precision and F1.
EPS = 1e-6


def _float_maps(m: torch.Tensor) -> torch.Tensor:
    return m if m.dtype in (torch.float32, torch.float64) else m.float()


def official_kth(m: torch.Tensor) -> torch.Tensor:
    """The official 1-based rank of the threshold per image (B, int64), in ``[1, N]``.

    ``avg`` is the float32 ``F.avg_pool2d`` of the whole map, as the official code takes it;
    the rest is done in float64 (Python floats there), float32 on MPS.
    """
    check_maps(m)
    b, h, w = m.shape
    n = h * w
    x = _float_maps(m)
    avg = F.avg_pool2d(x[:, None], (h, w), stride=1).reshape(b)
    dt = acc_dtype(m.device)
    kth = torch.floor((n - 1) * (1 - avg.to(dt)) + 0.5).to(torch.long) + 1  # int() of a value >= 0
    return kth.clamp(1, n)


def official_threshold(m: torch.Tensor) -> torch.Tensor:
    """The official threshold per image (B, the maps' dtype): the kth smallest value, clamped."""
    x = _float_maps(m)
    b = x.shape[0]
    flat = x.reshape(b, -1)
    ordered = torch.sort(flat, dim=1).values
    th = ordered.gather(1, (official_kth(m) - 1)[:, None])[:, 0]
    return th.clamp(TH_MIN, TH_MAX)


def official_binarize(m: torch.Tensor) -> torch.Tensor:
    """Binary masks (B x H x W bool) of the official CASM binarisation: ``m > th`` strictly."""
    x = _float_maps(m)
    th = official_threshold(x)
    return x > th[:, None, None]


def official_box(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight box (B x 4 float32, pixel edges ``(cmin, rmin, cmax + 1, rmax + 1)``) of the largest
    4-connected component (ties: first in raster order) and its validity (B bool; False: empty mask)."""
    check_maps(b, "masks")
    return box_from_mask(b.bool(), "largest")


def official_box_mask(b: torch.Tensor) -> torch.Tensor:
    """The official "rectangular mask" (B x H x W bool): the filled box of ``official_box``; all
    False for an empty binary mask."""
    box, valid = official_box(b)
    _, h, w = b.shape
    x0, y0, x1, y1 = (box.to(torch.long) * valid[:, None]).unbind(1)
    cols = torch.arange(w, device=b.device)
    rows = torch.arange(h, device=b.device)
    in_c = (cols[None] >= x0[:, None]) & (cols[None] < x1[:, None])
    in_r = (rows[None] >= y0[:, None]) & (rows[None] < y1[:, None])
    return in_r[:, :, None] & in_c[:, None, :]


def official_gt(gt: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GT boxes B x K x 4 -> (truncated boxes, clipped boxes, unclipped areas), in the accumulation dtype."""
    dt = acc_dtype(gt.device)
    g = torch.trunc(gt.to(dt))
    area = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    lim = torch.tensor([w, h, w, h], dtype=dt, device=gt.device)
    gc = torch.minimum(g.clamp_min(0), lim)
    return g, gc, area


def official_scores(
    m: torch.Tensor,
    gt: torch.Tensor,
    gt_valid: torch.Tensor,
    source_correct: torch.Tensor | None = None,
    box: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``casm_le``, ``casm_f1`` and (with ``source_correct``) ``casm_om`` per image (B float32).

    ``m``: maps B x H x W in [0, 1]; ``gt``: B x K x 4 boxes ``(x0, y0, x1, y1)`` mapped to the
    crop and not clipped (truncated toward zero here); ``gt_valid``: B x K bool. ``box``: the
    rectangle ``(boxes, valid)`` if already computed (default: ``official_box(official_binarize(m))``).
    An image without a valid GT box scores LE = OM = 1 and F1 = 0.
    """
    check_maps(m)
    if gt.ndim != 3 or gt.shape[-1] != 4 or gt_valid.shape != gt.shape[:2]:
        raise ValueError(f"official_scores wants gt B x K x 4 and gt_valid B x K, got {tuple(gt.shape)} and {tuple(gt_valid.shape)}")
    bsz, h, w = m.shape
    x = _float_maps(m)
    if box is None:
        box = official_box(official_binarize(x))
    rect, rect_ok = box
    _, gc, area = official_gt(gt.to(m.device), h, w)
    dt = gc.dtype
    valid = gt_valid.to(m.device).bool()
    nonempty = valid & (gc[..., 2] > gc[..., 0]) & (gc[..., 3] > gc[..., 1])

    # F1 of the continuous mask against each box's clipped pixels, recall over the unclipped area
    inside, _ = box_sums(x, gc)
    total = x.to(dt).sum(dim=(1, 2))[:, None]
    p = inside / (total + EPS)
    r = inside / torch.where(nonempty, area, torch.ones_like(area))
    f1 = torch.where(nonempty, 2 * p * r / (p + r + EPS), torch.zeros_like(p))
    f1 = f1.max(dim=1).values.clamp_min(0)

    # IoU of the rectangle with each box's clipped pixels over the unclipped area, exactly
    rb = rect.to(device=m.device, dtype=dt)[:, None, :]
    ok = rect_ok.to(m.device).bool()[:, None]
    iw = (torch.minimum(rb[..., 2], gc[..., 2]) - torch.maximum(rb[..., 0], gc[..., 0])).clamp_min(0)
    ih = (torch.minimum(rb[..., 3], gc[..., 3]) - torch.maximum(rb[..., 1], gc[..., 1])).clamp_min(0)
    inter = torch.where(ok, iw * ih, torch.zeros_like(iw))
    rect_area = torch.where(ok, (rb[..., 2] - rb[..., 0]) * (rb[..., 3] - rb[..., 1]), torch.zeros_like(iw))
    union = rect_area + area - inter
    hit = (nonempty & ok & (2 * inter > union)).any(dim=1)

    out = {"casm_le": 1.0 - hit.to(torch.float32), "casm_f1": f1.to(torch.float32)}
    if source_correct is not None:
        out["casm_om"] = 1.0 - (hit & source_correct.to(m.device).bool()).to(torch.float32)
    return out


def gt_for_casm(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The GT boxes the official scoring uses: the dataset's unclipped boxes where it has them,
    else its (clipped) ``boxes``."""
    gt = getattr(batch, "unclipped_boxes", None)
    valid = getattr(batch, "unclipped_valid", None)
    if gt is None or valid is None:
        return batch.boxes, batch.box_valid
    return gt, valid


@register_metric
class CasmProtocol(Metric):
    """LE / OM / F1 exactly as the official CASM evaluation code scores each image."""

    name = "casm"
    needs = frozenset({"maps", "gt_boxes", "source"})
    description = "the official CASM code's per-image scoring (kondiz/casme score.py)"
    columns = (
        MetricInfo("casm_le", "lower", True, "localisation error, official CASM scoring (kth-value threshold, IoU > 0.5, unclipped GT areas)",
                   ci=True, leaderboard=False, compare=True, header="CASM LE %"),
        MetricInfo("casm_om", "lower", True, "official ImageNet metric, official CASM scoring: LE miss or wrong source top-1",
                   ci=True, leaderboard=False, compare=True, header="CASM OM %"),
        MetricInfo("casm_f1", "higher", True, "continuous F1, official CASM scoring (recall over the unclipped GT area, +1e-6 terms)",
                   ci=True, leaderboard=False, compare=True, header="CASM F1 %"),
    )

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        gt, valid = gt_for_casm(ctx.batch)
        out = official_scores(ctx.maps, gt, valid, ctx.source_correct)
        if "casm_om" not in out:  # only where the maps are not tied to a source classifier (never in a run)
            out["casm_om"] = torch.full_like(out["casm_le"], float("nan"))
        return out
