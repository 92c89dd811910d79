"""Binarisation of continuous saliency maps (B x H x W in [0,1]) into boolean masks.

Pluggable through ``BINARIZERS``; the default, ``mean_area`` (salbench's ``mean_area``
protocol): the binary area equals the mean mask value, so a method cannot gain on LE just by
choosing a different threshold than the map's own mass implies. It follows the CASM paper's
rule but not the official CASM code bit for bit (that code keeps ``m > kth value``, dropping
every tie, with a clamped threshold); ``salbench.metrics.casm_protocol`` reproduces the official
code's scoring as the separate ``casm_*`` columns (README, "Metrics", lists the differences).
"""

from __future__ import annotations

import torch

from salbench.metrics._util import acc_dtype, check_maps
from salbench.registry import Registry

BINARIZERS: Registry = Registry("binarization")


def keep_counts(m: torch.Tensor) -> torch.Tensor:
    """Per image, the number of pixels ``mean_area`` keeps: ``ceil(mean(m) * N)`` (B, int64).

    The count is computed in float64 (float32 on MPS) and rounded to 1e-6 before the ceil, so a
    mask whose mean is exactly k/N keeps exactly k pixels instead of k+1 from float noise.
    """
    check_maps(m)
    n = m.shape[1] * m.shape[2]
    total = m.reshape(m.shape[0], -1).to(acc_dtype(m.device)).sum(dim=1)
    k = torch.ceil(torch.round(total, decimals=6))
    return k.clamp(0, n).to(torch.long)


@BINARIZERS.register("mean_area")
def mean_area(m: torch.Tensor) -> torch.Tensor:
    """Keep exactly the top ``ceil(mean(m) * N)`` pixels of each image (mean 0 keeps nothing).

    Ties are broken deterministically: a stable descending sort keeps pixels in raster order,
    so among equal values the earlier pixel (row-major) is kept first.
    """
    check_maps(m)
    b, h, w = m.shape
    flat = m.reshape(b, h * w)
    k = keep_counts(m)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=m.device).expand(b, -1))
    return (rank < k[:, None]).reshape(b, h, w)


@BINARIZERS.register("alpha_mean")
def alpha_mean(m: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The CASM paper's formula, ``b = m >= alpha * mean(m)`` per image.

    Taken literally: a constant map (including all zeros) keeps every pixel.
    """
    check_maps(m)
    mean = m.mean(dim=(1, 2), keepdim=True)
    return m >= alpha * mean


@BINARIZERS.register("threshold")
def threshold(m: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """A fixed threshold, ``b = m >= t``."""
    check_maps(m)
    return m >= t


def binarize(m: torch.Tensor, name: str = "mean_area", **params) -> torch.Tensor:
    """Binarise maps with the registered rule ``name`` (extra keyword arguments go to the rule)."""
    return BINARIZERS.get(name)(m, **params)
