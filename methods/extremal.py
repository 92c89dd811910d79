"""Extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019), the "preserve" game.

For each target area a, find the smooth mask m (values in [0, 1]) of area a whose preserved region
keeps the class score highest when everything else is blurred:

    m_a = argmax_m  S_c(perturb(x, m))  -  lambda * || sort(m) - r_a ||^2 / N

* **Perturbation** (blur): a pyramid of L copies of the image blurred with Gaussians of
  sigma_l = max_blur (1 - l / (L - 1)), l = 0..L-1 (the last copy is the image itself); the
  perturbed pixel reads the pyramid at the fractional level m (L - 1), interpolating linearly
  between the two nearest levels, so m = 1 keeps the pixel and m = 0 blurs it fully. Blur:
  ``kornia.filters.gaussian_blur2d`` (kernel 2 ceil(3 sigma) + 1, replicated border).
* **Smooth mask** on a coarse grid: one parameter in [0, 1] every ``step`` pixels; a pixel's mask
  is the smooth maximum (softmax with coldness 20) over the grid points near it of
  k(d / sigma) * p, with the flat-top bump k(z) = exp(-2 (z - 1/2)_+^2) (1 within sigma / 2 of a
  grid point). Masks are thus unions of soft discs, never single pixels (the paper's smooth
  max-convolution).
* **Area constraint**: r_a is the sorted reference vector (a fraction 1 - a of zeros, then ones)
  and the mask's values are sorted too, so the penalty asks for exactly a N pixels at 1 and the
  rest at 0, whatever their place. Its weight lambda grows geometrically from ``area_weight`` to
  16.4 times that over the run (TorchRay's x1.0035 per step over its 800 steps).
* **Optimisation**: Adam on the parameters of every (image, area) mask of the batch at once, one
  forward and one backward pass per step, the parameters clipped to [0, 1] after each step. The
  score is the unnormalised class score (logit), as in the reference implementation (TorchRay).
  With ``jitter`` each perturbed image is flipped horizontally with probability 1/2 at each step
  (a coin drawn from the image's seed: maps never depend on the batch), which stops the mask from
  fitting pixel-exact adversarial patterns; the reference flips on every other step.

The map is the mean over the areas of the final masks (one area: the mask itself), already in
[0, 1]. Adam's moments are elementwise and image i's score depends only on image i's masks, so
every image is optimised as it would be alone (up to float rounding, which the area ranking is
made robust to: ``area_penalty``). Cost: ``steps`` x (number of areas)
forward and backward passes per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from salbench.errors import UsageError
from salbench.methods.base import Capabilities, SaliencyMethod, register_method, target_scores
from salbench.rng import derive_seeds, uniform

#: Softmax coldness of the smooth maximum (TorchRay's value).
COLDNESS = 20.0
#: Factor by which the area weight grows over a run (TorchRay: 1.0035 ** 800).
AREA_WEIGHT_GROWTH = 1.0035**800


def blur_pyramid(images: torch.Tensor, levels: int, max_blur: float) -> torch.Tensor:
    """B x L x C x H x W: level l blurred with sigma = max_blur (1 - l / (L - 1)); level L-1 = the image."""
    from kornia.filters import gaussian_blur2d

    out = []
    for sigma in torch.linspace(max_blur, 0.0, levels).tolist():
        if sigma <= 0:
            out.append(images)
            continue
        k = 2 * math.ceil(3 * sigma) + 1
        out.append(gaussian_blur2d(images, (k, k), (sigma, sigma), border_type="replicate"))
    return torch.stack(out, 1)


def perturb(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Read each pixel at pyramid level m (L - 1), linearly between levels. pyramid: n x L x C x H x W,
    masks: n x H x W in [0, 1] -> n x C x H x W (differentiable in the masks)."""
    n, levels, c, h, w = pyramid.shape
    level = masks.clamp(0, 1) * (levels - 1)
    lo = level.detach().floor().clamp(max=levels - 2).long()
    frac = (level - lo).unsqueeze(1)
    idx = lo[:, None, None].expand(n, 1, c, h, w)
    y0 = pyramid.gather(1, idx).squeeze(1)
    y1 = pyramid.gather(1, idx + 1).squeeze(1)
    return y0 + frac * (y1 - y0)


