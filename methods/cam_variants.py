"""Grad-CAM's descendants, on the same feature map as ``gradcam`` (``Classifier.forward_with_features``:
a CNN's last feature map, a ViT's patch tokens on their grid, Swin's NHWC output).

Each is defined as pytorch-grad-cam 1.5 computes it (our reference implementation; its epsilons
are kept so the maps agree), with A the feature map, G = dS_c/dA, S_c the class logit, sums over
channels k and positions (i, j), and the map ReLU'd, upsampled bilinearly and min-max normalised
like ``gradcam``:

* ``gradcam_pp`` (Chattopadhyay et al. 2018, eq. 19 with the exponential trick):
  a_kij = G^2 / (2 G^2 + sum_ij A_k * G^3 + 1e-6), 0 where G = 0; w_k = sum_ij a_kij ReLU(G_kij)
* ``xgradcam`` (Fu et al. 2020): w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)
* ``hirescam`` (Draelos & Carin 2020): sum_k G_k * A_k, element-wise (no spatial averaging);
  NotApplicable on class-token ViTs, where it is identically zero (see the class)
* ``layercam`` (Jiang et al. 2021): sum_k ReLU(G_k) * A_k
* ``scorecam`` (Wang et al. 2020): no gradient. Each channel A_k is upsampled to the image
  (bilinear, corners aligned as pytorch-grad-cam's ``UpsamplingBilinear2d``), min-max scaled to
  [0,1] (+1e-8), and multiplies the pixel-space image; w = softmax over channels of the class
  logits of those C masked images (pytorch-grad-cam's form: the paper's baseline score cancels in
  the softmax); map = sum_k w_k A_k. C forward passes per image, packed into passes of at most
  ``chunk`` (image, channel) copies.
* ``eigencam`` (Muhammad & Yeasin 2020): no gradient, no class: the projection of the centred
  activations (positions x channels) on their first right singular vector. The SVD's sign is
  arbitrary (pytorch-grad-cam's ``EigenCAM`` keeps whatever LAPACK returns); ours is fixed by the
  rule of pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` (Seg-Eigen-CAM eq. 13):
  the projection is negated when |min| > |max|, so its strongest response is positive.

Where the head pools before anything else (GAP + linear, or GAP + norm + linear: ResNet,
EfficientNet, ConvNeXt, and a ViT whose head averages the tokens, as the zoo's) G is constant over
positions, so ``hirescam`` and ``xgradcam`` give exactly Grad-CAM's map (Draelos & Carin note this
for HiResCAM); they differ where the features reach the head otherwise (a class-token ViT's last
block input: XGrad-CAM differs there, HiResCAM is not applicable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from salbench.errors import NotApplicable
from salbench.methods.base import Capabilities, SaliencyMethod, register_method
from salbench.methods.cam import GradientCAM, channel_weighted


@register_method("gradcam_pp")
class GradCAMPlusPlus(GradientCAM):
    description = "Grad-CAM++: channel weights from positive gradients with per-position coefficients"

    @staticmethod
    def cam(feats, grads):
        g2 = grads * grads
        alpha = g2 / (2 * g2 + feats.sum(dim=(2, 3), keepdim=True) * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return channel_weighted((alpha * grads.clamp_min(0)).sum(dim=(2, 3)), feats)


@register_method("xgradcam")
class XGradCAM(GradientCAM):
    description = "XGrad-CAM: channel weights = activation-weighted sum of gradients"

    @staticmethod
    def cam(feats, grads):
        return channel_weighted((grads * feats / (feats.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3)), feats)


@register_method("hirescam")
class HiResCAM(GradientCAM):
    """NotApplicable on a class-token ViT, whose CAM features are the last block's input: those
    patch tokens reach the class score only through the block's LayerNorm, which is invariant to
    scaling each token, so sum_k G_k A_k (the derivative along A) is exactly 0 at every position and
    the map would be rounding noise. Pooled-token ViTs (the zoo's) and CNNs are fine."""

    description = "HiResCAM: element-wise gradient x activation summed over channels"

    def check(self, classifier):
        super().check(classifier)
        if classifier.features_spec().kind == "tokens":
            raise NotApplicable(f"{classifier.name}: HiResCAM is identically zero on a class-token ViT's features (the last block's input "
                                "reaches the class token only through a scale-invariant LayerNorm, so sum_k dS/dA_k A_k = 0)")

    @staticmethod
    def cam(feats, grads):
        return (grads * feats).sum(1)


@register_method("layercam")
class LayerCAM(GradientCAM):
    description = "LayerCAM: positive gradient x activation summed over channels"

    @staticmethod
    def cam(feats, grads):
        return (grads.clamp_min(0) * feats).sum(1)


class _ActivationCAM(SaliencyMethod):
    """A CAM from the feature map alone (no gradient)."""

    normalization = "minmax"
    capabilities = Capabilities(needs_gradients=False, needs_feature_layer=True, family="cam")

    @staticmethod
    def features(classifier, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return classifier.forward_with_features(images)[1].detach()


@register_method("eigencam")
class EigenCAM(_ActivationCAM):
    description = "Eigen-CAM: first principal component of the feature map (class-agnostic; sign: strongest response positive)"

    def cost(self):
        return (1.0, 0.0)

    def attribute(self, classifier, images, targets, seeds):
        feats = self.features(classifier, images)
        b, c, h, w = feats.shape
        x = feats.flatten(2).transpose(1, 2)  # B x hw x C
        x = x - x.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        proj = (x @ vh[:, 0, :, None]).view(b, h, w)
        flat = proj.flatten(1)
        flip = flat.amin(1).abs() > flat.amax(1).abs()
        return torch.where(flip.view(-1, 1, 1), -proj, proj).clamp_min(0)


@register_method("scorecam")
class ScoreCAM(_ActivationCAM):
    """Not in the default run (``default_selected = False``): one forward pass per feature channel
    (96 on zoo:resnet) costs ~84x Grad-CAM's time per batch at 64x64; run it by name."""

    default_selected = False
    description = "Score-CAM: channels weighted by the softmax of the class logit of the image masked by each; not in the default run (C passes: ~84x Grad-CAM's time)"

    @dataclass(frozen=True)
    class Params:
        chunk: int = 256  # masked (image, channel) copies per forward pass; per-dataset default: defaults_for

        def __post_init__(self):
            if self.chunk < 1:
                raise ValueError(f"chunk={self.chunk}: expected a positive number of images per forward pass")

    @classmethod
    def defaults_for(cls, image_size):
        """256 masked copies per pass up to 96 px (64x64: 12 MB of input); 32 beyond (224 px: 19 MB)."""
        return {} if min(image_size) <= 96 else {"chunk": 32}

    def cost(self, channels: int = 96):
        """One forward pass to the features plus one per feature channel (96: zoo:resnet)."""
        return (float(channels + 1), 0.0)

    @torch.no_grad()
    def attribute(self, classifier, images, targets, seeds):
        feats = self.features(classifier, images)
        b, c = feats.shape[:2]
        scores = images.new_empty(b * c, dtype=torch.float32)
        for start in range(0, b * c, self.params.chunk):
            idx = torch.arange(start, min(start + self.params.chunk, b * c), device=images.device)
            img, k = idx // c, idx % c
            up = F.interpolate(feats[img, k][:, None], size=images.shape[-2:], mode="bilinear", align_corners=True)
            lo = up.flatten(1).amin(1).view(-1, 1, 1, 1)
            hi = up.flatten(1).amax(1).view(-1, 1, 1, 1)
            masks = (up - lo) / (hi - lo + 1e-8)
            logits = classifier(images[img] * masks.to(images.dtype))
            scores[idx] = logits.float().gather(1, targets[img].view(-1, 1)).squeeze(1)
        weights = scores.view(b, c).softmax(1)
        return channel_weighted(weights, feats).clamp_min(0)
