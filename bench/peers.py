"""salbench against peer implementations on the same model, batch and device.

``peer_comparison``: gradient vs captum's ``Saliency`` and Grad-CAM vs pytorch-grad-cam's
``GradCAM``, timed in interleaved rounds, with the maps checked for agreement. The peers are
optional packages (``pip install -e '.[bench]'``), imported only when compared.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import statistics
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from salbench.device import device_name, resolve_device
from salbench.errors import NotApplicable, UsageError
from salbench.methods import create_method
from salbench.methods.base import normalize_maps
from salbench.methods.cam import gradcam_maps
from salbench.throughput_setup import load_for_throughput, model_spec, synthetic_inputs
from salbench.timing import interleaved_times, ratio_of_medians

PEER_PACKAGES = {"gradient": ("captum", "captum"), "gradcam": ("pytorch_grad_cam", "grad-cam")}


def peers_available() -> dict[str, bool]:
    return {m: importlib.util.find_spec(mod) is not None for m, (mod, _dist) in PEER_PACKAGES.items()}


@dataclass
class PeerResult:
    method: str  # salbench method name
    peer: str  # the peer implementation
    model: str
    batch_size: int
    image_size: int
    device: str
    ours_ms: float  # median ms per batch
    peer_ms: float
    ours_min_ms: float
    peer_min_ms: float
    speedup: float  # median over rounds of peer_ms / ours_ms: > 1 means salbench is faster
    max_abs_diff: float
    tolerance: float  # NaN: agreement is checked elsewhere (the notes say where)
    rounds: int
    notes: str = ""
    device_type: str = "cpu"

    @property
    def agree(self) -> bool:
        return math.isnan(self.tolerance) or self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        agreement = ("agreement: see notes" if math.isnan(self.tolerance)
                     else f"max |diff| {self.max_abs_diff:.1e} ({'agree' if self.agree else 'DISAGREE'})")
        return (f"{self.method:<9} vs {self.peer:<26} {self.model} bs={self.batch_size} {self.image_size}px: salbench {self.ours_ms:8.1f} ms "
                f"({self.batch_size / self.ours_ms * 1e3:6.1f} img/s), peer {self.peer_ms:8.1f} ms ({self.batch_size / self.peer_ms * 1e3:6.1f} img/s), "
                f"speed-up x{self.speedup:.2f} (min-time x{self.peer_min_ms / self.ours_min_ms:.2f}), {agreement}")


class PixelModel(nn.Module):
    """A peer's view of a salbench classifier: a deep copy of the timm model (weights trainable,
    as users load them) behind the same pixel-space normalisation."""

    def __init__(self, classifier):
        super().__init__()
        self.model = copy.deepcopy(classifier.model)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self._normalize = classifier.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._normalize(x))


def feature_module(model: nn.Module, classifier) -> nn.Module:
    """The module of ``model`` whose output is the classifier's CAM feature map (NCHW CNNs)."""
    spec = classifier.features_spec()
    if spec.kind != "nchw":
        raise NotApplicable(f"{classifier.name}: peer Grad-CAM comparison needs a CNN with an NCHW feature map (got {spec.kind})")
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, n=n: outputs.__setitem__(n, out)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            _, h, w = classifier.preprocess.input_size
            feats = model.forward_features(classifier.normalize(torch.zeros(1, 3, h, w, device=classifier.device)))
    finally:
        for hd in handles:
            hd.remove()
    hits = [n for n, out in outputs.items() if out is feats]
    if not hits:
        raise NotApplicable(f"{classifier.name}: no module outputs the forward_features tensor")
    return model.get_submodule(min(hits, key=lambda n: n.count(".")))  # outermost (e.g. layer4)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - a.min(axis=(1, 2), keepdims=True)
    return a / (1e-7 + a.max(axis=(1, 2), keepdims=True))


