"""The gradient and CAM families against their reference implementations (captum, pytorch-grad-cam).

Same unfolded model (the peers see a copy of ``classifier.model`` behind the same pixel-space
normalisation, ``salbench.peers.PixelModel``), same images, targets and noise, on a ResNet and a
class-token ViT with seeded random weights at 64x64. Maps are compared after the same
normalisation: captum's attributions go through salbench's channel reduction and max
normalisation; pytorch-grad-cam's outputs are compared as they come (its ReLU, min-max and
``cv2.resize`` equal salbench's ReLU, bilinear upsampling and min-max, see ``compare_cam``).
Tolerance: max |difference| <= 1e-4. Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from salbench.errors import NotApplicable
from salbench.methods import create_method
from salbench.methods.base import normalize_maps
from salbench.methods.gradient import reduce_channels
from salbench.methods.integrated import baseline_images
from salbench.methods.smoothgrad import gaussian_noise, noise_seeds
from salbench.peers import PixelModel, feature_module
from salbench.rng import image_seeds

TOL = 1e-4
ARCHS = {
    "resnet": ("resnet18", dict(channels=(16, 32, 48, 64), output_stride=8)),
    "vit": ("vit_tiny_patch16_224", dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2)),
    # the zoo's ViT form: no class token, the head averages the patch tokens (features: forward_features' output)
    "vit_avg": ("vit_tiny_patch16_224", dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, class_token=False, global_pool="avg")),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def case(request):
    from testutils import make_classifier

    arch, kw = ARCHS[request.param]
    clf = make_classifier(arch, num_classes=10, size=64, seed=0, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from timm's init (zero-init residual BN, unit LayerNorm): varied, non-degenerate maps
        for name, p in clf.model.named_parameters():
            if "norm" in name or "bn" in name:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))
    x = torch.rand(3, 3, 64, 64, generator=g)
    t = torch.tensor([1, 4, 7])
    return request.param, clf, x, t


def report(what: str, arch: str, diff: float) -> None:
    print(f"\n[peers] {what:<34} {arch:<6} max|diff| = {diff:.2e}")


# ---------------------------------------------------------------------------------- captum
def _captum_map(attr: torch.Tensor, reduction: str) -> torch.Tensor:
    return normalize_maps(reduce_channels(attr.detach().float(), reduction), "max")


def test_input_x_gradient_equals_captum(case):
    captum_attr = pytest.importorskip("captum.attr")
    arch, clf, x, t = case
    ours = create_method("input_x_gradient")(clf, x, t)
    peer = _captum_map(captum_attr.InputXGradient(PixelModel(clf)).attribute(x.clone(), target=t), "abs_sum")
    diff = float((ours - peer).abs().max())
    report("input_x_gradient vs InputXGradient", arch, diff)
    assert diff <= TOL


@pytest.mark.parametrize("baseline, rule", [("black", "gausslegendre"), ("blur", "riemann_middle"), ("noise", "riemann_trapezoid")])
def test_integrated_gradients_equals_captum(case, baseline, rule):
    captum_attr = pytest.importorskip("captum.attr")
    arch, clf, x, t = case
    seeds = image_seeds(0, torch.arange(len(x)), 5)
    method = create_method("integrated_gradients", steps=16, baseline=baseline, method=rule, internal_batch=20)
    diag: dict[str, torch.Tensor] = {}
    ours = method(clf, x, t, seeds, diagnostics=diag)
    base = baseline_images(x, seeds, baseline, 0.1)
    ig = captum_attr.IntegratedGradients(PixelModel(clf))
    attr, delta = ig.attribute(x.clone(), baselines=base, target=t, n_steps=16, method=rule, internal_batch_size=20,
                               return_convergence_delta=True)
    peer = _captum_map(attr, "abs_sum")
    diff = float((ours - peer).abs().max())
    report(f"integrated_gradients {baseline}/{rule}", arch, diff)
    assert diff <= TOL
    with torch.no_grad():
        pm = PixelModel(clf)
        span = (pm(x).gather(1, t[:, None]) - pm(base).gather(1, t[:, None])).squeeze(1)
    if rule == "riemann_trapezoid":  # captum's trapezoid weights sum to 1 - 1/n (methods/integrated.py): same map, scaled sum
        with torch.enable_grad():
            raw = method.attributions(clf, x, t, seeds)
        assert torch.allclose(raw * 15 / 16, attr.float(), rtol=1e-4, atol=1e-6)
        delta = attr.sum((1, 2, 3)) * 16 / 15 - span
    # completeness gap: captum's convergence delta, relative to S(x) - S(x')
    assert torch.allclose(diag["completeness_gap"], (delta.abs() / span.abs()).float(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name, nt_type", [("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad_sq"), ("vargrad", "vargrad")])
@pytest.mark.parametrize("base", ["gradient", "input_x_gradient"])
def test_smoothgrad_equals_captum_noise_tunnel_on_the_same_noise(case, name, nt_type, base, monkeypatch):
    """captum's NoiseTunnel draws its noise with ``torch.normal``; it is handed salbench's draws
    (image-major, as NoiseTunnel repeats each image ``nt_samples`` times), so both average the
    base method's attributions over the same noisy copies."""
    captum_attr = pytest.importorskip("captum.attr")
    arch, clf, x, t = case
    n, level = 6, 0.2
    seeds = image_seeds(0, torch.arange(len(x)), 9)
    ours = create_method(name, base=base, samples=n, noise=level, chunk=5)(clf, x, t, seeds)

    img, k = torch.arange(len(x)).repeat_interleave(n), torch.arange(n).repeat(len(x))
    sigma = level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    noise = sigma[img].view(-1, 1, 1, 1) * gaussian_noise(noise_seeds(seeds[img], k), tuple(x.shape[1:]))
    real_normal = torch.normal
    monkeypatch.setattr(torch, "normal", lambda mean, std, *a, **kw: noise.clone() if std.shape == noise.shape else real_normal(mean, std, *a, **kw))
    pm = PixelModel(clf)
    if base == "gradient":
        tunnel, extra, reduction = captum_attr.NoiseTunnel(captum_attr.Saliency(pm)), {"abs": False}, "max_abs"
    else:
        tunnel, extra, reduction = captum_attr.NoiseTunnel(captum_attr.InputXGradient(pm)), {}, "abs_sum"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = tunnel.attribute(x.clone(), nt_type=nt_type, nt_samples=n, stdevs=1.0, target=t, **extra)
    peer = _captum_map(attr, reduction)
    diff = float((ours - peer).abs().max())
    report(f"{name}({base}) vs NoiseTunnel", arch, diff)
    assert diff <= TOL


