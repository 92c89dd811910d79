"""The masker's objective ``-S(m, f')``: the score of f' on masked images minus a gated area term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salbench.casm.spec import SCORES
from salbench.errors import UsageError


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def masker_objective(
    logits_clean: torch.Tensor,
    logits_masked: torch.Tensor,
    mask: torch.Tensor,
    *,
    score: str = "entropy",
    lambda_r: float = 1.0,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss the masker minimises, ``-S(m, f')``, and per-image terms.

    ``S = mean_i [ s_i - lambda_r * changed_i * area_i ]`` with ``s_i`` the prediction entropy of
    f' on the masked image (``score="entropy"``) or its cross-entropy against ``targets``
    (``"classification"``), ``area_i`` the mean of mask i, and ``changed_i`` = f' predicts a
    different class on the masked image than on the clean one (no gradient through it). The area
    term is therefore zero, with zero gradient, for images whose prediction the mask left unchanged.
    """
    if score == "entropy":
        s = prediction_entropy(logits_masked)
    elif score == "classification":
        if targets is None:
            raise ValueError("score='classification' needs targets")
        s = F.cross_entropy(logits_masked.float(), targets, reduction="none")
    else:
        raise UsageError(f"score {score!r}: expected one of {', '.join(SCORES)}")
    changed = (logits_clean.argmax(1) != logits_masked.argmax(1)).detach()
    area = mask.flatten(1).mean(1)
    area_term = lambda_r * changed.to(area.dtype) * area
    loss = (area_term - s).mean()
    return loss, {"score": s.detach(), "area": area.detach(), "changed": changed, "area_term": area_term.detach()}


__all__ = ["masker_objective", "prediction_entropy"]
