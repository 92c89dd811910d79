"""Box from a binary mask: the localisation box that LE / OM compare with the ground truth.

Boxes follow the salbench convention ``(x0, y0, x1, y1)`` in pixel edges (a box covers pixels
``x0 <= x < x1, y0 <= y < y1``). An empty mask gives the empty box ``(0, 0, 0, 0)`` with
``valid=False``, which never hits.

The 4-connected labelling runs batched on the device (min-label propagation with root hooking
and pointer jumping), so the default rule needs no per-image Python loop or host round trip
except one convergence check every few iterations.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from salbench.metrics._util import check_maps, thread_map
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric
from salbench.registry import Registry

BOX_RULES: Registry = Registry("box rule")

#: Label-propagation iterations between two convergence checks (each check is one host sync).
CHECK_EVERY = 2
#: GrabCut iterations (OpenCV's examples use 5; Simonyan et al. do not say).
GRABCUT_ITERS = 5
#: GrabCut seeds from quantiles of the continuous map (Simonyan et al. 2013).
GRABCUT_FG_Q, GRABCUT_BG_Q, GRABCUT_MID_Q = 0.95, 0.30, 0.50


def label_components(b: torch.Tensor) -> torch.Tensor:
    """4-connected component labels of boolean masks B x H x W, batched on the device.

    Returns int64 B x H x W: each foreground pixel carries the flat index (within its image,
    ``y * W + x``) of the first pixel of its component in raster order; background pixels are
    -1. Equal labels <=> same component, exactly as ``skimage.measure.label(connectivity=1)``
    up to renumbering.

    Algorithm: every foreground pixel starts as its own label (its global flat index; background
    points to a sentinel larger than every label). Each round takes
    the minimum label among the 4-neighbours, hooks the pixel's current root onto that minimum
    (``scatter_reduce(amin)``, which merges whole trees at once, so spirals do not need one
    round per pixel), then compresses paths by pointer jumping. Labels only decrease and always
    name a pixel of the same component, so the fixed point is the component's minimum index.
    """
    check_maps(b, "masks")
    b = b.bool()
    bsz, h, w = b.shape
    n = h * w
    total = bsz * n
    fg = b.reshape(-1)
    idx = torch.arange(total, device=b.device, dtype=torch.long)
    # one extra slot, ``total``, is the background sentinel: it points to itself and is larger
    # than every real label, so background needs no masking in the neighbour minimum
    lab = torch.cat([torch.where(fg, idx, total), idx.new_full((1,), total)])
    if bool(fg.any()):
        while True:
            prev = lab
            for _ in range(CHECK_EVERY):
                lab = _propagate(lab, fg, (bsz, h, w))
            if torch.equal(prev, lab):
                break
    out = lab[:total] - (idx // n) * n
    return torch.where(fg, out, -1).view(bsz, h, w)


def _propagate(lab: torch.Tensor, fg: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """One round: neighbour minimum, root hooking, two pointer jumps. Labels never increase."""
    total = fg.numel()
    head = lab[:total]
    p = _pad_long(head.view(shape), total)
    nmin = torch.minimum(
        torch.minimum(p[:, :-2, 1:-1], p[:, 2:, 1:-1]),
        torch.minimum(p[:, 1:-1, :-2], p[:, 1:-1, 2:]),
    ).reshape(-1)
    cand = fg & (nmin < head)
    src = torch.where(cand, nmin, total)
    # hook each pixel's current root onto the smaller neighbour label: lab[lab[p]] <- min(., nmin[p])
    lab = lab.scatter_reduce(0, torch.where(cand, head, total), src, reduce="amin")
    lab[:total] = torch.minimum(lab[:total], src)
    lab = lab.gather(0, lab)
    return lab.gather(0, lab)


def _pad_long(x: torch.Tensor, value: int) -> torch.Tensor:
    """Constant pad of an integer B x H x W tensor by one pixel (F.pad lacks int support on some backends)."""
    bsz, h, w = x.shape
    out = torch.full((bsz, h + 2, w + 2), value, dtype=x.dtype, device=x.device)
    out[:, 1:-1, 1:-1] = x
    return out


def tight_boxes(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight pixel-edge box around the True pixels of each image; empty -> (0,0,0,0), invalid."""
    check_maps(sel, "masks")
    sel = sel.bool()
    bsz, h, w = sel.shape
    rows = sel.any(dim=2)  # B x H
    cols = sel.any(dim=1)  # B x W
    valid = rows.any(dim=1)
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = h - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = w - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    return boxes, valid