# ------------------------------------------------------------------------- pytorch-grad-cam
def _peer_cam(clf, pm):
    """(target layer, reshape_transform) of ``pm`` whose output is salbench's CAM feature map."""
    spec = clf.features_spec()
    if spec.kind == "nchw":
        return feature_module(pm.model, clf), None
    prefix, (h, w) = spec.prefix_tokens, spec.grid

    def tokens_to_grid(t):
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    if spec.kind == "tokens":  # class-token ViT: the last block's input is the second-last block's output
        return pm.model.blocks[-2], tokens_to_grid
    assert spec.kind == "token_output"  # pooled ViT: forward_features' output is its final norm's
    return pm.model.norm, tokens_to_grid


PEER_CAMS = {"gradcam_pp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM",
             "scorecam": "ScoreCAM", "gradcam": "GradCAM"}


@pytest.mark.parametrize("name", sorted(PEER_CAMS))
def test_cam_variant_equals_pytorch_grad_cam(case, name):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    arch, clf, x, t = case
    method = create_method(name, **({"chunk": 50} if name == "scorecam" else {}))
    try:
        method.check(clf)
    except NotApplicable as exc:
        pytest.skip(str(exc))
    ours = method(clf, x, t).numpy()
    pm = PixelModel(clf)
    layer, reshape = _peer_cam(clf, pm)
    cam = getattr(gc, PEER_CAMS[name])(model=pm, target_layers=[layer], reshape_transform=reshape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(c)) for c in t])
    cam.activations_and_grads.release()
    diff = float(np.abs(ours - peer).max())
    report(f"{name} vs {PEER_CAMS[name]}", arch, diff)
    assert ours.max() > 0  # a real map, not an all-zero one that trivially agrees
    assert diff <= TOL


def test_eigencam_equals_pytorch_grad_cam_up_to_the_documented_sign(case):
    """pytorch-grad-cam's EigenCAM keeps LAPACK's arbitrary SVD sign; salbench fixes it with the rule
    of its ``get_2d_projection_with_sign_correction``. Ours equals that projection put through
    EigenCAM's own post-processing, and EigenCAM's output wherever LAPACK's sign agrees."""
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    arch, clf, x, t = case
    ours = create_method("eigencam")(clf, x, t).numpy()
    pm = PixelModel(clf)
    layer, reshape = _peer_cam(clf, pm)
    cam = gc.EigenCAM(model=pm, target_layers=[layer], reshape_transform=reshape)
    peer = cam(input_tensor=x.clone(), targets=None)
    acts = cam.activations_and_grads.activations[0].numpy()
    cam.activations_and_grads.release()
    corrected = scale_cam_image(scale_cam_image(np.maximum(get_2d_projection_with_sign_correction(acts), 0), (x.shape[-1], x.shape[-2])))
    diff = float(np.abs(ours - corrected).max())
    same_sign = [i for i in range(len(x)) if np.abs(ours[i] - peer[i]).max() <= TOL]
    report(f"eigencam vs sign-corrected ({len(same_sign)}/{len(x)} = EigenCAM)", arch, diff)
    assert ours.max() > 0
    assert diff <= TOL
