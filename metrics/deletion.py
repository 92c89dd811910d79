"""Deletion and insertion (Petsiuk et al. 2018, RISE, Sec. 4.1): the causal metrics.

Deletion removes the pixels in order of saliency, most salient first, replacing them by a baseline
(the paper's black image, ``baseline``); insertion reveals them in the same order on a blurred
copy of the image (the paper's Gaussian blur, kernel 11 and sigma 5 at 224 px, scaled to the image
size; kornia's ``gaussian_blur2d`` with zero padding as in the RISE code's ``conv2d``). After each
of ``steps`` equal steps the scorer's softmax probability of the target is recorded; the AUC is
the trapezoid over the normalised x-axis 0..1 (the RISE code's ``auc``). Deletion: lower is
better; insertion: higher.

Every step of every image goes through the classifier in stacked batches of ``chunk`` images; the
clean image's logits (deletion's first point, insertion's last) come from the run and the
substrate's (the black / blurred image, the same for every method) are computed once per batch.

``deletion`` / ``insertion`` are scored by the source classifier (the target is the source's
target); ``deletion_cross`` / ``insertion_cross`` by every eval classifier other than the source,
averaged (the cross-classifier view, as the agnosticism columns; no peer toolkit has it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import kornia
import pyarrow as pa
import torch

from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric
from salbench.metrics.perturbation import removal_rank, scatter_rows, softmax_target, subsample, target_scores, tie_seeds

_LIST = pa.list_(pa.float32())


def blur_substrate(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The insertion start image: Gaussian blur, kernel ~ 2.2 sigma each side (11 at sigma 5), zero padding."""
    k = max(3, 2 * round(1.1 * sigma) + 1)
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="constant")


def paper_sigma(image_size: tuple[int, int]) -> float:
    """The RISE blur (sigma 5 at 224 px) scaled to the image size."""
    return 5.0 * max(image_size) / 224


def step_counts(steps: int, n: int, device: torch.device) -> torch.Tensor:
    """Pixels changed after each of the ``steps - 1`` inner steps: floor(k * n / steps)."""
    return (torch.arange(1, steps, device=device) * n) // steps


def perturbation_images(x: torch.Tensor, rank: torch.Tensor, substrate: torch.Tensor, steps: int, kind: str) -> torch.Tensor:
    """(steps - 1) * B images (step-major) of the inner steps: deletion puts the substrate on the
    first pixels of the order, insertion the image on the substrate."""
    b, _, h, w = x.shape
    changed = (rank[None] < step_counts(steps, h * w, x.device)[:, None, None]).view(steps - 1, b, 1, h, w)
    start, finish = (x, substrate) if kind == "deletion" else (substrate, x)
    return torch.where(changed, finish[None], start[None]).reshape(-1, *x.shape[1:])


