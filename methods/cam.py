"""Class-activation maps from the classifier's last feature map.

``gradcam`` (Selvaraju et al.): weights = spatial mean of dS_c/dA, map = ReLU(sum_k w_k A_k),
computed on the feature map ``Classifier.forward_with_features`` exposes (CNN output of
``forward_features``, or a ViT's last-block input tokens reshaped to the patch grid).

``GradientCAM`` is the shared shape of the gradient-weighted CAMs: one forward pass to the
feature map A and one backward pass to it (``features_and_gradients``), then a subclass's ``cam``
combines A and G = dS_c/dA into the map before the ReLU; the variants in ``cam_variants.py`` are
such subclasses.

``cam`` (Zhou et al.): ReLU(sum_k W[c,k] A_k) with W the weights of a GAP + linear head;
NotApplicable (with the reason) for any other head. Guided Grad-CAM lives in ``guided.py``.
"""

from __future__ import annotations

import weakref

import torch

from salbench.errors import NotApplicable
from salbench.methods.base import Capabilities, SaliencyMethod, register_method, target_scores


def features_and_gradients(classifier, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, dS_target/dA): the CAM feature map and its gradient, both B x C x h x w float32."""
    logits, feats = classifier.forward_with_features(images)
    (grads,) = torch.autograd.grad(target_scores(logits, targets).sum(), feats)
    return feats.detach(), grads


def channel_weighted(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """sum_k w_k A_k for per-image channel weights B x C: B x h x w."""
    return torch.einsum("bc,bchw->bhw", weights, feats)


def gradcam_maps(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at feature resolution, B x h x w (before ReLU)."""
    feats, grads = features_and_gradients(classifier, images, targets)
    return GradCAM.cam(feats, grads)


# Both CAM maps are min-max normalised per image, as pytorch-grad-cam scales them: the ReLU'd map
# of a network whose last features see the whole image has a broad positive floor, and under the
# max rule that floor made the mean-area binarisation keep about 40% of the image (boxes twice the
# object's; Grad-CAM LE 56% vs 45% with min-max on zoo:resnet, 256 synthetic val images).


class GradientCAM(SaliencyMethod):
    """ReLU(cam(A, dS_c/dA)) on the classifier's CAM feature map: one forward and one backward pass
    per image (the backward stops at the feature map). Subclasses override ``cam``."""

    normalization = "minmax"
    capabilities = Capabilities(needs_gradients=True, needs_feature_layer=True, family="cam")

    @staticmethod
    def cam(feats: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The map before the ReLU, B x h x w, from A and G (both B x C x h x w)."""
        raise NotImplementedError

    def attribute(self, classifier, images, targets, seeds):
        return self.cam(*features_and_gradients(classifier, images, targets)).clamp_min(0)


@register_method("gradcam")
class GradCAM(GradientCAM):
    description = "Grad-CAM: ReLU of the gradient-weighted last feature map"

    @staticmethod
    def cam(feats, grads):
        return channel_weighted(grads.mean(dim=(2, 3)), feats)


# --------------------------------------------------------------------------------------- CAM
_HEAD_CHECKS: "weakref.WeakKeyDictionary[object, str | None]" = weakref.WeakKeyDictionary()


def verify_gap_linear_head(classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of the classifier's GAP + linear head, verified numerically; NotApplicable otherwise.

    ``Classifier.linear_head`` checks the head's structure; this also checks, once per classifier
    on a fixed random probe, that the logits really are ``W @ mean_hw(A) + b`` for the feature map
    ``A`` that CAM weights. That catches heads the structural check cannot see, e.g. MobileNetV3's
    ``conv_head`` + activation applied *after* pooling, or a norm layer between pool and linear.
    """
    weight, bias = classifier.linear_head()
    if classifier not in _HEAD_CHECKS:
        _, h, w = classifier.preprocess.input_size
        gen = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, h, w, generator=gen).to(classifier.device)
        logits, feats = classifier.forward_with_features(probe)
        if feats.shape[1] != weight.shape[1]:
            _HEAD_CHECKS[classifier] = (
                f"{classifier.name}: CAM needs a GAP + linear head on the last feature map, but the linear layer "
                f"reads {weight.shape[1]} features and the feature map has {feats.shape[1]} channels (layers after pooling)"
            )
        else:
            with torch.no_grad():
                pooled = feats.float().mean(dim=(2, 3)) @ weight.t() + bias
            logits = logits.detach()
            tol = 1e-3 if classifier.amp_dtype == torch.float32 else 5e-2
            err = (pooled - logits).abs().max().item()
            scale = max(logits.abs().max().item(), 1.0)
            _HEAD_CHECKS[classifier] = None if err <= tol * scale else (
                f"{classifier.name}: CAM needs logits = W . GAP(features) + b, but the head computes something else "
                f"(max deviation {err:.3g} on a probe; e.g. a layer after pooling)"
            )
    reason = _HEAD_CHECKS[classifier]
    if reason is not None:
        raise NotApplicable(reason)
    return weight, bias


@register_method("cam")
class CAM(SaliencyMethod):
    """Zhou et al. 2016: M_c = ReLU(sum_k W[c,k] A_k) for a global-average-pool + linear head.

    No gradient is needed: the map is the head's linear layer applied at every position of the
    last feature map (the bias, spatially constant, is left out as in the paper; the ReLU keeps
    the raw map non-negative; min-max normalised like Grad-CAM). Applicable only where the logits equal
    ``W . GAP(A) + b`` (checked structurally and numerically): ResNets, EfficientNets,
    MobileNetV2, Swin (NHWC features after its final norm); not ViT/DeiT (class-token head),
    ConvNeXt (norm layer in the head) or MobileNetV3 (conv + activation after the pool).
    For such a head CAM equals Grad-CAM up to a positive scale (the Grad-CAM weights are
    W[c] / (h w)), so the two give the same normalised map.
    """

    capabilities = Capabilities(needs_gradients=False, needs_feature_layer=True, family="cam")
    normalization = "minmax"
    description = "CAM: ReLU of the linear head's class weights applied to the last feature map"

    def cost(self):
        return (1.0, 0.0)

    def check(self, classifier):
        super().check(classifier)
        verify_gap_linear_head(classifier)

    def attribute(self, classifier, images, targets, seeds):
        weight, _ = verify_gap_linear_head(classifier)
        _, feats = classifier.forward_with_features(images)
        return torch.einsum("bchw,bc->bhw", feats.detach().float(), weight[targets]).clamp_min(0)
