"""Modified-backward maps: DeconvNet, guided backpropagation, Guided Grad-CAM.

All three take the gradient of the unnormalised class score S_c with respect to the pixel-space
image, like ``gradient``, but with the backward pass of every ReLU replaced (Springenberg et al.
2015; Simonyan et al. 2013, section 4). For a ReLU ``y = max(x, 0)`` with incoming gradient g:

* gradient (plain backprop):  g * [x > 0]
* ``deconvnet`` (Zeiler & Fergus): relu(g) -- the sign of the *backward signal*, ignoring x
* ``guided_backprop``:             relu(g) * [x > 0] -- both masks

The map is M_ij = max over colour channels of |.| of the modified input gradient, exactly as for
``gradient``. Every other layer (conv, linear, pooling, norm, residual sums, sigmoid gates) keeps
its ordinary backward, so on a network with no ReLU the three coincide.

``guided_gradcam`` (Selvaraju et al. 2017): guided backpropagation times the Grad-CAM map (plain
gradients, ``salbench.methods.cam.gradcam_maps``) upsampled bilinearly to the image size. The
paper multiplies every colour channel of the guided-backprop image by the Grad-CAM map; we then
take max over channels of |.| like every other gradient map. Because the upsampled Grad-CAM map is
non-negative, max_c |G_c * L| = L * max_c |G_c|: the channel-wise product and the product of the
max-abs maps are the same map, so the choice does not matter.

Policy for networks whose activations are not ReLU (GELU, SiLU/Swish, Hardswish, Mish, ELU,
LeakyReLU, ...): the DeconvNet and guided rules are defined for rectifiers only, so the rule is
applied to ``nn.ReLU`` and ``nn.ReLU6`` modules (ReLU6, used by MobileNetV2, is a rectifier
clipped at 6: its forward mask is [0 < x < 6]; DeconvNet uses relu(g) for both). A classifier is
*NotApplicable* when

* it has no ReLU/ReLU6 module at all (ViT, DeiT, Swin, ConvNeXt, EfficientNet: GELU/SiLU), or
* it also contains another rectifier-like activation module (GELU, SiLU, Hardswish, ... --
  MobileNetV3, for instance), which the rule would silently skip, or
* a probe forward pass sees a functional activation call outside a ReLU module (``F.relu`` in
  ``forward`` as in timm's NASNet/PNASNet/Xception heads, ``F.gelu``, ``torch.relu``, ...), which no
  module hook can reach.

Sigmoid / Hardsigmoid / Tanh / Softmax are treated as gates (squeeze-excitation, attention), not
rectifiers: they keep their ordinary backward, as in the papers (which only modify ReLUs).
ResNets, VGG, DenseNet, RegNet, MobileNetV2, GhostNet qualify.

Implementation: for the duration of one call, every rectifier module's ``forward`` is replaced
(instance attribute, removed again in a ``finally``) by a custom ``torch.autograd.Function`` with
the same forward values and the modified backward. The module tree, its hooks and the weights are
never touched, in-place ReLUs (timm ResNets) are safe (the replacement is out-of-place), and the
whole batch is done in one forward and one backward pass.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from salbench.errors import NotApplicable
from salbench.methods.base import Capabilities, SaliencyMethod, register_method
from salbench.methods.cam import gradcam_maps
from salbench.methods.gradient import GradientAttribution, input_gradient

RULES = ("gradient", "deconvnet", "guided")

# Activation module classes (by class name, torch's and timm's) that are rectifier substitutes:
# a ReLU-only rule would skip them silently.
_OTHER_ACTIVATIONS = {
    "gelu", "gelutanh", "quickgelu", "silu", "swish", "swishme", "swishjit", "swishauto", "mish", "mishme",
    "mishjit", "mishauto", "hardswish", "hardswishme", "hardswishjit", "hardswishauto", "hardmish", "hardmishme",
    "hardmishjit", "elu", "selu", "celu", "leakyrelu", "prelu", "rrelu", "softplus", "hardtanh", "softsign",
    "tanhshrink", "softshrink", "hardshrink", "threshold", "glu", "gelu_tanh",
}


def _is_rectifier(m: nn.Module) -> bool:
    return isinstance(m, nn.ReLU) or type(m) is nn.ReLU6


def _functional_activations() -> dict[object, str]:
    table: dict[object, str] = {}
    for name in ("relu", "relu_", "relu6", "gelu", "silu", "mish", "hardswish", "elu", "elu_", "selu", "celu",
                 "leaky_relu", "leaky_relu_", "prelu", "rrelu", "softplus", "hardtanh", "hardtanh_", "glu"):
        for ns in (F, torch, torch.Tensor):
            fn = getattr(ns, name, None)
            if fn is not None:
                table[fn] = name.rstrip("_")
    return table


_FUNCTIONAL = _functional_activations()


class _ActivationProbe(TorchFunctionMode):
    """Counts functional activation calls made outside a rectifier module during a forward pass."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.stray: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _FUNCTIONAL.get(func)
        if name is not None and self.depth == 0:
            self.stray[name] += 1
        return func(*args, **(kwargs or {}))