class SmoothMask:
    """Masks H x W from parameters on a grid of pitch ``step`` px (see the module docstring).

    The smooth maximum is evaluated at the centres of ``step // 2``-pixel blocks and upsampled
    bilinearly: the mask varies on the scale of ``sigma`` (>= ``step`` in every default), so this
    changes it by interpolation error only, and it is 4x cheaper than per pixel (the n x R x H x W
    smooth maximum dominated the step time at 64 x 64 on the CPU).
    """

    def __init__(self, size: tuple[int, int], step: int, sigma: float, device=None):
        self.size, self.step, self.sigma = size, step, sigma
        self.grid = (math.ceil(size[0] / step), math.ceil(size[1] / step))
        self.radius = 1 + math.ceil(sigma / step)
        res = max(1, step // 2)
        self.lattice = (math.ceil(size[0] / res), math.ceil(size[1] / res))
        offsets = torch.arange(-self.radius, self.radius + 1, device=device, dtype=torch.float32)
        axes = []
        for n_out in self.lattice:
            pos = (torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) * res - 0.5  # block centres, px
            cell = (pos + 0.5).div(step).floor().long()  # the grid cell each centre falls in
            centre = (cell[None, :] + offsets[:, None] + 0.5) * step - 0.5  # R1 x n_out: nearby grid points, px
            axes.append((pos[None, :] - centre, cell))
        (dy, self.cell_y), (dx, self.cell_x) = axes
        d = (dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2).sqrt()  # R1 x R1 x h x w
        self.weight = torch.exp(-2 * (d / sigma - 0.5).clamp_min(0) ** 2).flatten(0, 1)  # R x h x w

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """params: n x gh x gw in [0, 1] -> masks n x H x W in [0, 1]."""
        n = len(params)
        k = 2 * self.radius + 1
        near = F.unfold(params[:, None], k, padding=self.radius).view(n, k * k, *self.grid)  # zero beyond the grid
        v = self.weight * near[:, :, self.cell_y][:, :, :, self.cell_x]  # n x R x h x w
        m = (v * torch.softmax(COLDNESS * v, dim=1)).sum(1, keepdim=True)
        if self.lattice != tuple(self.size):
            m = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False)
        return m[:, 0].clamp(0, 1)


#: Mask values are ranked at this resolution (ties broken by pixel index), see ``area_penalty``.
RANK_QUANTUM = 1e-4


