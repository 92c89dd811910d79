"""Maps are computed on the classifier as trained: BN folding only in no-grad scoring forwards,
and any module can be the CAM feature layer (in-place activations after it included)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from salbench.classifiers import ModelOptions, load_classifier
from salbench.methods import create_method
from salbench.methods.cam import gradcam_maps


def _bn_resnet(tmp_path):
    """A random-weight timm ResNet (max-pool, ReLUs) with non-trivial eval BatchNorm statistics."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.3)
    path = tmp_path / "bn.pth"
    torch.save(model.state_dict(), path)
    spec = f"test_resnet@{path}"
    return spec, {spec: {"input_size": 64, "mean": [0.5], "std": [0.25]}}


def test_gradient_maps_use_the_unfolded_model(tmp_path, one_thread):
    spec, overrides = _bn_resnet(tmp_path)
    folded = load_classifier(spec, ModelOptions(overrides=overrides))
    plain = load_classifier(spec, ModelOptions(overrides=overrides, fold_bn=False))
    assert folded.meta["bn_folded"] > 0 and folded.scorer is not None and plain.scorer is None
    assert folded.describe()["bn_folding"]["pairs"] == folded.meta["bn_folding"]["pairs"]
    assert all("+" in p for p in folded.meta["bn_folding"]["pairs"])
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 3, 5, 9])
    for name in ("gradient", "deconvnet", "guided_backprop"):
        method = create_method(name)
        diff = (method(folded, x, t) - method(plain, x, t)).abs().max().item()
        assert diff <= 1e-6, (name, diff)
    # scoring forwards (no gradient recorded) use the folded copy: same logits up to rounding
    with torch.no_grad():
        a, b = folded(x), plain(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.scorer.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())  # the saliency model keeps its BN


def test_background_class_dropped_from_the_folded_copy_too(tmp_path):
    from salbench.weights import drop_background_class

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=11)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    clf = load_classifier(f"test_resnet@{path}", ModelOptions(overrides={f"test_resnet@{path}": {"input_size": 32}}))
    drop_background_class(clf)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        scored = clf(x)
    with torch.enable_grad():
        graded = clf(x).detach()
    assert scored.shape == graded.shape == (2, 10) and torch.allclose(scored, graded, atol=1e-4)


