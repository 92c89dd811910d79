"""Shared steps of the perturbation metrics (deletion / insertion, ROAD); registers nothing.

* ``removal_rank``: each pixel's place in the order of removal, most salient first. Ties (a
  constant map, a flat region) are broken by a seeded hash of (image seed, pixel), so the order
  depends on the image alone (batch-invariant) and a constant map is a uniformly random order:
  its expected curve is the random-order curve.
* ``target_scores``: a classifier's softmax probability of the target and top-1 hit for many
  perturbed copies of a batch, in as few forward calls as ``chunk`` allows (0: ``auto_chunk``).
* ``subsample``: the images a metric with ``stride`` scores (dataset index divisible by it), so
  an expensive metric can run on a fixed, batch-independent share of the images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from salbench.rng import image_seeds, uniform


def removal_rank(maps: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """B x (H*W) int64: rank of each pixel in the removal order (0 = most salient).

    Sorted by (-saliency, hashed tie key): a stable sort by saliency after a sort by the tie key.
    """
    b = maps.shape[0]
    sal = maps.reshape(b, -1)
    tie = uniform(seeds, (sal.shape[1],), device=maps.device)
    by_tie = torch.argsort(tie, dim=1, stable=True)
    order = torch.gather(by_tie, 1, torch.argsort(-torch.gather(sal, 1, by_tie), dim=1, stable=True))
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=maps.device).expand_as(order))
    return rank


def tie_seeds(index: torch.Tensor, seed: int, salt: int) -> torch.Tensor:
    """Per-image seeds of a metric (dataset index, the metric's ``seed`` parameter, a salt)."""
    return image_seeds(seed, index.to(torch.int64), salt)


def subsample(index: torch.Tensor, stride: int) -> torch.Tensor:
    """Positions in the batch of the images a metric scores: dataset index divisible by ``stride``."""
    return torch.nonzero(index.to(torch.int64) % stride == 0).flatten()


def auto_chunk(device: torch.device) -> int:
    """Images per classifier call when a metric's ``chunk`` is 0: large stacks on a GPU (fewer
    launches), 64 on a CPU, where a stack of hundreds of images leaves the caches and costs more
    per image (measured: 25-40% more per image at 1024 than at 64 on the zoo models, 64 px)."""
    return 1024 if device.type == "cuda" else 64


@torch.no_grad()
def target_scores(classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, targets: torch.Tensor,
                  chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probability of ``targets`` and top-1 hit for N x 3 x H x W images (targets N),
    ``chunk`` images per classifier call (0: ``auto_chunk``)."""
    chunk = chunk or auto_chunk(images.device)
    probs, hits = [], []
    for s in range(0, len(images), chunk):
        logits = classifier(images[s:s + chunk]).float()
        t = targets[s:s + chunk]
        probs.append(torch.softmax(logits, 1).gather(1, t[:, None]).squeeze(1))
        hits.append(logits.argmax(1) == t)
    return torch.cat(probs), torch.cat(hits)


def softmax_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), 1).gather(1, targets[:, None]).squeeze(1)


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``values`` (len(rows) x ...) placed at ``rows`` of an n-row tensor of NaN (unscored images)."""
    out = torch.full((n, *values.shape[1:]), float("nan"), dtype=torch.float32, device=values.device)
    out[rows] = values.float()
    return out
