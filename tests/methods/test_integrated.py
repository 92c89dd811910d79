"""Integrated Gradients pinned to its definition: completeness, the linear closed form, the quadratures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from salbench.classifiers import Classifier, Preprocess
from salbench.errors import UsageError
from salbench.methods import create_method
from salbench.methods.integrated import QUADRATURES, baseline_images, quadrature
from salbench.rng import image_seeds


class SmoothNet(nn.Module):
    """conv -> softplus -> conv -> tanh -> GAP -> linear: smooth everywhere (no ReLU kinks)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, num_classes)
        self.num_classes = num_classes

    def forward_features(self, x):
        return torch.tanh(self.c2(nn.functional.softplus(self.c1(x))))

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def smooth_classifier(seed=0):
    torch.manual_seed(seed)
    model = SmoothNet()
    with torch.no_grad():
        model.c1.weight.mul_(3)
        model.fc.weight.mul_(4)
    return Classifier(model, "smooth", Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 16, 16)), 5)


@pytest.mark.parametrize("baseline", ["black", "blur", "noise"])
def test_completeness_within_one_percent_at_256_steps(baseline):
    """sum IG = S(x) - S(x') up to the quadrature error (Sundararajan et al., axiom 'completeness'),
    checked from the model's own scores and against the reported completeness_gap."""
    clf = smooth_classifier()
    x = 0.3 * torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x[:, :, 4:10, 5:12] += 0.6  # an object with edges, which the blur baseline removes
    seeds = image_seeds(0, torch.arange(4), 3)
    method = create_method("integrated_gradients", steps=256, baseline=baseline, blur_sigma=0.25)
    with torch.enable_grad():
        change = (clf(x) - clf(baseline_images(x, seeds, baseline, 0.25))).detach()
        t = change.abs().argmax(1)  # the class whose score the baseline moves most: a real difference to explain
        attr = method.attributions(clf, x, t, seeds)
    span = change.gather(1, t[:, None]).squeeze(1)
    rel = (attr.sum((1, 2, 3)) - span).abs() / span.abs()
    assert span.abs().min() > 0.05
    assert rel.max() < 0.01, rel
    diag: dict[str, torch.Tensor] = {}
    method(clf, x, t, seeds, diagnostics=diag)
    assert torch.allclose(diag["completeness_gap"], rel, rtol=1e-3, atol=1e-6)
    # with few steps the gap is visible: the diagnostic measures something
    few: dict[str, torch.Tensor] = {}
    create_method("integrated_gradients", steps=2, baseline=baseline, blur_sigma=0.25, method="riemann_left")(clf, x, t, seeds, diagnostics=few)
    assert few["completeness_gap"].max() > 10 * rel.max()


def test_linear_model_closed_form():
    """S = w.x + b: IG = (x - x') * w exactly, for any rule and step count."""
    torch.manual_seed(0)
    lin = nn.Linear(3 * 8 * 8, 4)

    class Flat(nn.Module):
        num_classes = 4

        def forward_features(self, x):
            return x.flatten(1)

        def forward_head(self, f):
            return lin(f)

        def forward(self, x):
            return lin(x.flatten(1))

    clf = Classifier(Flat(), "linear", Preprocess(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 8, 8)), 4)
    x = torch.rand(3, 3, 8, 8)
    t = torch.tensor([0, 3, 1])
    for rule in QUADRATURES:
        with torch.enable_grad():
            attr = create_method("integrated_gradients", steps=3, method=rule).attributions(clf, x, t, torch.arange(3))
        want = x * lin.weight[t].view(3, 3, 8, 8)
        assert torch.allclose(attr, want, atol=1e-6), rule


def test_quadratures_are_captums_and_integrate_exactly():
    # Gauss-Legendre with n nodes integrates polynomials of degree 2n - 1 exactly on [0, 1]
    a, w = quadrature("gausslegendre", 3)
    assert abs((w * a**5).sum() - 1 / 6) < 1e-12 and abs(w.sum() - 1) < 1e-12
    a, w = quadrature("riemann_trapezoid", 5)
    assert np.allclose(a, [0, 0.25, 0.5, 0.75, 1]) and np.allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])  # sums to 1
    assert np.allclose(quadrature("riemann_left", 4)[0], [0, 0.25, 0.5, 0.75])
    assert np.allclose(quadrature("riemann_right", 4)[0], [0.25, 0.5, 0.75, 1])
    assert np.allclose(quadrature("riemann_middle", 4)[0], [0.125, 0.375, 0.625, 0.875])
    approx = pytest.importorskip("captum.attr._utils.approximation_methods")
    for rule in QUADRATURES:
        steps, alphas = approx.approximation_parameters(rule)
        ours = quadrature(rule, 7)
        # captum's trapezoid weights are 1/n, not 1/(n-1) (module docstring): a constant factor (n-1)/n
        factor = 6 / 7 if rule == "riemann_trapezoid" else 1.0
        assert np.allclose(ours[0], alphas(7), atol=1e-7) and np.allclose(factor * ours[1], steps(7), atol=1e-7), rule


def test_baselines():
    x = torch.rand(2, 3, 20, 24)
    seeds = torch.tensor([11, 12])
    assert torch.equal(baseline_images(x, seeds, "black", 0.1), torch.zeros_like(x))
    noise = baseline_images(x, seeds, "noise", 0.1)
    assert torch.equal(noise[1], baseline_images(x[1:], seeds[1:], "noise", 0.1)[0])  # per-image seed, not per batch
    assert 0 <= noise.min() and noise.max() < 1 and not torch.equal(noise[0], noise[1])
    blur = baseline_images(x, seeds, "blur", 0.1)
    assert blur.shape == x.shape and blur.std() < 0.5 * x.std()  # a blurred image keeps its mean, loses its detail
    assert abs(blur.mean() - x.mean()) < 0.02


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(UsageError, match=r"'integrated_gradients'.*baseline='grey'.*black, blur, noise"):
        create_method("integrated_gradients", baseline="grey")
    with pytest.raises(UsageError, match="method='simpson'"):
        create_method("integrated_gradients", method="simpson")
    with pytest.raises(UsageError, match="steps=1: expected at least 2"):
        create_method("integrated_gradients", steps=1, method="riemann_trapezoid")
    with pytest.raises(UsageError, match="steps=.*expected an integer"):
        create_method("integrated_gradients", steps=2.5)
