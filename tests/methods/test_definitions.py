"""Methods pinned to their definitions on hand-made networks and independent reference code.

The parametrised suite (test_methods.py) checks range, shape and batch invariance of every
registered method on a timm CNN and ViT; this file checks that each map is the quantity the
papers define, computed here by hand (closed forms, plain loops, or backward hooks).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salbench.classifiers import Classifier, Preprocess
from salbench.errors import NotApplicable, UsageError
from salbench.methods import create_method
from salbench.methods.cam import gradcam_maps
from salbench.methods.gradient import input_gradient
from salbench.methods.guided import rectifier_rule
from salbench.methods.rise import mask_seeds, rise_masks
from salbench.rng import image_seeds

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def wrap(model: nn.Module, size: int, num_classes: int, name: str = "hand-made") -> Classifier:
    return Classifier(model, name, Preprocess(**IDENTITY, input_size=(3, size, size)), num_classes)


def raw(method_name: str, clf, x, t, **params) -> torch.Tensor:
    """The method's raw map (before upsampling and max-normalisation)."""
    m = create_method(method_name, **params)
    m.check(clf)
    with torch.enable_grad():
        return m.attribute(clf, x, t, image_seeds(0, torch.arange(len(x)))).detach()


def normalise(a: torch.Tensor) -> torch.Tensor:
    a = a.clamp_min(0)
    return a / a.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)


# ------------------------------------------------------------------ deconvnet / guided backprop
class MLP(nn.Module):
    """S = W2 act(W1 x + b1) + b2 on a flattened 3 x size x size image; timm-like interface."""

    def __init__(self, act: nn.Module | None = None, hidden: int = 24, num_classes: int = 4, size: int = 8, functional: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(3 * size * size, hidden)
        self.act = act if act is not None else nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)
        self.functional = functional
        self.num_classes = num_classes

    def forward_features(self, x):
        h = self.fc1(x.flatten(1))
        return F.relu(h) if self.functional else self.act(h)

    def forward_head(self, f):
        return self.fc2(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _mlp_case(act=None, seed=0):
    torch.manual_seed(seed)
    model = MLP(act)
    with torch.no_grad():
        model.fc1.bias.normal_(0, 1.0)  # a good mix of active and inactive hidden units
    clf = wrap(model, 8, 4)
    x = torch.rand(6, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 3, 1, 0])
    return model, clf, x, t


def _backward_map(model, x, t, relu_backward):
    """max_c |W1^T v| with v = relu_backward(W2[c], pre-activation h), per image."""
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    h = x.flatten(1) @ w1.t() + model.fc1.bias.detach()
    out = []
    for i in range(len(x)):
        v = relu_backward(w2[t[i]], h[i])
        out.append((v @ w1).view(3, 8, 8).abs().amax(0))
    return torch.stack(out)


@pytest.mark.parametrize("inplace", [False, True])
def test_deconvnet_and_guided_differ_from_the_gradient_exactly_at_the_relu(inplace):
    model, clf, x, t = _mlp_case(nn.ReLU(inplace=inplace))
    expected = {
        "gradient": _backward_map(model, x, t, lambda g, h: g * (h > 0)),
        "deconvnet": _backward_map(model, x, t, lambda g, h: g.clamp_min(0)),
        "guided_backprop": _backward_map(model, x, t, lambda g, h: g.clamp_min(0) * (h > 0)),
    }
    # the three definitions really differ on this network, so the test can tell them apart
    assert (expected["gradient"] - expected["deconvnet"]).abs().max() > 1e-3
    assert (expected["gradient"] - expected["guided_backprop"]).abs().max() > 1e-3
    assert (expected["deconvnet"] - expected["guided_backprop"]).abs().max() > 1e-3
    for name, want in expected.items():
        got = raw(name, clf, x, t)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(create_method(name)(clf, x, t), normalise(want), atol=1e-5), name


def test_relu6_rule_uses_the_clipped_forward_mask():
    model, clf, x, t = _mlp_case(nn.ReLU6())
    with torch.no_grad():
        model.fc1.weight.mul_(40)  # push some pre-activations above 6
    h = x.flatten(1) @ model.fc1.weight.t() + model.fc1.bias
    assert (h > 6).any() and (h < 0).any()
    want = _backward_map(model, x, t, lambda g, h: g.clamp_min(0) * ((h > 0) & (h < 6)))
    assert torch.allclose(raw("guided_backprop", clf, x, t), want, rtol=1e-5, atol=1e-5)
    want = _backward_map(model, x, t, lambda g, h: g.clamp_min(0))
    assert torch.allclose(raw("deconvnet", clf, x, t), want, rtol=1e-5, atol=1e-5)