def curve_auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid over the x-axis 0..1 of B x (steps + 1) curves (the RISE code's ``auc``)."""
    return (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1)


def causal_curves(scorers: dict[str, Any], x: torch.Tensor, rank: torch.Tensor, targets: torch.Tensor, kind: str, steps: int,
                  substrate: torch.Tensor, clean_logits: dict[str, torch.Tensor], substrate_logits: dict[str, torch.Tensor],
                  chunk: int) -> dict[str, torch.Tensor]:
    """B x (steps + 1) target-probability curves per scorer: the clean and substrate ends are
    the given logits, the ``steps - 1`` inner steps are scored in chunked stacked batches."""
    images = perturbation_images(x, rank, substrate, steps, kind)
    out = {}
    for name, clf in scorers.items():
        inner, _ = target_scores(clf, images, targets.repeat(steps - 1), chunk)
        clean, sub = softmax_target(clean_logits[name], targets), softmax_target(substrate_logits[name], targets)
        first, last = (clean, sub) if kind == "deletion" else (sub, clean)
        out[name] = torch.cat([first[:, None], inner.view(steps - 1, -1).T, last[:, None]], 1)
    return out


class _Causal(Metric):
    """Deletion or insertion scored by the source (``cross = False``) or the other eval classifiers."""

    kind: ClassVar[str] = "deletion"
    cross: ClassVar[bool] = False
    needs = frozenset({"maps", "model"})

    @dataclass(frozen=True)
    class Params:
        steps: int = 16  # equal steps from 0 to every pixel
        baseline: float = 0.0  # deletion: the value removed pixels take (the paper's black)
        sigma: float = 5.0  # insertion: blur sigma in pixels (the paper's 5 at 224; defaults scale it)
        stride: int = 1  # score the images whose dataset index is divisible by stride
        chunk: int = 0  # images per classifier call (0: by device, perturbation.auto_chunk)
        seed: int = 0  # order of pixels with equal saliency

        def __post_init__(self) -> None:
            for key, low in (("steps", 2), ("stride", 1), ("chunk", 0)):
                if getattr(self, key) < low:
                    raise ValueError(f"{key}={getattr(self, key)!r}: expected an integer >= {low}")
            if not self.sigma > 0:
                raise ValueError(f"sigma={self.sigma!r}: expected a blur sigma > 0 (pixels)")

    @classmethod
    def defaults_for(cls, image_size: tuple[int, int]) -> dict[str, Any]:
        small = max(image_size) <= 64
        return {"sigma": round(paper_sigma(image_size), 3), **({"steps": 8, "stride": 8} if small else {})}

    def cost(self) -> tuple[float, float, float]:
        """The inner steps on every ``stride``-th image (the clean and substrate ends are shared)."""
        per_image = (self.params.steps - 1) / self.params.stride
        return (0.0, 0.0, per_image) if self.cross else (per_image, 0.0, 0.0)

    def _substrate(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "deletion":
            return torch.full_like(x, self.params.baseline)
        return blur_substrate(x, self.params.sigma)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        p, batch, n = self.params, ctx.batch, len(ctx.maps)
        rows = subsample(batch.index, p.stride)
        names = [m for m in ctx.eval_models if m != ctx.source_model] if self.cross else [ctx.source_model]
        prefix = f"{self.kind}_cross" if self.cross else self.kind
        if not names or not len(rows):  # no other eval classifier (the cross view is undefined) or no image to score here
            nan = torch.full((n,), float("nan"), device=ctx.maps.device)
            return {f"{prefix}_auc": nan, f"{prefix}_curve": torch.full((n, p.steps + 1), float("nan"), device=ctx.maps.device)}
        x, targets = batch.images[rows], ctx.targets[rows]
        substrate = self._substrate(x)
        cache = ctx.shared if ctx.shared is not None else {}
        clean, sub = {}, {}
        for m in names:  # the substrate is the same for every method: its logits once per batch
            key = (self.kind, m, p.baseline if self.kind == "deletion" else p.sigma, tuple(rows.tolist()))
            if key not in cache:
                cache[key] = ctx.classifiers[m](substrate)
            sub[m], clean[m] = cache[key], ctx.logits_clean[m][rows]
        rank = removal_rank(ctx.maps[rows], tie_seeds(batch.index[rows], p.seed, 0xDE1))
        curves = causal_curves({m: ctx.classifiers[m] for m in names}, x, rank, targets, self.kind, p.steps, substrate, clean, sub, p.chunk)
        curve = torch.stack(list(curves.values())).mean(0)
        return {f"{prefix}_auc": scatter_rows(curve_auc(curve), rows, n), f"{prefix}_curve": scatter_rows(curve, rows, n)}


@register_metric
class Deletion(_Causal):
    name = "deletion"
    kind = "deletion"
    description = "deletion AUC (Petsiuk et al. 2018) by the source classifier"
    columns = (MetricInfo("deletion_auc", "lower", False, "deletion: area under the source's target-probability curve as the most salient pixels go black",
                          ci=True, leaderboard=True, compare=True, header="deletion AUC", digits=3),
               MetricInfo("deletion_curve", None, False, "deletion: source target probability after each step (steps + 1 points)", aggregate=None, dtype=_LIST))


@register_metric
class Insertion(_Causal):
    name = "insertion"
    kind = "insertion"
    description = "insertion AUC (Petsiuk et al. 2018) by the source classifier"
    columns = (MetricInfo("insertion_auc", "higher", False, "insertion: area under the source's target-probability curve as the most salient pixels are revealed on a blurred copy",
                          ci=True, leaderboard=True, compare=True, header="insertion AUC", digits=3),
               MetricInfo("insertion_curve", None, False, "insertion: source target probability after each step (steps + 1 points)", aggregate=None, dtype=_LIST))


@register_metric
class DeletionCross(_Causal):
    default_selected = False  # 3x the source's forwards with 4 classifiers: on request (--metrics)
    name = "deletion_cross"
    kind = "deletion"
    cross = True
    description = "deletion AUC scored by the eval classifiers other than the source (mean)"
    columns = (MetricInfo("deletion_cross_auc", "lower", False, "deletion AUC by the eval classifiers other than the source, averaged (cross-classifier)",
                          ci=True, leaderboard=True, compare=True, header="deletion AUC cross", digits=3),
               MetricInfo("deletion_cross_curve", None, False, "deletion curve averaged over the eval classifiers other than the source", aggregate=None, dtype=_LIST))


@register_metric
class InsertionCross(_Causal):
    default_selected = False  # 3x the source's forwards with 4 classifiers: on request (--metrics)
    name = "insertion_cross"
    kind = "insertion"
    cross = True
    description = "insertion AUC scored by the eval classifiers other than the source (mean)"
    columns = (MetricInfo("insertion_cross_auc", "higher", False, "insertion AUC by the eval classifiers other than the source, averaged (cross-classifier)",
                          ci=True, leaderboard=True, compare=True, header="insertion AUC cross", digits=3),
               MetricInfo("insertion_cross_curve", None, False, "insertion curve averaged over the eval classifiers other than the source", aggregate=None, dtype=_LIST))