def area_penalty(masks: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """mean((sort(m) - r_a)^2) per mask: r_a has floor(N (1 - a)) zeros, then ones. masks n x H x W, areas n.

    The ranking uses the values rounded to ``RANK_QUANTUM`` with ties kept in pixel order (a
    stable sort of the rounded values; the penalty reads the exact values in that order). The
    masks start all ones, so at first the ranking is nothing but tie-breaking; float noise of
    1e-7 (convolutions pick different kernels for different batch sizes) then decided which
    pixels got the kept area and the same image's map differed by up to 1.0 between batches.
    Rounded ranks move only when a value crosses a quantum boundary: maps agree within 1e-6.
    """
    flat = masks.flatten(1)
    n_pix = flat.shape[1]
    order = torch.sort((flat.detach() / RANK_QUANTUM).round(), dim=1, stable=True).indices
    ones_from = (n_pix * (1 - areas)).long()  # truncation, as int() in the reference
    ref = (torch.arange(n_pix, device=masks.device)[None, :] >= ones_from[:, None]).to(flat.dtype)
    return ((flat.gather(1, order) - ref) ** 2).mean(1)


@register_method("extremal")
class ExtremalPerturbation(SaliencyMethod):
    """Fong et al. 2019 preserve-game extremal perturbation (module docstring); mean of the area masks."""

    capabilities = Capabilities(needs_gradients=True, classifier_dependent=True, stochastic=True, family="perturb")
    normalization = "none"  # the masks are in [0, 1] by construction
    # Not part of the default run: at 64x64 it costs `steps` forward + backward passes per image,
    # 73x Grad-CAM's time for one 64-image batch on zoo:resnet (same process, 2 CPU threads).
    default_selected = False
    description = ("extremal perturbation (Fong et al. 2019): smooth blur-preserving mask of a target area, Adam-optimised "
                   "(not in the default run: steps x areas forward+backward passes per image)")

    @dataclass(frozen=True)
    class Params:
        # generic defaults = the 64x64 synthetic setting; beyond 96 px defaults_for gives the reference's
        areas: tuple[float, ...] = (0.2,)  # target areas (fractions of the image); the map averages their masks
        steps: int = 40
        lr: float = 0.1
        step: int = 4  # mask grid pitch, px
        sigma: float = 8.0  # mask bump size, px
        max_blur: float = 6.0  # blur sigma of a fully perturbed pixel, px
        levels: int = 8
        area_weight: float = 30.0
        jitter: bool = False  # seeded random horizontal flips at each step

        def __post_init__(self):
            areas = self.areas
            if isinstance(areas, (int, float)) and not isinstance(areas, bool):
                areas = (float(areas),)
            if not isinstance(areas, (list, tuple)) or not areas or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < 1 for a in areas):
                raise ValueError(f"areas={self.areas!r}: expected one or more fractions of the image in (0, 1), e.g. [0.1, 0.2]")
            object.__setattr__(self, "areas", tuple(float(a) for a in areas))
            for key in ("steps", "step", "levels"):
                if getattr(self, key) < (2 if key == "levels" else 1):
                    raise ValueError(f"{key}={getattr(self, key)}: expected an integer >= {2 if key == 'levels' else 1}")
            for key in ("lr", "sigma", "max_blur", "area_weight"):
                if not getattr(self, key) > 0:
                    raise ValueError(f"{key}={getattr(self, key)}: expected a positive number")

    @classmethod
    def defaults_for(cls, image_size):
        """Up to 96 px (the 64x64 synthetic set, objects 5-50% of the image) the ``Params`` defaults:
        one area of 0.2, 40 Adam steps at lr 0.1, a 4 px grid with 8 px bumps, blur up to sigma 6
        (TorchRay's 20 at 224 px, scaled), area weight 30, no flip jitter (the zoo classifiers never
        saw flipped images and several synthetic shapes are chiral). Measured on zoo:resnet, 24 val
        images: share of the map inside the object 45% (area 0.2, weight 30) vs 41% (areas 0.1 + 0.3,
        twice the cost) and 37% / 33% with the reference's weight 300, which outweighs the class
        score's gradient from the first step and freezes the mask wherever the sort's tie order
        put the kept area. Beyond 96 px the reference's ImageNet setting: area 0.1, 800 steps, grid
        7 px, bumps 21 px, blur 20, weight 300, flip jitter (not measured here: no ImageNet data)."""
        if min(image_size) <= 96:
            return {}
        return {"areas": (0.1,), "steps": 800, "lr": 0.05, "step": 7, "sigma": 21.0, "max_blur": 20.0, "area_weight": 300.0, "jitter": True}

    def check_image_size(self, image_size):
        h, w = image_size
        if self.params.step >= min(h, w):
            raise UsageError(f"method 'extremal': step={self.params.step} does not fit the {h}x{w} images; expected a grid pitch below {min(h, w)} px")

    def cost(self):
        n = float(self.params.steps * len(self.params.areas))
        return (n, n)

    def attribute(self, classifier, images, targets, seeds):
        prm = self.params
        b, _, h, w = images.shape
        k = len(prm.areas)
        gen = SmoothMask((h, w), prm.step, prm.sigma, device=images.device)
        with torch.no_grad():
            pyramid = blur_pyramid(images.float(), prm.levels, prm.max_blur)
        img = torch.arange(b, device=images.device).repeat_interleave(k)  # mask j belongs to image j // k
        areas = torch.tensor(prm.areas, device=images.device).repeat(b)
        pyr = pyramid[img]
        # all ones (the whole image kept), as the reference starts: the mask shrinks to its area
        params = torch.ones(b * k, *gen.grid, device=images.device, requires_grad=True)
        opt = torch.optim.Adam([params], lr=prm.lr)
        for t in range(prm.steps):
            weight = prm.area_weight * AREA_WEIGHT_GROWTH ** (t / max(prm.steps - 1, 1))
            masks = gen(params)
            x = perturb(pyr, masks)
            if prm.jitter:
                coin = uniform(derive_seeds(seeds[img], torch.full_like(img, t)), (1,))[:, 0] < 0.5
                x = torch.where(coin[:, None, None, None], x.flip(-1), x)
            reward = target_scores(classifier(x.to(images.dtype)), targets[img])
            loss = (weight * area_penalty(masks, areas) - reward).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                params.clamp_(0, 1)
        with torch.no_grad():
            return gen(params).view(b, k, h, w).mean(1)
