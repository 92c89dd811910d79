"""Diagnostics a method reports with its maps (``SaliencyMethod.attribute_with_diagnostics``).

``completeness_gap`` (Integrated Gradients): |sum of attributions - (S(x) - S(x'))| / |S(x) - S(x')|
per image, the relative distance of the quadrature from the completeness axiom (Sundararajan et
al. 2017). Stored only (no leaderboard column: it describes the method's numerics, not the map's
quality); NaN for methods that report none and for maps read back from the map cache. Summarise it
from the localization table, e.g. ``df.groupby(["method", "source_model"]).completeness_gap.agg(["mean", "max"])``.
"""

from __future__ import annotations

import torch

from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric


@register_metric
class CompletenessGap(Metric):
    name = "completeness_gap"
    needs = frozenset({"diagnostics"})
    columns = (MetricInfo("completeness_gap", None, False, "Integrated Gradients: |sum of attributions - (S(x) - S(baseline))| "
                          "relative to |S(x) - S(baseline)| (NaN for other methods)", aggregate=None, digits=4),)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        gap = ctx.diagnostics.get("completeness_gap")
        if gap is None:
            gap = torch.full((len(ctx.maps),), float("nan"), device=ctx.maps.device)
        return {"completeness_gap": gap.to(ctx.maps.device).float()}