def largest_component(b: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the largest 4-connected component per image.

    Ties go to the component whose first pixel comes first in raster order (``argmax`` returns
    the first maximum and components are indexed by their first pixel).
    """
    check_maps(b, "masks")
    bsz, h, w = b.shape
    n = h * w
    lab = label_components(b).reshape(bsz, n)
    fg = lab >= 0
    offs = torch.arange(bsz, device=b.device)[:, None] * n
    glob = torch.where(fg, lab + offs, bsz * n)  # background -> a dump bin
    sizes = torch.bincount(glob.reshape(-1), minlength=bsz * n + 1)[: bsz * n].view(bsz, n)
    root = sizes.argmax(dim=1)
    return ((lab == root[:, None]) & fg).view(bsz, h, w)


def _largest_box_cv2(mask: np.ndarray) -> tuple[float, float, float, float, bool]:
    """One image on the CPU: OpenCV labels components in raster order of their first pixel."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=4)
    if n <= 1:
        return (0.0, 0.0, 0.0, 0.0, False)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # first maximum: raster-order tie-break
    x, y, w, h = (int(v) for v in stats[k, :4])
    return (float(x), float(y), float(x + w), float(y + h), True)


@BOX_RULES.register("largest")
def largest_box(b: torch.Tensor, saliency=None, images=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight box around the largest 4-connected component (the default; the CASM protocol).

    On accelerators the batched labelling runs on the device. On the CPU, OpenCV's single-pass
    labelling per image (in a thread pool; it releases the GIL) is ~100x faster than iterating
    tensor propagation there; both give the same boxes (tested).
    """
    if b.device.type != "cpu":
        return tight_boxes(largest_component(b))
    check_maps(b, "masks")
    masks = b.bool().contiguous().numpy()
    res = thread_map(_largest_box_cv2, list(masks)) if len(masks) > 8 else [_largest_box_cv2(m) for m in masks]
    boxes = torch.tensor([r[:4] for r in res], dtype=torch.float32).view(-1, 4)
    valid = torch.tensor([r[4] for r in res], dtype=torch.bool)
    return boxes, valid


@BOX_RULES.register("all")
def all_box(b: torch.Tensor, saliency=None, images=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight box around all foreground pixels (multi-part masks give one enclosing box)."""
    return tight_boxes(b)


def grabcut_seeds(m: np.ndarray) -> np.ndarray:
    """GrabCut mask (uint8, H x W) seeded from quantiles of one continuous map.

    Definite foreground: m at or above the 95th percentile; definite background: m at or below
    the 30th percentile; in between, probable foreground above the median, probable background
    otherwise. For continuous maps (no ties) that is exactly "above the 95th / below the 30th".
    Ties are resolved so that plateaus stay usable: a binary map seeds its ones as foreground
    and its zeros as background, and a pixel at both quantiles (a constant map, or a plateau
    covering 30th..95th) is only "probable", so a constant map seeds no foreground at all.
    """
    import cv2

    q_fg, q_bg, q_mid = np.quantile(m, [GRABCUT_FG_Q, GRABCUT_BG_Q, GRABCUT_MID_Q])
    seeds = np.full(m.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    seeds[m > q_mid] = cv2.GC_PR_FGD
    seeds[(m >= q_fg) & (m > q_bg)] = cv2.GC_FGD
    seeds[(m <= q_bg) & (m < q_fg)] = cv2.GC_BGD
    return seeds


def _grabcut_one(args: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Foreground (bool H x W) of GrabCut on one image. Degenerate seeds (no foreground or no
    background candidates: GrabCut cannot fit both colour models) return the seed foreground."""
    import cv2

    img, m = args
    seeds = grabcut_seeds(m)
    is_fg = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    if is_fg.all() or not is_fg.any():
        return is_fg
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # per-thread RNG (GMM k-means init): deterministic whatever thread runs it
    mask = seeds.copy()
    cv2.grabCut(img, mask, None, bgd, fgd, GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


@BOX_RULES.register("grabcut")
def grabcut_box(b: torch.Tensor, saliency: torch.Tensor | None = None, images: torch.Tensor | None = None):
    """Simonyan et al. localisation: GrabCut seeded from the continuous saliency, then the box
    around the largest foreground component. Needs ``saliency`` (B x H x W) and ``images``
    (B x 3 x H x W RGB in [0,1]); the binary mask ``b`` only fixes the shape. GrabCut is
    inherently per-image on the CPU, so it runs over the batch in a thread pool."""
    if saliency is None or images is None:
        raise ValueError("box rule 'grabcut' needs both the continuous saliency maps and the images")
    check_maps(saliency)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != saliency.shape[1:]:
        raise ValueError(f"images must be B x 3 x H x W matching the maps, got {tuple(images.shape)}")
    imgs = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    imgs = imgs.flip(1).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # RGB -> BGR, HWC
    maps = saliency.detach().float().cpu().numpy()
    fgs = thread_map(_grabcut_one, [(np.ascontiguousarray(i), s) for i, s in zip(imgs, maps)])
    fg = torch.from_numpy(np.stack(fgs)).to(saliency.device)
    return tight_boxes(largest_component(fg))


def box_from_mask(
    b: torch.Tensor,
    rule: str = "largest",
    saliency: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B x 4 float32, pixel edges) and validity (B bool) from binary masks B x H x W."""
    check_maps(b, "masks")
    return BOX_RULES.get(rule)(b, saliency=saliency, images=images)


@register_metric
class PredictedBox(Metric):
    """The box the localisation metrics score, stored so a row says what was scored."""

    name = "box"
    needs = frozenset({"box"})
    columns = (
        MetricInfo("box", None, False, "predicted box (x0, y0, x1, y1), pixel edges", aggregate=None, dtype=pa.list_(pa.float32(), 4)),
        MetricInfo("box_valid", None, False, "a box was found (non-empty binary mask)", aggregate=None, dtype=pa.bool_()),
    )

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        return {"box": ctx.box, "box_valid": ctx.box_valid}