def test_rule_is_temporary_and_restored_after_errors():
    model, clf, x, t = _mlp_case(nn.ReLU(inplace=True))
    before = input_gradient(clf, x, t)
    create_method("guided_backprop")(clf, x, t)
    create_method("deconvnet")(clf, x, t)
    with pytest.raises(RuntimeError, match="boom"):
        with rectifier_rule(model, "deconvnet"):
            assert "forward" in model.act.__dict__
            raise RuntimeError("boom")
    assert "forward" not in model.act.__dict__
    assert model.act.inplace
    assert torch.equal(input_gradient(clf, x, t), before)


def _reference_modified_gradient(clf: Classifier, x, t, rule: str) -> torch.Tensor:
    """Independent reference: full backward hooks on (out-of-place) ReLU modules of a model copy."""
    model = copy.deepcopy(clf.model)
    handles = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
            if rule == "guided":  # grad_input = g * [x > 0]; keep its positive part
                handles.append(m.register_full_backward_hook(lambda _m, gin, gout: (gin[0].clamp_min(0),)))
            else:  # deconvnet: ignore the forward mask, pass relu(grad_output)
                handles.append(m.register_full_backward_hook(lambda _m, gin, gout: (gout[0].clamp_min(0),)))
    ref = Classifier(model, "ref", clf.preprocess, clf.num_classes)
    return input_gradient(ref, x, t)


@pytest.fixture(scope="module")
def resnet():
    from testutils import make_classifier

    return make_classifier("test_resnet")


def test_guided_and_deconvnet_match_hook_reference_on_timm_resnet(resnet):
    torch.manual_seed(1)
    x, t = torch.rand(3, 3, 32, 32), torch.tensor([2, 5, 7])
    for name, rule in (("guided_backprop", "guided"), ("deconvnet", "deconvnet")):
        want = _reference_modified_gradient(resnet, x, t, rule).abs().amax(1)
        got = raw(name, resnet, x, t)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * want.max()), name
    plain = raw("gradient", resnet, x, t)
    assert (normalise(plain) - normalise(raw("guided_backprop", resnet, x, t))).abs().max() > 1e-2


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(resnet):
    torch.manual_seed(2)
    x, t = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 9])
    ref = _reference_modified_gradient(resnet, x, t, "guided")
    guided = ref.abs().amax(1)
    cam = gradcam_maps(resnet, x, t).detach().clamp_min(0)
    cam = F.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    # channel-wise product then max |.| equals the product of the max-abs map (cam >= 0)
    channelwise = (ref * cam[:, None]).abs().amax(1)
    assert torch.allclose(channelwise, guided * cam, rtol=1e-5, atol=1e-9)
    got = create_method("guided_gradcam")(resnet, x, t)
    assert (got - normalise(guided * cam)).abs().max() < 1e-4


@pytest.mark.parametrize(
    "model, reason",
    [
        (MLP(nn.GELU()), "GELU"),
        (MLP(nn.SiLU()), "SiLU"),
        (MLP(nn.Sequential(nn.ReLU(), nn.Hardswish())), "Hardswish"),
        (MLP(nn.Identity()), "no nn.ReLU"),
        (MLP(nn.ReLU(), functional=True), "functional"),
    ],
    ids=["gelu", "silu", "relu+hardswish", "no-activation", "functional-relu"],
)
def test_guided_methods_refuse_networks_with_other_activations(model, reason):
    clf = wrap(model, 8, 4)
    for name in ("deconvnet", "guided_backprop", "guided_gradcam"):
        with pytest.raises(NotApplicable, match=reason):
            create_method(name).check(clf)
        with pytest.raises(NotApplicable, match=reason):
            create_method(name)(clf, torch.rand(1, 3, 8, 8), torch.tensor([0]))


