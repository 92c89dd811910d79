"""RISE: randomized input sampling for explanation (Petsiuk et al. 2018).

N random binary ``grid`` x ``grid`` masks (each cell kept with probability ``p``) are upsampled
bilinearly to (grid+1)*cell pixels, cell = ceil(H/grid) (and likewise for W), and cropped to H x W
at a random shift in [0, cell) -- the paper's recipe for smooth masks that are not aligned to a
fixed lattice. The saliency of class c is the mask average weighted by the class probability of
the masked image:

    S_c = sum_i P(c | x * M_i) M_i / (N p)                    (estimator="expected", the paper's)

i.e. a Monte-Carlo estimate of E[P(c | x * M) | M(pixel) = 1] with the coverage P(M(pixel) = 1)
replaced by its expectation p. ``estimator="ratio"`` divides by each pixel's actual coverage
sum_i M_i instead (the ratio estimator of the same conditional expectation): it removes the
noise of uneven coverage, which dominates the map when N is small (tens of masks, as the 64x64
synthetic default uses), and changes nothing as N grows.

Masking multiplies the *pixel-space* image (removed pixels become 0, as in the harness's
masked-out images; the classifier then normalises). P is the softmax probability.

Masks are seeded per image and per mask: mask i of image b is drawn from
``salbench.rng.uniform`` with the seed hash(seed_b, i), so an image's masks depend neither on the
batch it is in nor on ``chunk``. Masks are generated and applied ``chunk`` (image, mask) copies at
a time, which bounds memory (chunk x 3 x H x W); all copies of all images in the batch are packed
into those chunks. Cost: ``n_masks`` forward passes per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from salbench.methods.base import Capabilities, SaliencyMethod, register_method
from salbench.rng import derive_seeds, uniform

def mask_seeds(seeds: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
    """One 32-bit seed per (image seed, mask index) pair, elementwise."""
    return derive_seeds(seeds, mask_index)


def rise_masks(seeds: torch.Tensor, size: tuple[int, int], grid: int, p: float) -> torch.Tensor:
    """One RISE mask per seed, n x H x W float in [0, 1]."""
    h, w = size
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    u = uniform(seeds, (grid * grid + 2,))
    cells = (u[:, : grid * grid] < p).float().view(-1, 1, grid, grid)
    up = F.interpolate(cells, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear", align_corners=False)[:, 0]
    dy = (u[:, -2] * ch).long().clamp_max(ch - 1)
    dx = (u[:, -1] * cw).long().clamp_max(cw - 1)
    rows = dy[:, None] + torch.arange(h, device=seeds.device)
    cols = dx[:, None] + torch.arange(w, device=seeds.device)
    n = torch.arange(len(seeds), device=seeds.device)
    return up[n[:, None, None], rows[:, :, None], cols[:, None, :]].clamp_(0, 1)


@register_method("rise")
class RISE(SaliencyMethod):
    capabilities = Capabilities(needs_gradients=False, classifier_dependent=True, stochastic=True, family="perturb")
    description = "RISE: class probability-weighted average of random smooth masks"
    normalization = "minmax"  # the map's floor is the mean class probability, not evidence

    @dataclass(frozen=True)
    class Params:
        n_masks: int = 64  # generic defaults; per-dataset ones: defaults_for
        grid: int = 8
        p: float = 0.5
        estimator: str = "expected"  # "expected" (the paper: divide by N p) | "ratio" (by sum_i M_i)
        chunk: int = 256

        def __post_init__(self):
            if self.n_masks < 1:
                raise ValueError(f"n_masks={self.n_masks}: expected a positive number of masks")
            if self.grid < 1:
                raise ValueError(f"grid={self.grid}: expected a positive lattice size")
            if not 0.0 < self.p <= 1.0:
                raise ValueError(f"p={self.p}: expected a keep probability in (0, 1]")
            if self.estimator not in ("expected", "ratio"):
                raise ValueError(f"estimator={self.estimator!r}: expected 'expected' or 'ratio'")
            if self.chunk < 1:
                raise ValueError(f"chunk={self.chunk}: expected a positive number of images per forward pass")

    @classmethod
    def defaults_for(cls, image_size):
        """Per-dataset defaults. Up to 96 px (the 64x64 synthetic set): 64 masks on a 4x4 grid with
        the ratio estimator, which fits the default run's time budget (64 masks with the paper's
        estimator left the map mostly coverage noise: LE 69-77% vs 60-70% with the ratio
        estimator, zoo classifiers, 256 val images). Beyond 96 px the paper's ImageNet setting
        (4000 masks, grid 7, p 0.5, its estimator)."""
        if min(image_size) <= 96:
            return {"n_masks": 64, "grid": 4, "estimator": "ratio"}
        return {"n_masks": 4000, "grid": 7, "p": 0.5}

    def cost(self):
        return (float(self.params.n_masks), 0.0)

    @torch.no_grad()
    def attribute(self, classifier, images, targets, seeds):
        prm = self.params
        b, _, h, w = images.shape
        n = prm.n_masks
        sal = images.new_zeros(b, h, w, dtype=torch.float32)
        coverage = images.new_zeros(b, h, w, dtype=torch.float32) if prm.estimator == "ratio" else None
        for start in range(0, b * n, prm.chunk):
            idx = torch.arange(start, min(start + prm.chunk, b * n), device=images.device)
            img, i = idx // n, idx % n
            masks = rise_masks(mask_seeds(seeds[img], i), (h, w), prm.grid, prm.p)
            logits = classifier(images[img] * masks[:, None].to(images.dtype))
            probs = logits.float().softmax(1).gather(1, targets[img].view(-1, 1)).squeeze(1)
            sal.index_add_(0, img, probs[:, None, None] * masks)
            if coverage is not None:
                coverage.index_add_(0, img, masks)
        if coverage is not None:
            return sal / coverage.clamp_min(1e-6)
        return sal / (n * prm.p)