def _reference_gradcam(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM as pytorch-grad-cam computes it: a forward hook keeps the layer's output, a tensor
    hook its gradient (the input requires grad, so the output is a graph node, not a leaf). The
    network goes on with a copy, so an in-place op after the layer cannot alter the kept output."""
    acts, grads = [], []

    def hook(_m, _a, out):
        acts.append(out)
        out.register_hook(grads.append)
        return out.clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        logits = model(x.requires_grad_(True))
        logits.gather(1, targets[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = acts[0].detach(), grads[0]
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)


def test_feature_layer_followed_by_an_inplace_activation(one_thread):
    """mobilenetv2's conv_head feeds BatchNormAct2d; with its BN folded away, the ReLU6 runs in
    place on the hooked output itself. Grad-CAM must work and match the hand computation."""
    spec = "random:mobilenetv2_100"
    torch.manual_seed(0)
    clf = load_classifier(spec, ModelOptions(overrides={spec: {"input_size": 64, "feature_layer": "conv_head"}}))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1, 7])
    maps = create_method("gradcam")(clf, x, t)
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps.amax() > 0
    ours = gradcam_maps(clf, x, t).detach()
    ref = _reference_gradcam(clf.model, "conv_head", clf.normalize(x).detach(), t)
    assert ours.shape == ref.shape == (2, 2, 2)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)
    used = clf.describe()["feature_layer"]
    assert used["kind"] == "module" and used["module"] == "conv_head" and "conv_head" in used["tensor"]


def test_inplace_op_on_the_hooked_output_in_the_unfolded_model(one_thread):
    """timm's BasicBlock adds the shortcut in place onto bn2's output (``x += shortcut``)."""
    from testutils import make_classifier

    clf = make_classifier("test_resnet", size=32)
    clf.feature_layer = "layer1.0.bn2"
    with torch.no_grad():  # timm zero-initialises the last BN of a block: give it a non-zero output
        clf.model.layer1[0].bn2.weight.copy_(torch.linspace(-1, 1, clf.model.layer1[0].bn2.num_features))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([2, 4])
    ours = gradcam_maps(clf, x, t).detach()
    ref = _reference_gradcam(clf.model, "layer1.0.bn2", clf.normalize(x).detach(), t)
    assert ours.abs().amax() > 0 and torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)


def test_default_feature_layer_is_recorded(one_thread):
    from testutils import make_classifier

    used = make_classifier("test_resnet", size=32).describe()["feature_layer"]
    assert used["kind"] == "nchw" and used["module"] is None and "forward_features" in used["tensor"]


def test_a_classifier_can_run_channels_last_by_itself():
    """``model_overrides: {M: {channels_last: ...}}`` sets one classifier's memory format over the
    run's (on a CPU it pays for BatchNorm CNNs and not for ConvNeXt: docs/performance.md); the
    logits and input gradients are those of the contiguous model up to float rounding, and run.json
    records the format."""
    from salbench.classifiers import ModelOptions, load_classifier

    spec = "random:test_resnet"

    def load(options):
        torch.manual_seed(0)  # the same random weights each time
        return load_classifier(spec, options)

    plain = load(ModelOptions())
    own = load(ModelOptions(overrides={spec: {"channels_last": True}}))
    off = load(ModelOptions(channels_last=True, overrides={spec: {"channels_last": False}}))
    assert (plain.channels_last, own.channels_last, off.channels_last) == (False, True, False)
    assert own.describe()["channels_last"] is True and plain.describe()["channels_last"] is False
    x = torch.rand(4, 3, *plain.preprocess.input_size[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(own(x), plain(x), atol=1e-4, rtol=1e-4)
    grads = []
    for clf in (plain, own):
        xi = x.clone().requires_grad_(True)
        clf(xi)[:, 0].sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch, how", [("test_resnet", "oneDNN"), ("test_efficientnet", "channels-last"),
                                       ("test_convnext", "channels-last"), ("test_vit", "channels-last")])
def test_scoring_forwards_on_a_cpu_run_a_frozen_graph(arch, how, one_thread):
    """On a CPU the no-grad scoring forwards run a frozen TorchScript graph of the scorer (dense
    convolutions: oneDNN-optimised; grouped ones or a ViT: channels-last), with the eager logits up
    to rounding at more than one batch size; gradients still see the unfolded eager model."""
    from salbench.classifiers import freeze_for_cpu

    spec = f"random:{arch}"
    torch.manual_seed(0)
    clf = load_classifier(spec, ModelOptions(overrides={spec: {"input_size": 64}}))
    assert how in clf.describe()["scorer"]
    frozen = clf._scoring_model()
    assert frozen is not clf.scorer and frozen is not clf.model
    for n in (1, 6):
        x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            scored = clf(x)
            eager = clf.scorer(clf.normalize(x))
        with torch.enable_grad():
            graded = clf(x).detach()
        torch.testing.assert_close(scored, eager, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(scored, graded, atol=1e-4, rtol=1e-4)
    model, why = freeze_for_cpu(clf.model, torch.rand(5, 3, 64, 64))
    assert model is not clf.model and why == clf.describe()["scorer"]


def test_a_model_that_cannot_be_frozen_stays_eager_and_says_why():
    from salbench.classifiers import freeze_for_cpu

    class DataDependent(nn.Module):  # a trace would bake in the branch the probe took
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv2(self.conv(x)).mean((2, 3))
            return y if x.shape[0] > 4 else -y

    model = DataDependent().eval()
    out, why = freeze_for_cpu(model, torch.rand(5, 3, 16, 16))
    assert out is model and why.startswith("eager (the frozen graph's logits moved by")

    class Untraceable(nn.Module):  # a dict output is refused by a strict trace
        def forward(self, x):
            return {"logits": x.mean((2, 3))}

    model = Untraceable().eval()
    out, why = freeze_for_cpu(model, torch.rand(5, 3, 8, 8))
    assert out is model and why.startswith("eager (freezing failed: ")


def test_a_scorer_changed_in_place_is_frozen_again():
    """drop_background_class edits the scorer's head in place: the frozen graph is rebuilt."""
    from salbench.weights import drop_background_class

    torch.manual_seed(0)
    clf = load_classifier("random:test_resnet", ModelOptions(overrides={"random:test_resnet": {"input_size": 32}}))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = clf(x)
    drop_background_class(clf)
    with torch.no_grad():
        after = clf(x)
    assert after.shape == (2, before.shape[1] - 1)
    torch.testing.assert_close(after, before[:, 1:], atol=1e-5, rtol=1e-5)
