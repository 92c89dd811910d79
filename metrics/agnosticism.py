"""Cross-classifier agnosticism: compose the evaluated image variants and score classifiers on them.

A good, classifier-agnostic map keeps the object in ``masked_in`` (high accuracy for every
eval classifier) and removes it from ``masked_out`` and ``inpainted`` (low accuracy); a large
jump from masked-out to inpainted accuracy flags adversarial-looking masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salbench.errors import UsageError, close_matches
from salbench.metrics.base import VARIANTS, Metric, MetricInfo, ScoreContext, register_metric
from salbench.metrics.inpainting import inpaint as _inpaint

__all__ = ["VARIANTS", "classification_scores", "compose"]


def compose(x: torch.Tensor, b: torch.Tensor, variant: str, inpaint: str = "telea") -> torch.Tensor:
    """The ``variant`` of images ``x`` (B x 3 x H x W in [0,1]) under binary masks ``b`` (B x H x W).

    ``original`` = x; ``masked_in`` = b·x; ``masked_out`` = (1-b)·x (removed pixels are 0 in
    pixel space, before any normalisation); ``inpainted`` = the ``inpaint`` backend applied to
    masked_out with the removed region = b. A float ``b`` counts as True where > 0.5.
    """
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}{close_matches(variant, VARIANTS)}; known: {', '.join(VARIANTS)}")
    if x.ndim != 4 or b.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"compose wants x B x C x H x W and b B x H x W, got {tuple(x.shape)} and {tuple(b.shape)}")
    if variant == "original":
        return x
    keep = b if b.dtype == torch.bool else b > 0.5
    if variant == "masked_in":
        return x * keep[:, None].to(x.dtype)
    out = x * (~keep)[:, None].to(x.dtype)
    if variant == "masked_out":
        return out
    return _inpaint(out, keep, backend=inpaint).to(x.dtype)


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image scores of a classifier's ``logits`` (B x C) against ``labels`` (B), float32 B each.

    ``top1`` / ``top5`` (0/1; top-min(5, C)), ``ce`` (cross-entropy, nats) and ``entropy`` (of
    the softmax prediction, nats; high when the classifier is unsure, which is what a good
    masked-out image should cause). Computed in float32 whatever the logits' dtype.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"want logits B x C and labels B, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    z = logits.detach().float()
    y = labels.to(device=z.device, dtype=torch.long)
    k = min(5, z.shape[1])
    hit1 = z.argmax(dim=1) == y
    top1 = hit1.float()
    # "| hit1": with tied logits topk may pick other indices than argmax; keep top5 >= top1
    top5 = ((z.topk(k, dim=1).indices == y[:, None]).any(dim=1) | hit1).float()
    logp = F.log_softmax(z, dim=1)
    ce = -logp.gather(1, y[:, None])[:, 0]
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=1)
    return {"top1": top1, "top5": top5, "ce": ce, "entropy": entropy}


@register_metric
class ClassificationScores(Metric):
    """How an eval classifier scores an image variant: the agnosticism table's columns."""

    name = "classification"
    table = "agnosticism"
    needs = frozenset({"eval"})
    columns = (
        MetricInfo("top1", "higher", True, "top-1 accuracy", aggregate="by_variant", ci=True, leaderboard=True, compare=True, header="top-1 %"),
        MetricInfo("top5", "higher", True, "top-5 accuracy", aggregate="by_variant", header="top-5 %"),
        MetricInfo("ce", "lower", False, "cross-entropy of the true label, nats", aggregate="by_variant", digits=3),
        MetricInfo("pred_entropy", None, False, "entropy of the softmax prediction, nats", aggregate="by_variant", digits=3,
                   table_name="entropy"),
    )

    def compute(self, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        return classification_scores(ctx.logits, ctx.labels)
