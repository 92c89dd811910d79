"""Every registered method, on a CNN and a ViT: shape, range, batch invariance, determinism.

Parametrised over the registry, so a new method file is tested without editing this file.
"""

from __future__ import annotations

import pytest
import torch

from salbench.errors import NotApplicable
from salbench.methods import METHODS, create_method
from salbench.rng import image_seeds

ALL = METHODS.names()


def _maps(method, clf, x, t, idx):
    return method(clf, x, t, image_seeds(0, idx, 17))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 32, 32, generator=g), torch.tensor([0, 3, 7, 1, 9]), torch.arange(5)


@pytest.mark.parametrize("name", ALL)
def test_maps_are_in_unit_range_at_image_size(name, classifier, images):
    method = create_method(name)
    try:
        method.check(classifier)
    except NotApplicable as exc:
        assert str(exc), "NotApplicable must carry a reason"
        pytest.skip(f"{name} not applicable: {exc}")
    x, t, idx = images
    m = _maps(method, classifier, x, t, idx)
    assert m.shape == (5, 32, 32)
    assert m.dtype == torch.float32
    assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    if method.normalization in ("max", "minmax"):
        peaks = m.flatten(1).amax(1)
        assert torch.all(((peaks - 1).abs() < 1e-6) | (peaks == 0)), peaks


@pytest.mark.parametrize("name", ALL)
def test_batch_invariance(name, classifier, images):
    """An image's map does not depend on what else is in the batch (<= 1e-5 in float32)."""
    method = create_method(name)
    try:
        method.check(classifier)
    except NotApplicable:
        pytest.skip("not applicable")
    x, t, idx = images
    full = _maps(method, classifier, x, t, idx)
    for i in (0, 3):
        alone = _maps(method, classifier, x[i : i + 1], t[i : i + 1], idx[i : i + 1])
        assert (alone[0] - full[i]).abs().max() <= 1e-5
    perm = torch.tensor([4, 2, 0, 1, 3])
    shuffled = _maps(method, classifier, x[perm], t[perm], idx[perm])
    assert (shuffled - full[perm]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ALL)
def test_declares_capabilities_and_cost(name):
    m = create_method(name)
    fwd, bwd = m.cost()
    assert fwd >= 0 and bwd >= 0
    assert m.capabilities.family
    assert m.description
    if m.capabilities.needs_gradients:
        assert bwd > 0


class Linear(torch.nn.Module):
    """S_c = w_c^T I + b_c on a 3x8x8 image; timm-like forward_features/forward_head."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, num_classes)
        self.num_classes = num_classes

    def forward_features(self, x):
        return x.flatten(1)

    def forward_head(self, f):
        return self.fc(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_gradient_of_a_linear_model_is_max_abs_weight():
    from salbench.classifiers import Classifier, Preprocess

    torch.manual_seed(0)
    model = Linear()
    clf = Classifier(model, "linear", Preprocess(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 8, 8)), 4)
    x = torch.rand(3, 3, 8, 8)
    t = torch.tensor([0, 2, 3])
    maps = create_method("gradient")(clf, x, t)
    for i in range(3):
        expected = model.fc.weight[t[i]].view(3, 8, 8).abs().amax(0)
        assert torch.allclose(maps[i], expected / expected.max(), atol=1e-6)


def test_gradcam_on_gap_linear_cnn_equals_cam():
    """For a GAP + linear head, Grad-CAM weights are w_c / (h*w): the map is CAM up to scale."""
    from testutils import make_classifier

    clf = make_classifier("test_resnet")
    x = torch.rand(3, 3, 32, 32)
    t = torch.tensor([1, 5, 9])
    gc = create_method("gradcam")(clf, x, t)
    with torch.no_grad():
        _, feats = clf.forward_with_features(x)
        w, _ = clf.linear_head()
        cam = torch.einsum("bchw,bc->bhw", feats, w[t]).clamp_min(0)
        cam = torch.nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    assert (gc - cam).abs().max() < 1e-5


def test_controls_ignore_the_classifier(images):
    from testutils import make_classifier

    x, t, idx = images
    a, b = make_classifier("test_resnet", seed=0), make_classifier("test_resnet", seed=1)
    for name in ("centre", "full", "random"):
        m = create_method(name)
        assert torch.equal(_maps(m, a, x, t, idx), _maps(m, b, x, t, idx))
    centre = create_method("centre")(a, x, t)
    assert abs(centre[0].mean().item() - 0.5) < 0.05
    assert torch.equal(create_method("full")(a, x, t), torch.ones(5, 32, 32))
    r1 = _maps(create_method("random"), a, x, t, idx)
    assert not torch.equal(r1[0], r1[1]), "different images get different random maps"


def test_unknown_parameter_is_a_clear_error():
    from salbench.errors import UsageError

    with pytest.raises(UsageError, match="'centre'.*'size'"):
        create_method("centre", size=3)
    with pytest.raises(UsageError, match="area"):
        create_method("centre", area=2.0)


def test_normalization_rules():
    from salbench.methods.base import normalize_maps

    raw = torch.tensor([[[2.0, 4.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(normalize_maps(raw, "max")[0], torch.tensor([[0.5, 1.0], [0.75, 1.0]]))
    assert torch.equal(normalize_maps(raw, "minmax")[0], torch.tensor([[0.0, 1.0], [0.5, 1.0]]))
    assert torch.equal(normalize_maps(raw, "minmax")[1], torch.zeros(2, 2))  # constant map -> zeros
    assert torch.equal(normalize_maps(raw.clamp(max=1) * 0.5, "none"), raw.clamp(max=1) * 0.5)


@pytest.mark.parametrize("pool, kind", [("token", "tokens"), ("avg", "token_output")])
def test_vit_feature_map_is_what_the_head_reads(pool, kind):
    """Class-token ViT: the last block's input (its patch outputs never reach the head). A ViT whose
    head averages the patch tokens: the patch tokens the head pools, i.e. forward_features' output."""
    from testutils import make_classifier

    kw = {"img_size": 32, "patch_size": 8, "global_pool": pool}
    if pool == "avg":
        kw["class_token"] = False
    clf = make_classifier("test_vit", **kw)
    assert clf.features_spec().kind == kind
    x = torch.rand(2, 3, 32, 32)
    logits, feats = clf.forward_with_features(x)
    assert feats.shape[-2:] == (4, 4) and feats.requires_grad
    with torch.no_grad():
        assert torch.allclose(logits, clf(x), atol=1e-5)
        tokens = clf.model.forward_features(clf.normalize(x))
    prefix = clf.model.num_prefix_tokens
    if kind == "token_output":
        assert torch.allclose(feats.flatten(2).transpose(1, 2), tokens[:, prefix:], atol=1e-6)
    grads = torch.autograd.grad(logits[:, 0].sum(), feats)[0]
    assert grads.abs().sum() > 0
