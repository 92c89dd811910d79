"""SmoothGrad, SmoothGrad^2 and VarGrad: definitions, the zero-noise limit, seeded noise, bad input."""

from __future__ import annotations

import pytest
import torch

from salbench.errors import NotApplicable, UsageError
from salbench.methods import create_method
from salbench.methods.smoothgrad import gaussian_noise, gradient_methods, noise_seeds
from salbench.rng import image_seeds


@pytest.fixture(scope="module")
def cnn():
    from testutils import make_classifier

    return make_classifier("test_resnet")


def test_every_gradient_family_method_is_wrappable():
    assert {"gradient", "input_x_gradient", "integrated_gradients", "guided_backprop", "deconvnet"} <= set(gradient_methods())
    assert not {"gradcam", "smoothgrad", "rise"} & set(gradient_methods())


@pytest.mark.parametrize("base", ["gradient", "input_x_gradient", "integrated_gradients", "guided_backprop", "deconvnet"])
def test_zero_noise_smoothgrad_is_the_wrapped_method(cnn, base):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([2, 5, 9])
    seeds = image_seeds(0, torch.arange(3), 1)
    try:
        create_method(base).check(cnn)
    except NotApplicable:
        pytest.skip("base not applicable")
    want = create_method(base)(cnn, x, t, seeds)
    got = create_method("smoothgrad", base=base, noise=0.0, samples=3, chunk=2)(cnn, x, t, seeds)
    assert torch.allclose(got, want, atol=1e-6)
    with torch.enable_grad():  # raw maps: the normalised zero-variance map would be rounding noise scaled to 1
        var = create_method("vargrad", base=base, noise=0.0, samples=3).attribute(cnn, x, t, seeds)
        sq = create_method("smoothgrad_sq", base=base, noise=0.0, samples=3).attribute(cnn, x, t, seeds)
    assert var.max() <= 1e-5 * sq.max()


def test_statistics_follow_their_definitions(cnn):
    """smoothgrad = mean_k a_k, smoothgrad_sq = mean_k a_k^2, vargrad = their difference, on the same
    noisy copies (recomputed here image by image, sample by sample)."""
    from salbench.methods.gradient import input_gradient

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1, 7])
    seeds = image_seeds(0, torch.arange(2), 2)
    n, level = 4, 0.3
    a = []
    for i in range(2):
        sigma = level * (x[i].max() - x[i].min())
        z = gaussian_noise(noise_seeds(seeds[i].repeat(n), torch.arange(n)), (3, 32, 32))
        with torch.enable_grad():
            a.append(input_gradient(cnn, x[i : i + 1] + sigma * z, t[i].repeat(n)))
    a = torch.stack(a)  # 2 x n x 3 x H x W
    mean, mean_sq = a.mean(1), (a * a).mean(1)
    for name, stat in (("smoothgrad", mean), ("smoothgrad_sq", mean_sq), ("vargrad", mean_sq - mean * mean)):
        m = create_method(name, samples=n, noise=level)
        with torch.enable_grad():
            got = m.attribute(cnn, x, t, seeds)
        assert torch.allclose(got, stat.abs().amax(1), rtol=1e-4, atol=1e-7), name


def test_noise_is_standard_normal_and_seeded():
    z = gaussian_noise(torch.arange(64), (4096,))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z.abs() < 1).float().mean() - 0.6827) < 0.01
    assert torch.equal(gaussian_noise(torch.tensor([5]), (3, 4)), gaussian_noise(torch.tensor([9, 5]), (3, 4))[1:])
    assert not torch.equal(noise_seeds(torch.tensor([5]), torch.tensor([0])), noise_seeds(torch.tensor([5]), torch.tensor([1])))


def test_bad_base_is_a_one_line_error():
    with pytest.raises(UsageError, match=r"base='gradcam': expected a gradient-family method"):
        create_method("smoothgrad", base="gradcam")
    with pytest.raises(UsageError, match=r"base='gradiant': no such method \(did you mean: gradient"):
        create_method("vargrad", base="gradiant")
    with pytest.raises(UsageError, match="samples=0"):
        create_method("smoothgrad_sq", samples=0)


def test_not_applicable_base_is_not_applicable(cnn):
    from testutils import make_classifier

    vit = make_classifier("test_vit", img_size=32, patch_size=8)
    with pytest.raises(NotApplicable, match="ReLU"):
        create_method("smoothgrad", base="guided_backprop").check(vit)