def peer_comparison(model: str = "resnet18", batch_size: int = 32, image_size: int = 224, device: str | torch.device = "auto", *,
                    methods: Iterable[str] = ("gradcam", "gradient"), rounds: int = 5, warmup: int = 1, seed: int = 0,
                    tolerance: float = 1e-4, classifier=None) -> list[PeerResult]:
    """salbench vs captum ``Saliency`` (gradient) and pytorch-grad-cam ``GradCAM`` (gradcam).

    Same classifier weights, batch, device; float32. Targets are the predicted classes (the
    peers' default). Timings interleave the two implementations round by round.

    Agreement: gradient -- captum's ``|dS/dx|`` with salbench's channel max and max
    normalisation (the definition of the map) against salbench's map. Grad-CAM -- at the
    feature-map resolution, ReLU(sum_k mean(dS/dA_k) A_k) min-max normalised per image from
    both implementations' activations and gradients, and at the image resolution, salbench's
    feature-resolution map put through pytorch-grad-cam's own post-processing
    (``scale_cam_image``: min-max, ``cv2.resize``) against its output. The larger difference
    is reported.
    """
    dev = resolve_device(device)
    spec = model_spec(model)
    clf = classifier if classifier is not None else load_for_throughput(spec, dev, "float32", False, False, seed)
    x, _, _, _ = synthetic_inputs(batch_size, image_size, clf.num_classes, dev, seed)
    with torch.no_grad():
        t = clf(x).argmax(1)
    avail = peers_available()
    results = []
    for name in methods:
        if name not in PEER_PACKAGES:
            raise UsageError(f"no peer implementation for {name!r}; peers exist for {', '.join(PEER_PACKAGES)}")
        if not avail[name]:
            mod, dist = PEER_PACKAGES[name]
            raise UsageError(f"peer comparison for {name} needs {dist!r}: pip install {dist}")
        method = create_method(name)
        method.check(clf)
        ours = lambda: method(clf, x, t)  # noqa: E731
        xp = x.detach().clone()
        notes = ""
        if name == "gradient":
            from captum.attr import Saliency  # optional peer package

            sal = Saliency(clf)

            def peer():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return normalize_maps(sal.attribute(xp, target=t, abs=True).amax(1), "max")

            diff = float((ours() - peer()).abs().max())
            peer_name = "captum.attr.Saliency"
            notes = "captum timed with the same channel max + max normalisation"
        else:
            from pytorch_grad_cam import GradCAM  # optional peer package
            from pytorch_grad_cam.utils.image import scale_cam_image
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            pm = PixelModel(clf).to(dev)
            cam = GradCAM(model=pm, target_layers=[feature_module(pm.model, clf)])
            targets = [ClassifierOutputTarget(int(c)) for c in t.tolist()]

            def peer():
                return cam(input_tensor=xp, targets=targets)

            peer_out = peer()
            acts = cam.activations_and_grads.activations[0].float()
            grads = cam.activations_and_grads.gradients[0].float()
            peer_raw = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).clamp_min(0).numpy()
            with torch.enable_grad():
                ours_raw = gradcam_maps(clf, x, t).detach().clamp_min(0).float().cpu().numpy()
            d_feat = float(np.abs(_minmax(ours_raw) - _minmax(peer_raw)).max())
            ours_full = scale_cam_image(np.maximum(scale_cam_image(ours_raw, (x.shape[-1], x.shape[-2])), 0))
            d_full = float(np.abs(ours_full - peer_out).max())
            diff = max(d_feat, d_full)
            peer_name = "pytorch_grad_cam.GradCAM"
            notes = f"feature-res diff {d_feat:.1e}, image-res diff {d_full:.1e}; target layer {type(cam.target_layers[0]).__name__}"
        times = interleaved_times({"ours": ours, "peer": peer}, dev, rounds=rounds, warmup=warmup)
        results.append(PeerResult(
            method=name, peer=peer_name, model=clf.name, batch_size=batch_size, image_size=image_size, device=device_name(dev),
            ours_ms=statistics.median(times["ours"]), peer_ms=statistics.median(times["peer"]),
            ours_min_ms=min(times["ours"]), peer_min_ms=min(times["peer"]),
            speedup=ratio_of_medians(times["peer"], times["ours"]), max_abs_diff=diff, tolerance=tolerance, rounds=rounds, notes=notes,
            device_type=dev.type,
        ))
        if name == "gradcam":
            cam.activations_and_grads.release()
    return results
