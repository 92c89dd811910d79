"""SmoothGrad (Smilkov et al. 2017), SmoothGrad^2 and VarGrad (Adebayo et al. 2018) over any
gradient-family method.

The wrapped method (``base``, a ``GradientAttribution``: ``gradient``, ``input_x_gradient``,
``integrated_gradients``, ``guided_backprop``, ``deconvnet``) is run on ``samples`` noisy copies
x + e_k, e_k ~ N(0, s^2) with s = ``noise`` x (max(x) - min(x)) per image (the paper's noise
level), and its *signed* per-channel attributions a_k are combined before the base's own channel
reduction (``gradient.py``), as in the paper and captum's ``NoiseTunnel``:

* ``smoothgrad``:    mean_k a_k
* ``smoothgrad_sq``: mean_k a_k^2
* ``vargrad``:       mean_k a_k^2 - (mean_k a_k)^2   (the variance, as captum computes it)

With ``noise=0`` SmoothGrad is the base method itself. The noise of sample k of an image is drawn
from the image's seed and k alone (counter-based normals: Box-Muller on ``salbench.rng.uniform``),
so a map does not depend on the batch. Noisy copies are not clipped to [0,1] (neither the paper
nor captum clips). Copies of all images are packed into calls of at most ``chunk`` copies to the
base method. The base runs with its own parameter defaults (e.g. 50 IG steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from salbench.errors import close_matches
from salbench.methods.base import METHODS, Capabilities, SaliencyMethod, create_method, register_method
from salbench.methods.gradient import GradientAttribution, reduce_channels
from salbench.rng import derive_seeds, uniform

STATISTICS = ("mean", "mean_sq", "var")


def gaussian_noise(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals, one B x *shape block per seed (Box-Muller on counter-based uniforms)."""
    n = math.prod(shape)
    u = uniform(seeds, (2, n))
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u in (0, 1]: finite
    return (radius * torch.cos(2 * math.pi * u[:, 1])).view(len(seeds), *shape)


def noise_seeds(seeds: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One seed per (image seed, sample index) pair, elementwise."""
    return derive_seeds(seeds, sample)


def gradient_methods() -> list[str]:
    return [n for n in METHODS.names() if issubclass(METHODS.get(n), GradientAttribution)]


class _NoiseTunnel(SaliencyMethod):
    """Not in the default run (``default_selected = False``): 8 samples of the gradient cost 25-32x
    Grad-CAM's time per batch on zoo:resnet at 64x64; run them by name."""

    statistic: ClassVar[str] = "mean"
    capabilities = Capabilities(needs_gradients=True, classifier_dependent=True, stochastic=True, family="gradient")

    @dataclass(frozen=True)
    class Params:
        base: str = "gradient"  # a gradient-family method
        noise: float = 0.15  # std as a fraction of the image's value range (the paper's 10-20%)
        samples: int = 50  # the paper's; per-dataset defaults: defaults_for
        chunk: int = 64  # noisy copies per call of the base method

        def __post_init__(self):
            if self.base not in gradient_methods():
                if self.base not in METHODS:
                    raise ValueError(f"base={self.base!r}: no such method{close_matches(self.base, gradient_methods())}")
                raise ValueError(f"base={self.base!r}: expected a gradient-family method with per-pixel attributions "
                                 f"({', '.join(gradient_methods())})")
            if not 0 <= self.noise:
                raise ValueError(f"noise={self.noise}: expected a non-negative fraction of the image's value range")
            if self.samples < 1:
                raise ValueError(f"samples={self.samples}: expected a positive number of noisy copies")
            if self.chunk < 1:
                raise ValueError(f"chunk={self.chunk}: expected a positive number of copies per call")

    def __init__(self, **params):
        super().__init__(**params)
        self.base = create_method(self.params.base)
        if not isinstance(self.base, GradientAttribution):
            raise TypeError(f"{self.params.base} is not a GradientAttribution")

    @classmethod
    def defaults_for(cls, image_size):
        """Up to 96 px (the 64x64 synthetic set): 8 samples, which keeps the default run within its
        budget (8 forward + backward passes per image with the gradient); beyond, the paper's 50."""
        return {"samples": 8} if min(image_size) <= 96 else {}

    def cost(self):
        fwd, bwd = self.base.cost()
        return (self.params.samples * fwd, self.params.samples * bwd)

    def check(self, classifier):
        self.base.check(classifier)

    def attribute(self, classifier, images, targets, seeds):
        p = self.params
        b, n = len(images), p.samples
        shape = tuple(images.shape[1:])
        sigma = p.noise * (images.flatten(1).amax(1) - images.flatten(1).amin(1))
        total = torch.zeros_like(images, dtype=torch.float32)
        total_sq = torch.zeros_like(total) if self.statistic != "mean" else None
        for start in range(0, b * n, p.chunk):
            idx = torch.arange(start, min(start + p.chunk, b * n), device=images.device)
            img, k = idx // n, idx % n
            noisy = images[img] + sigma[img].view(-1, 1, 1, 1) * gaussian_noise(noise_seeds(seeds[img], k), shape).to(images.dtype)
            a = self.base.attributions(classifier, noisy, targets[img], seeds[img]).float()
            total.index_add_(0, img, a)
            if total_sq is not None:
                total_sq.index_add_(0, img, a * a)
        mean = total / n
        if self.statistic == "mean":
            stat = mean
        elif self.statistic == "mean_sq":
            stat = total_sq / n
        else:
            stat = total_sq / n - mean * mean
        return reduce_channels(stat, self.base.reduction)


@register_method("smoothgrad")
class SmoothGrad(_NoiseTunnel):
    statistic = "mean"
    default_selected = False
    description = "SmoothGrad: the base method's attributions averaged over Gaussian-noised copies; not in the default run (8 samples: ~30x Grad-CAM's time)"


@register_method("smoothgrad_sq")
class SmoothGradSquared(_NoiseTunnel):
    statistic = "mean_sq"
    default_selected = False
    description = "SmoothGrad^2: mean of the squared attributions over noisy copies; not in the default run (~30x Grad-CAM's time)"


@register_method("vargrad")
class VarGrad(_NoiseTunnel):
    statistic = "var"
    default_selected = False
    description = "VarGrad: variance of the attributions over noisy copies; not in the default run (~30x Grad-CAM's time)"
