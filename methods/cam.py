"""Class-activation maps from the classifier's last feature map.

``gradcam`` (Selvaraju et al.): weights = spatial mean of dS_c/dA, map = ReLU(sum_k w_k A_k),
computed on the feature map ``Classifier.forward_with_features`` exposes (CNN output of
``forward_features``, or a ViT's last-block input tokens reshaped to the patch grid).
"""

from __future__ import annotations

import torch

from salbench.methods.base import Capabilities, SaliencyMethod, register_method, target_scores


def gradcam_maps(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at feature resolution, B x h x w (before ReLU)."""
    logits, feats = classifier.forward_with_features(images)
    (grads,) = torch.autograd.grad(target_scores(logits, targets).sum(), feats)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return (weights * feats).sum(1)


@register_method("gradcam")
class GradCAM(SaliencyMethod):
    capabilities = Capabilities(needs_gradients=True, needs_feature_layer=True, family="cam")
    description = "Grad-CAM: ReLU of the gradient-weighted last feature map"

    def attribute(self, classifier, images, targets, seeds):
        return gradcam_maps(classifier, images, targets).clamp_min(0)
