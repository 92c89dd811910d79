"""Gradient-based maps: the vanilla gradient (Simonyan et al. 2013) and Input x Gradient.

Every method here takes gradients of the unnormalised class score S_c with respect to the
*pixel-space* image x in [0,1] (the harness masks pixels, so that is the input it perturbs; the
classifier's normalisation is part of the differentiated function). One forward and one backward
pass per image, the whole batch at once: image i's score depends only on image i (eval mode), so
the gradient of the summed scores is each image's own gradient.

A gradient-family method is a ``GradientAttribution``: it computes a per-pixel, per-channel
attribution ``a`` (B x 3 x H x W) and reduces it over the colour channels to a non-negative map.
Two reductions, chosen by what the attribution means:

* ``max_abs``: max_c |a_c| -- Simonyan et al.'s rule for the gradient (and the modified
  backward rules in ``guided.py``);
* ``abs_sum``: |sum_c a_c| -- for *signed* attributions whose channel sum is meaningful (Input x
  Gradient, Integrated Gradients: their sum over all pixels and channels is the score difference
  the completeness axiom speaks of). This is captum's visualisation convention
  (``visualize_image_attr``: sum over channels, then ``sign="absolute_value"``). Evidence for and
  against the class both count as salient; the sign is dropped, not clipped.

The split lets ``smoothgrad.py`` average the (signed) attributions of any such method over noisy
copies before reducing them, as Smilkov et al. and captum's ``NoiseTunnel`` do.

``input_x_gradient`` (Shrikumar et al. 2016): a = x * dS_c/dx, in pixel space (so a black pixel
has zero attribution; captum's ``InputXGradient`` on the pixel-space model computes the same).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from salbench.methods.base import Capabilities, SaliencyMethod, register_method, target_scores

REDUCTIONS = ("max_abs", "abs_sum")


def input_gradient(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """dS_target / dx for a batch, B x 3 x H x W."""
    x = images.detach().requires_grad_(True)
    scores = target_scores(classifier(x), targets)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


def reduce_channels(attr: torch.Tensor, reduction: str) -> torch.Tensor:
    """B x C x H x W attributions -> B x H x W non-negative map (module docstring)."""
    if reduction == "max_abs":
        return attr.abs().amax(1)
    if reduction == "abs_sum":
        return attr.sum(1).abs()
    raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")


class GradientAttribution(SaliencyMethod):
    """A gradient-family method: per-channel ``attributions`` reduced by ``reduction``."""

    reduction: ClassVar[str] = "max_abs"
    capabilities = Capabilities(needs_gradients=True, classifier_dependent=True, family="gradient")

    def attributions(self, classifier, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Signed attributions, B x 3 x H x W, for the images' pixels."""
        raise NotImplementedError

    def attribute(self, classifier, images, targets, seeds):
        return reduce_channels(self.attributions(classifier, images, targets, seeds), self.reduction)


@register_method("gradient")
class VanillaGradient(GradientAttribution):
    description = "Simonyan et al.: max over colour channels of |dS_c/dI|"

    def attributions(self, classifier, images, targets, seeds):
        return input_gradient(classifier, images, targets)


@register_method("input_x_gradient")
class InputXGradient(GradientAttribution):
    reduction = "abs_sum"
    description = "Input x Gradient: |sum over channels of x * dS_c/dx| (pixel space)"

    def attributions(self, classifier, images, targets, seeds):
        return images * input_gradient(classifier, images, targets)
