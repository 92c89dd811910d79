"""Gradient-based maps (Simonyan et al. 2013).

``gradient``: M_ij = max_c |dS_c / dI_cij| on the unnormalised class score S_c, taken with
respect to the pixel-space image (the harness masks pixels, so this is the input it perturbs).
One forward and one backward pass per image, the whole batch at once: image i's score depends
only on image i (eval mode), so the gradient of the summed scores is each image's own gradient.
"""

from __future__ import annotations

import torch

from salbench.methods.base import Capabilities, SaliencyMethod, register_method, target_scores


def input_gradient(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """dS_target / dx for a batch, B x 3 x H x W."""
    x = images.detach().requires_grad_(True)
    scores = target_scores(classifier(x), targets)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


@register_method("gradient")
class VanillaGradient(SaliencyMethod):
    capabilities = Capabilities(needs_gradients=True, classifier_dependent=True, family="gradient")
    description = "Simonyan et al.: max over colour channels of |dS_c/dI|"

    def attribute(self, classifier, images, targets, seeds):
        return input_gradient(classifier, images, targets).abs().amax(1)
