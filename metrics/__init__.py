"""Metrics: pure batched tensor functions plus the registry that tables and reports derive from.

Every module here is imported with the package, so a module that defines a ``@register_metric``
class adds that metric to every run, Parquet schema, leaderboard, HTML report and ``compare``
(see ``salbench.metrics.base`` and docs/architecture.md). Helper modules that register nothing:
``binarize`` (continuous map -> binary mask), ``inpainting`` (backends), ``_util``.

Here too: ``MeanAccumulator`` and ``bootstrap_ci`` aggregate per-image values.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Sequence

import numpy as np
import torch

from salbench.metrics.base import (
    METRIC_REGISTRY,
    METRICS,
    Direction,
    MapContext,
    Metric,
    MetricInfo,
    ScoreContext,
    descriptors,
    metric_info,
    metrics_for,
    select_metrics,
    register_metric,
    table_schema,
    unregister_metric,
)

__all__ = ["METRICS", "METRIC_REGISTRY", "Direction", "MapContext", "MeanAccumulator", "Metric", "MetricInfo", "ScoreContext",
           "bootstrap_ci", "descriptors", "metric_info", "metrics_for", "register_metric", "select_metrics", "table_schema", "unregister_metric"]


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


# Last, so that metric modules may use everything above: importing the package registers them all.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
