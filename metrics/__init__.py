"""Metrics: pure batched tensor functions (submodules) plus the descriptors reports sort by.

Submodules (imported on demand, so this package stays light):
  ``binarize`` (continuous map -> binary mask), ``boxes`` (mask -> box), ``localization``
  (IoU, LE, OM, continuous F1), ``statistics`` (area, TV, entropy), ``agnosticism`` (image
  variants, classification scores), ``inpainting`` (backends).

Here: ``MetricInfo`` / ``METRICS`` say, for every reported column, whether lower or higher is
better and whether it is shown as a percentage, so leaderboards sort and draw arrows from the
metric itself; ``MeanAccumulator`` and ``bootstrap_ci`` aggregate per-image values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from salbench.errors import UsageError, close_matches

Direction = Literal["lower", "higher"] | None


@dataclass(frozen=True)
class MetricInfo:
    """What a report needs to know about a metric column."""

    name: str
    direction: Direction  # "lower" / "higher" is better; None: descriptive, no ranking
    percent: bool  # per-image values in [0, 1] shown x100 with a % sign
    description: str

    def __post_init__(self) -> None:
        if self.direction not in ("lower", "higher", None):
            raise ValueError(f"direction must be 'lower', 'higher' or None, got {self.direction!r}")

    @property
    def arrow(self) -> str:
        """``↓`` / ``↑`` for column headers, empty when the metric does not rank."""
        return {"lower": "↓", "higher": "↑"}.get(self.direction or "", "")

    @property
    def higher_is_better(self) -> bool | None:
        return None if self.direction is None else self.direction == "higher"


def _m(name: str, direction: Direction, percent: bool, description: str) -> tuple[str, MetricInfo]:
    return name, MetricInfo(name, direction, percent, description)


METRICS: dict[str, MetricInfo] = dict(
    [
        # localisation table
        _m("le", "lower", True, "localisation error: box IoU with every GT box < 0.5"),
        _m("om", "lower", True, "official ImageNet metric: LE miss or wrong source top-1"),
        _m("f1", "higher", True, "continuous F1 of the map against the best GT box"),
        _m("precision", "higher", True, "share of the map's mass inside the best GT box"),
        _m("recall", "higher", True, "mean map value inside the best GT box"),
        # mask statistics (descriptive)
        _m("area", None, False, "mean mask value per image"),
        _m("area_std", None, False, "population std across images of the per-image mean mask"),
        _m("tv", None, False, "total variation: mean squared horizontal + vertical differences"),
        _m("entropy", None, False, "mask entropy: sum of -m log2 m over 0<m<1, per pixel"),
        # classification scores (agnosticism table: its 'entropy' column is pred_entropy)
        _m("top1", "higher", True, "top-1 accuracy"),
        _m("top5", "higher", True, "top-5 accuracy"),
        _m("ce", "lower", False, "cross-entropy of the true label, nats"),
        _m("pred_entropy", None, False, "entropy of the softmax prediction, nats"),
        # agnosticism leaderboard columns: what a good saliency map does to other classifiers
        _m("original_top1", "higher", True, "top-1 on the clean image (reference)"),
        _m("masked_in_top1", "higher", True, "top-1 when only the mask is kept: the object must survive"),
        _m("masked_out_top1", "lower", True, "top-1 when the mask is blacked out: the object must be gone"),
        _m("inpainted_top1", "lower", True, "top-1 when the mask is inpainted: gone without a black hole"),
        _m("original_top5", "higher", True, "top-5 on the clean image (reference)"),
        _m("masked_in_top5", "higher", True, "top-5 when only the mask is kept"),
        _m("masked_out_top5", "lower", True, "top-5 when the mask is blacked out"),
        _m("inpainted_top5", "lower", True, "top-5 when the mask is inpainted"),
    ]
)


def metric_info(name: str) -> MetricInfo:
    """The descriptor of ``name``; an unknown name is a ``UsageError`` naming close matches."""
    try:
        return METRICS[name]
    except KeyError:
        raise UsageError(f"unknown metric {name!r}{close_matches(name, METRICS)}; known: {', '.join(METRICS)}") from None


def _as_tensor(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach()
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


class MeanAccumulator:
    """Running mean over images, torchmetrics-style: declared state ``sum`` and ``count``.

    State lives on the device of the first update (float64 there, float32 on MPS), so updates
    do not sync with the host; ``compute()`` does, once. NaN values (failed images) are skipped
    when ``ignore_nan`` (default); ``compute()`` of an empty accumulator is NaN.
    """

    state_names = ("sum", "count")

    def __init__(self, direction: Direction = None, name: str | None = None, ignore_nan: bool = True):
        if direction is None and name is not None and name in METRICS:
            direction = METRICS[name].direction
        if direction not in ("lower", "higher", None):
            raise ValueError(f"direction must be 'lower', 'higher' or None, got {direction!r}")
        self.name = name
        self.direction = direction
        self.ignore_nan = ignore_nan
        self.reset()

    def reset(self) -> None:
        self.sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def update(self, values) -> None:
        v = _as_tensor(values).reshape(-1)
        if self.sum is None:
            dt = torch.float32 if v.device.type == "mps" else torch.float64
            self.sum = torch.zeros((), dtype=dt, device=v.device)
            self.count = torch.zeros((), dtype=torch.long, device=v.device)
        v = v.to(self.sum.device, self.sum.dtype)
        if self.ignore_nan:
            ok = ~torch.isnan(v)
            self.sum += torch.where(ok, v, torch.zeros_like(v)).sum()
            self.count += ok.sum()
        else:
            self.sum += v.sum()
            self.count += v.numel()

    def merge(self, other: "MeanAccumulator") -> None:
        """Add another accumulator's state (e.g. from another shard)."""
        if other.sum is None:
            return
        if self.sum is None:
            self.sum, self.count = other.sum.clone(), other.count.clone()
        else:
            self.sum += other.sum.to(self.sum.device, self.sum.dtype)
            self.count += other.count.to(self.count.device)

    def compute(self) -> float:
        if self.sum is None or int(self.count) == 0:
            return math.nan
        return float(self.sum) / int(self.count)


def bootstrap_ci(
    values: torch.Tensor | np.ndarray | Sequence[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over images.

    Resamples images with replacement ``n_boot`` times (NumPy generator seeded with ``seed``,
    so the interval is reproducible) and returns the ``alpha/2`` and ``1 - alpha/2`` quantiles
    of the resampled means. NaNs are dropped; no values give ``(nan, nan)``.
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().to("cpu", torch.float64).numpy().ravel()
    else:
        v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    n = v.size
    if n == 0:
        return math.nan, math.nan
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)  # bound the index matrix to ~32 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
