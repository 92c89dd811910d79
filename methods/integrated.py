"""Integrated Gradients (Sundararajan et al. 2017).

    IG(x) = (x - x') * integral_0^1 dS_c(x' + a (x - x')) / dx da

in pixel space, with the integral replaced by a quadrature rule of ``steps`` nodes a_k and
weights w_k. The rules are captum's (``method``): ``gausslegendre`` (captum's default, and ours:
Gauss-Legendre nodes and weights on [0, 1]), ``riemann_left`` / ``_right`` / ``_middle`` (equal
weights 1/n at the left ends, right ends or midpoints of n equal intervals) and
``riemann_trapezoid`` (n nodes from 0 to 1, weights 1/(n-1), end weights halved). One deliberate
difference: captum's trapezoid weights are 1/n (end ones halved), which sum to 1 - 1/n, so its
trapezoid attributions are ours times (n-1)/n (the same map after normalisation, but a
completeness gap of at least 1/n); ours integrate a constant exactly.

Baselines x' (``baseline``): ``black`` (all zero pixels, the usual choice), ``blur`` (the image
under a Gaussian blur of std ``blur_sigma`` times the shorter side; Sturmfels et al. 2020) and
``noise`` (uniform noise in [0,1], drawn per image from its seed: batch-invariant).

The signed attribution is reduced to a map as |sum over channels| (``gradient.py``). All
(image, step) copies of a batch are packed into passes of at most ``internal_batch`` copies (as
captum's ``internal_batch_size``): ``steps`` forward and backward passes per image, in
ceil(B * steps / internal_batch) calls.

Completeness diagnostic: with two more (gradient-free) forward passes per image, S(x) and S(x'),
the method reports ``completeness_gap`` = |sum IG - (S(x) - S(x'))| / |S(x) - S(x')| per image
(captum's convergence delta, made relative; NaN where S(x) = S(x')): how far the quadrature is from the
completeness axiom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from salbench.methods.base import register_method, target_scores
from salbench.methods.gradient import GradientAttribution, reduce_channels
from salbench.rng import uniform

QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINES = ("black", "blur", "noise")


def quadrature(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes a_k in [0, 1], weights w_k), float64, as captum's ``approximation_parameters``."""
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1 + x), 0.5 * w
    k = np.arange(n, dtype=np.float64)
    weights = np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":  # n nodes, n - 1 intervals (captum: weights 1/n, see the module docstring)
        weights = np.full(n, 1.0 / (n - 1))
        weights[0] /= 2
        weights[-1] /= 2
        return k / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (k + offset) / n, weights


def baseline_images(images: torch.Tensor, seeds: torch.Tensor, kind: str, blur_sigma: float) -> torch.Tensor:
    """The IG baseline x' of each image (module docstring)."""
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "noise":
        return uniform(seeds, tuple(images.shape[1:])).to(images.dtype)
    from kornia.filters import gaussian_blur2d

    h, w = images.shape[-2:]
    sigma = blur_sigma * min(h, w)
    k = min(2 * math.ceil(3 * sigma) + 1, 2 * min(h, w) - 1)  # reflect padding must stay inside the image
    k = k if k % 2 else k - 1
    return gaussian_blur2d(images, (k, k), (sigma, sigma), border_type="reflect")


@register_method("integrated_gradients")
class IntegratedGradients(GradientAttribution):
    """Not in the default run (``default_selected = False``): 16 steps cost ~38x Grad-CAM's time per
    batch on zoo:resnet at 64x64; run it by name."""

    reduction = "abs_sum"
    default_selected = False
    description = "Integrated Gradients: |sum over channels| of (x - x') x path-averaged gradient; not in the default run (16 steps: ~38x Grad-CAM's time)"

    @dataclass(frozen=True)
    class Params:
        steps: int = 50  # captum's default; per-dataset defaults: defaults_for
        baseline: str = "black"  # "black" | "blur" | "noise"
        method: str = "gausslegendre"  # quadrature rule, captum's names
        blur_sigma: float = 0.1  # blur baseline: Gaussian std as a fraction of the shorter image side
        internal_batch: int = 256  # (image, step) copies per forward/backward pass

        def __post_init__(self):
            if self.baseline not in BASELINES:
                raise ValueError(f"baseline={self.baseline!r}: expected one of {', '.join(BASELINES)}")
            if self.method not in QUADRATURES:
                raise ValueError(f"method={self.method!r}: expected one of {', '.join(QUADRATURES)}")
            least = 2 if self.method == "riemann_trapezoid" else 1
            if self.steps < least:
                raise ValueError(f"steps={self.steps}: expected at least {least} for {self.method}")
            if self.blur_sigma <= 0:
                raise ValueError(f"blur_sigma={self.blur_sigma}: expected a positive fraction of the image side")
            if self.internal_batch < 1:
                raise ValueError(f"internal_batch={self.internal_batch}: expected a positive number of copies per pass")

    @classmethod
    def defaults_for(cls, image_size):
        """Up to 96 px (the 64x64 synthetic set): 16 Gauss-Legendre steps (16 forward + backward
        passes per image; Gauss-Legendre converges fast on smooth paths); beyond, captum's 50."""
        return {"steps": 16} if min(image_size) <= 96 else {}

    def cost(self):
        """``steps`` forward and backward passes, plus S(x) and S(x') for the completeness gap."""
        return (float(self.params.steps + 2), float(self.params.steps))

    def attributions(self, classifier, images, targets, seeds):
        return self.integrate(classifier, images, targets, seeds)[0]

    def attribute_with_diagnostics(self, classifier, images, targets, seeds):
        attr, baseline = self.integrate(classifier, images, targets, seeds)
        # with gradients enabled the classifier runs the unfolded model that IG differentiated (its
        # BN-folded scorer differs by rounding); nothing requires grad here, so no graph is recorded
        with torch.enable_grad():
            both = target_scores(classifier(torch.cat([images, baseline])), targets.repeat(2)).detach().float()
        delta = both[: len(images)] - both[len(images):]
        span = delta.double()
        gap = (attr.flatten(1).double().sum(1) - span).abs() / span.abs().clamp_min(torch.finfo(torch.float64).tiny)
        gap = torch.where(span != 0, gap, torch.full_like(gap, float("nan")))  # nothing to explain: undefined
        return reduce_channels(attr, self.reduction), {"completeness_gap": gap.float()}

    def integrate(self, classifier, images, targets, seeds) -> tuple[torch.Tensor, torch.Tensor]:
        """(IG attributions B x 3 x H x W, the baselines)."""
        p = self.params
        b, n = len(images), p.steps
        baseline = baseline_images(images, seeds, p.baseline, p.blur_sigma)
        nodes, weights = (torch.as_tensor(v, dtype=torch.float32, device=images.device) for v in quadrature(p.method, n))
        diff = images - baseline
        total = torch.zeros_like(images, dtype=torch.float32)
        for start in range(0, b * n, p.internal_batch):
            idx = torch.arange(start, min(start + p.internal_batch, b * n), device=images.device)
            img, k = idx // n, idx % n
            x = (baseline[img] + nodes[k].view(-1, 1, 1, 1) * diff[img]).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(target_scores(classifier(x), targets[img]).sum(), x)
            total.index_add_(0, img, grad.float() * weights[k].view(-1, 1, 1, 1))
        return diff * total, baseline