@pytest.mark.parametrize("arch, kw, reason", [("test_vit", {"img_size": 32, "patch_size": 8}, "GELU"), ("test_efficientnet", {}, "SiLU"), ("test_convnext", {}, "GELU")])
def test_guided_methods_not_applicable_to_gelu_silu_timm_models(arch, kw, reason):
    from testutils import make_classifier

    clf = make_classifier(arch, **kw)
    with pytest.raises(NotApplicable, match=reason):
        create_method("guided_backprop").check(clf)


# ------------------------------------------------------------------ CAM
def test_cam_equals_gradcam_and_the_head_weights_on_a_gap_linear_cnn(resnet):
    torch.manual_seed(3)
    x, t = torch.rand(4, 3, 32, 32), torch.tensor([1, 3, 5, 8])
    cam = create_method("cam")(resnet, x, t)
    assert (cam - create_method("gradcam")(resnet, x, t)).abs().max() < 1e-5
    with torch.no_grad():
        feats = resnet.model.forward_features(resnet.normalize(x))
        w = resnet.model.get_classifier().weight
        want = torch.einsum("bkhw,bk->bhw", feats, w[t]).clamp_min(0)
    assert torch.allclose(raw("cam", resnet, x, t), want, rtol=1e-5, atol=1e-6)
    assert create_method("cam").cost() == (1.0, 0.0)