def rectifier_policy(model: nn.Module, probe_input: torch.Tensor | None = None) -> str | None:
    """None when the DeconvNet/guided rules cover every activation of ``model``; else the reason."""
    relus = [m for m in model.modules() if _is_rectifier(m)]
    others = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower() in _OTHER_ACTIVATIONS})
    if others and not relus:
        return f"its activations are {', '.join(others)}, not ReLU: the deconvnet/guided rules are defined for ReLUs only"
    if not relus:
        return "it has no nn.ReLU module: the deconvnet/guided rules are defined for ReLUs only"
    if others:
        return f"besides ReLU it uses {', '.join(others)} activations, which a ReLU-only rule would silently skip"
    if probe_input is not None:
        probe = _ActivationProbe()

        def enter(_m, _a):
            probe.depth += 1

        def leave(_m, _a, _o):
            probe.depth -= 1

        handles = [h for m in relus for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            with torch.no_grad(), probe:
                model(probe_input)
        finally:
            for h in handles:
                h.remove()
        if probe.stray:
            calls = ", ".join(f"{k} x{v}" for k, v in sorted(probe.stray.items()))
            return f"its forward calls functional activations outside ReLU modules ({calls}), which cannot be hooked"
    return None


class _RectifierRule(torch.autograd.Function):
    """y = clamp(x, 0, upper) with the backward of ``rule`` (module docstring)."""

    @staticmethod
    def forward(ctx, x, rule: str, upper: float | None):
        y = x.clamp_min(0) if upper is None else x.clamp(0, upper)
        ctx.rule = rule
        if rule != "deconvnet":
            ctx.save_for_backward((x > 0) if upper is None else (x > 0) & (x < upper))
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.rule == "gradient":
            (mask,) = ctx.saved_tensors
            return g * mask, None, None
        g = g.clamp_min(0)
        if ctx.rule == "guided":
            (mask,) = ctx.saved_tensors
            g = g * mask
        return g, None, None


_MISSING = object()


@contextmanager
def rectifier_rule(model: nn.Module, rule: str) -> Iterator[None]:
    """Within the block, every ReLU/ReLU6 module of ``model`` back-propagates with ``rule``."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    saved: list[tuple[nn.Module, object]] = []
    try:
        for m in model.modules():
            if not _is_rectifier(m):
                continue
            saved.append((m, m.__dict__.get("forward", _MISSING)))
            upper = float(m.max_val) if isinstance(m, nn.Hardtanh) else None
            m.forward = lambda x, _upper=upper: _RectifierRule.apply(x, rule, _upper)
        yield
    finally:
        for m, prev in reversed(saved):
            if prev is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.forward = prev


_POLICY: "weakref.WeakKeyDictionary[object, str | None]" = weakref.WeakKeyDictionary()


def check_rectifiers(classifier) -> None:
    """Raise NotApplicable unless the rectifier rules cover all of ``classifier``'s activations."""
    if classifier not in _POLICY:
        _, h, w = classifier.preprocess.input_size
        probe = torch.zeros(1, 3, h, w, device=classifier.device)
        _POLICY[classifier] = rectifier_policy(classifier.model, classifier.normalize(probe))
    reason = _POLICY[classifier]
    if reason is not None:
        raise NotApplicable(f"{classifier.name}: {reason}")


def modified_input_gradient(classifier, images: torch.Tensor, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """dS_target/dx (B x 3 x H x W) with every ReLU's backward replaced by ``rule``."""
    with rectifier_rule(classifier.model, rule):
        return input_gradient(classifier, images, targets)


class _RectifierMethod(GradientAttribution):
    """max over channels of |modified input gradient| (a ``GradientAttribution``: SmoothGrad can wrap it)."""

    rule = "guided"

    def cost(self):
        return (1.0, 1.0)

    def check(self, classifier):
        check_rectifiers(classifier)

    def attributions(self, classifier, images, targets, seeds):
        check_rectifiers(classifier)
        return modified_input_gradient(classifier, images, targets, self.rule)


@register_method("deconvnet")
class DeconvNet(_RectifierMethod):
    """Zeiler & Fergus 2014 as a modified backward (Simonyan et al. section 4): ReLU backward = relu(g)."""

    rule = "deconvnet"
    capabilities = Capabilities(needs_gradients=True, family="gradient")
    description = "DeconvNet: ReLU backward passes positive gradients only (ReLU networks)"


@register_method("guided_backprop")
class GuidedBackprop(_RectifierMethod):
    """Springenberg et al. 2015: ReLU backward = relu(g) * [x > 0]."""

    rule = "guided"
    capabilities = Capabilities(needs_gradients=True, family="gradient")
    description = "guided backprop: ReLU backward = relu(g) * [x > 0] (ReLU networks)"


@register_method("guided_gradcam")
class GuidedGradCAM(SaliencyMethod):
    """Selvaraju et al. 2017: guided backprop x Grad-CAM upsampled to the image (module docstring).

    Two forward and two backward passes per image: one guided pass to the pixels, one plain pass
    for Grad-CAM (whose backward stops at the feature map, so it is the cheaper of the two).
    """

    capabilities = Capabilities(needs_gradients=True, needs_feature_layer=True, family="cam")
    description = "Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map"

    def cost(self):
        return (2.0, 2.0)

    def check(self, classifier):
        check_rectifiers(classifier)
        classifier.features_spec()

    def attribute(self, classifier, images, targets, seeds):
        check_rectifiers(classifier)
        guided = modified_input_gradient(classifier, images, targets, "guided").abs().amax(1)
        cam = gradcam_maps(classifier, images, targets).detach().clamp_min(0)
        cam = F.interpolate(cam[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return guided * cam