class GapReluLinear(nn.Module):
    """GAP -> ReLU -> Linear: looks like GAP + linear to a structural check, but is not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.global_pool = "avg"
        self.num_features = 8
        self.fc = nn.Linear(8, 4)
        self.num_classes = 4

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)).relu())

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


@pytest.mark.parametrize(
    "arch, kw, reason",
    [
        ("test_vit", {"img_size": 32, "patch_size": 8}, "global-average-pool"),
        ("test_convnext", {}, "norm"),
        ("mobilenetv3_small_050", {}, "after pooling"),
    ],
)
def test_cam_not_applicable_without_a_gap_linear_head(arch, kw, reason):
    from testutils import make_classifier

    clf = make_classifier(arch, **kw)
    with pytest.raises(NotApplicable, match=reason):
        create_method("cam").check(clf)


def test_cam_head_check_is_numerical():
    torch.manual_seed(0)
    clf = wrap(GapReluLinear(), 16, 4)
    with pytest.raises(NotApplicable, match="W . GAP"):
        create_method("cam").check(clf)


# ------------------------------------------------------------------ occlusion
class RegionReader(nn.Module):
    """Logits read only the mean colour of one region of the image: rows r0:r1, cols c0:c1."""

    def __init__(self, r0=8, r1=16, c0=16, c1=24, num_classes=3, scale=6.0):
        super().__init__()
        self.box = (r0, r1, c0, c1)
        self.fc = nn.Linear(3, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[scale, scale, scale], [-scale, -scale, -scale], [0.0, 0.0, 0.0]][:num_classes]))
            self.fc.bias.zero_()
        self.num_classes = num_classes

    def forward_features(self, x):
        r0, r1, c0, c1 = self.box
        return x[:, :, r0:r1, c0:c1].mean((2, 3))

    def forward_head(self, f):
        return self.fc(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _occlusion_reference(clf, x, t, window, stride, fill, score):
    """Plain loops over patch positions: mean drop over the patches covering each pixel, clamped."""
    _, _, h, w = x.shape

    def starts(n):
        s = list(range(0, n - window + 1, stride))
        return s if s[-1] + window == n else s + [n - window]

    def s_c(img):
        logits = clf(img)
        return logits.softmax(1)[:, t] if score == "prob" else logits[:, t]

    out = torch.zeros(len(x), h, w)
    with torch.no_grad():
        for i in range(len(x)):
            total, count = torch.zeros(h, w), torch.zeros(h, w)
            base = s_c(x[i : i + 1])[0, 0]
            for y0 in starts(h):
                for x0 in starts(w):
                    occ = x[i : i + 1].clone()
                    occ[..., y0 : y0 + window, x0 : x0 + window] = fill
                    total[y0 : y0 + window, x0 : x0 + window] += base - s_c(occ)[0, 0]
                    count[y0 : y0 + window, x0 : x0 + window] += 1
            out[i] = (total / count).clamp_min(0)
    return out


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_occlusion_matches_the_definition(score):
    torch.manual_seed(0)
    model = MLP(nn.ReLU())
    clf = wrap(model, 8, 4)
    x = torch.rand(3, 3, 8, 8)
    for i, c in enumerate([1, 2, 0]):
        t = torch.tensor([c])
        want = _occlusion_reference(clf, x[i : i + 1], t, window=3, stride=2, fill=0.3, score=score)
        got = raw("occlusion", clf, x[i : i + 1], t, window=3, stride=2, fill=0.3, score=score, chunk=5)
        assert torch.allclose(got, want, atol=1e-6), (score, i)
    # a whole batch at once, chunks spanning images
    t = torch.tensor([1, 2, 0])
    batch = raw("occlusion", clf, x, t, window=3, stride=2, fill=0.3, score=score, chunk=7)
    single = torch.cat([raw("occlusion", clf, x[i : i + 1], t[i : i + 1], window=3, stride=2, fill=0.3, score=score) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-6)


def test_occlusion_on_a_model_reading_one_patch_is_zero_elsewhere():
    r0, r1, c0, c1 = 8, 16, 16, 24
    clf = wrap(RegionReader(r0, r1, c0, c1), 32, 3)
    x = torch.full((2, 3, 32, 32), 0.9)
    x[1] = torch.rand(3, 32, 32) * 0.2 + 0.8
    t = torch.tensor([0, 0])
    window, stride = 6, 3
    m = create_method("occlusion", window=window, stride=stride)(clf, x, t)
    near = torch.zeros(32, 32, dtype=torch.bool)  # pixels a patch overlapping the region can cover
    near[max(r0 - window + 1, 0) : r1 + window - 1, max(c0 - window + 1, 0) : c1 + window - 1] = True
    assert m[:, ~near].abs().max() == 0
    assert (m[:, r0:r1, c0:c1] > 0).all()
    assert m.amax((1, 2)).eq(1).all()
    # cost: positions + 1 forwards; 64x64 default window 16 stride 16 -> 4 x 4 positions
    assert create_method("occlusion", window=window, stride=stride).cost((32, 32)) == (10 * 10 + 1, 0.0)
    assert create_method("occlusion").cost() == (4 * 4 + 1, 0.0)
    assert create_method("occlusion", stride=8).cost() == (7 * 7 + 1, 0.0)


def test_occlusion_parameters_are_validated():
    for bad in ({"window": 0}, {"stride": 0}, {"fill": 1.5}, {"score": "entropy"}, {"chunk": 0}):
        with pytest.raises(UsageError):
            create_method("occlusion", **bad)


# ------------------------------------------------------------------ RISE
def test_rise_masks_follow_the_recipe():
    seeds = mask_seeds(torch.full((4000,), 123), torch.arange(4000))
    masks = rise_masks(seeds, (32, 32), grid=4, p=0.3)
    assert masks.shape == (4000, 32, 32)
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.02
    assert len(torch.unique(seeds)) == 4000
    # smooth: bilinear from an 8-pixel cell, neighbouring pixels differ by at most 1/8
    assert (masks[:, 1:] - masks[:, :-1]).abs().max() <= 1 / 8 + 1e-6
    # the same seeds give the same masks; other images get other masks
    assert torch.equal(masks[:10], rise_masks(seeds[:10], (32, 32), grid=4, p=0.3))
    other = rise_masks(mask_seeds(torch.full((10,), 124), torch.arange(10)), (32, 32), grid=4, p=0.3)
    assert not torch.equal(masks[:10], other)


def test_rise_is_the_probability_weighted_mask_sum():
    torch.manual_seed(0)
    clf = wrap(RegionReader(), 32, 3)
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    seeds = image_seeds(0, torch.arange(2))
    n, grid, p = 40, 4, 0.4
    want, want_ratio = [], []
    for i in range(2):
        masks = rise_masks(mask_seeds(seeds[i].expand(n), torch.arange(n)), (32, 32), grid, p)
        with torch.no_grad():
            probs = clf(x[i : i + 1] * masks[:, None]).softmax(1)[:, t[i]]
        want.append((probs[:, None, None] * masks).sum(0) / (n * p))
        want_ratio.append((probs[:, None, None] * masks).sum(0) / masks.sum(0))
    m = create_method("rise", n_masks=n, grid=grid, p=p, chunk=7)
    with torch.no_grad():
        got = m.attribute(clf, x, t, seeds)
    assert torch.allclose(got, torch.stack(want), rtol=1e-5, atol=1e-7)
    ratio = create_method("rise", n_masks=n, grid=grid, p=p, chunk=7, estimator="ratio")
    with torch.no_grad():
        assert torch.allclose(ratio.attribute(clf, x, t, seeds), torch.stack(want_ratio), rtol=1e-5, atol=1e-7)
    # independent of chunking and of the batch
    other = create_method("rise", n_masks=n, grid=grid, p=p, chunk=1000)
    with torch.no_grad():
        assert torch.allclose(other.attribute(clf, x[1:], t[1:], seeds[1:])[0], got[1], atol=1e-6)
    assert m.cost() == (40.0, 0.0)
    assert m.capabilities.stochastic


class ConstantScore(torch.nn.Module):
    """Logits that ignore the image: every masked copy has the same class probability."""

    def forward(self, x):
        return x.new_tensor([[2.0, 0.0, -1.0]]).expand(len(x), 3)


def test_rise_ratio_estimator_removes_coverage_noise():
    # A classifier that ignores the image has no salient pixel: the conditional expectation is the
    # same everywhere. The ratio estimator returns exactly that constant; the paper's estimator
    # returns it times the uneven coverage sum_i M_i / (N p) of a finite mask sample.
    clf = wrap(ConstantScore(), 32, 3)
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0, 2])
    seeds = image_seeds(0, torch.arange(2))
    prob = torch.tensor([2.0, 0.0, -1.0]).softmax(0)[t]
    with torch.no_grad():
        ratio = create_method("rise", n_masks=16, grid=4, estimator="ratio").attribute(clf, x, t, seeds)
        paper = create_method("rise", n_masks=16, grid=4).attribute(clf, x, t, seeds)
    assert torch.allclose(ratio, prob[:, None, None].expand_as(ratio), atol=1e-6)
    assert (paper / prob[:, None, None]).std() > 0.05
    with pytest.raises(UsageError, match="estimator=.mean."):
        create_method("rise", estimator="mean")


def test_rise_on_a_model_reading_one_region_puts_most_mass_there():
    r0, r1, c0, c1 = 8, 16, 16, 24
    model = RegionReader(r0, r1, c0, c1)
    with torch.no_grad():  # P(class 0) moves smoothly with the visible fraction of the region
        model.fc.weight.zero_()
        model.fc.weight[0] = 2.0
        model.fc.bias[0] = -3 * 2.0 * 0.45
    clf = wrap(model, 32, 3)
    x = torch.full((3, 3, 32, 32), 0.9)
    t = torch.tensor([0, 0, 0])
    m = create_method("rise", n_masks=500, grid=4)(clf, x, t, image_seeds(0, torch.tensor([5, 6, 7])))
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[r0:r1, c0:c1] = True
    cell = 8  # masks are smooth at the scale of a cell: allow one cell of blur around the region
    near = torch.zeros(32, 32, dtype=torch.bool)
    near[r0 - cell : r1 + cell, c0 - cell : c1 + cell] = True
    # RISE's map is E[P(c|x*M) M]/p: far from the region it is the constant E[P], inside it is
    # higher; so compare the *excess* over the far-field level
    for i in range(3):
        far = m[i][~near]
        excess = (m[i] - far.median()).clamp_min(0)
        assert excess[near].sum() >= 0.85 * excess.sum()
        assert m[i][region].min() > far.max()  # every pixel of the region beats every far pixel
        assert region.flatten()[m[i].flatten().argmax()]


def test_defaults_for_image_size():
    assert create_method("rise").defaults_for((64, 64)) == {"n_masks": 64, "grid": 4, "estimator": "ratio"}
    assert create_method("occlusion").defaults_for((64, 64)) == {"window": 24, "stride": 8, "score": "logit"}
    assert create_method("rise").defaults_for((224, 224)) == {"n_masks": 4000, "grid": 7, "p": 0.5}
    assert create_method("occlusion").defaults_for((224, 224)) == {"window": 32, "stride": 16}
    assert create_method("gradient").defaults_for((224, 224)) == {}
    occ = create_method("occlusion", **create_method("occlusion").defaults_for((224, 224)))
    assert occ.cost((224, 224)) == (13 * 13 + 1, 0.0)
