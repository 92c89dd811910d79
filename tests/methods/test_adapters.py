"""The peers' methods through salbench (``methods/adapters.py``): the same maps as salbench's own
implementations on the same model and settings, analytic oracles on a linear model, names and
parameters checked in one line, provenance recorded. Needs the ``peers`` extra."""

from __future__ import annotations

import json

import pytest
import torch

from salbench.errors import UsageError
from salbench.methods import METHODS, create_method
from salbench.methods import adapters
from testutils import make_classifier


class Linear(torch.nn.Module):
    """S_c = w_c . x + b_c on 3 x 8 x 8 pixels (timm-like forward_features / forward_head)."""

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


@pytest.fixture(scope="module")
def linear():
    from salbench.classifiers import Classifier, Preprocess

    torch.manual_seed(0)
    model = Linear()
    clf = Classifier(model, "linear", Preprocess(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 8, 8)), 4)
    x = torch.rand(3, 3, 8, 8)
    t = torch.tensor([0, 2, 3])
    expected = (x * model.fc.weight[t].view(3, 3, 8, 8)).sum(1).abs()  # |sum_c x_c w_tc|: IG, input x gradient, LRP-epsilon
    return clf, x, t, expected / expected.flatten(1).amax(1).view(-1, 1, 1)


def _predicted(clf, x):
    """Explain the predicted classes: a random network's Grad-CAM for another class is often all
    negative (a flat, all-zero map), which would compare nothing."""
    with torch.no_grad():
        return clf, x, clf(x).argmax(1)


@pytest.fixture(scope="module")
def cnn_batch():
    clf = make_classifier("test_resnet", size=128, seed=1)  # a 4 x 4 feature map: CAMs with spatial structure
    return _predicted(clf, torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def vit_batch():
    clf = make_classifier("test_vit", img_size=32, patch_size=8)
    return _predicted(clf, torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)))


# ------------------------------------------------------------------ captum
def test_captum_integrated_gradients_on_a_linear_model_is_input_times_weight(linear):
    pytest.importorskip("captum")
    clf, x, t, expected = linear
    for params in ({}, {"n_steps": 5, "method": "riemann_trapezoid"}):
        maps = create_method("captum:IntegratedGradients", **params)(clf, x, t)
        assert (maps - expected).abs().max() <= 1e-5


def test_captum_integrated_gradients_equals_salbench_integrated_gradients(cnn_batch):
    pytest.importorskip("captum")
    if "integrated_gradients" not in METHODS:
        pytest.skip("salbench's integrated_gradients is not in this checkout (it lands with branch wt-methods-a)")
    clf, x, t = cnn_batch
    x, t = x[:2], t[:2]
    for steps, rule in ((8, "gausslegendre"), (6, "riemann_middle")):
        ours = create_method("integrated_gradients", steps=steps, baseline="black", method=rule)(clf, x, t)
        peer = create_method("captum:IntegratedGradients", n_steps=steps, method=rule)(clf, x, t)
        assert (ours - peer).abs().max() <= 1e-4


def test_captum_noise_tunnel_wraps_the_inner_method_and_is_seeded(linear):
    pytest.importorskip("captum")
    clf, x, t, expected = linear
    m = create_method("captum:NoiseTunnel(Saliency)", nt_samples=4, stdevs=0.2, abs=False)
    assert m.capabilities.stochastic and m.capabilities.needs_gradients
    seeds = torch.tensor([5, 6, 7])
    a, b = m(clf, x, t, seeds), m(clf, x, t, seeds)
    assert torch.equal(a, b)  # the same batch and seeds draw the same noise
    # a linear model's gradient does not depend on the noise: |sum_c w_tc|
    w = clf.model.fc.weight[t].view(3, 3, 8, 8).sum(1).abs()
    assert (a - w / w.flatten(1).amax(1).view(-1, 1, 1)).abs().max() <= 1e-5
    with pytest.raises(UsageError, match=r"captum:NoiseTunnel wraps another attribution: name it as captum:NoiseTunnel\(Saliency\)"):
        create_method("captum:NoiseTunnel")


def test_captum_layer_gradcam_reads_salbench_feature_layer(cnn_batch):
    pytest.importorskip("captum")
    clf, x, t = cnn_batch
    ours = create_method("gradcam")(clf, x, t)
    # captum's LayerGradCam is signed; with relu_attributions it is Grad-CAM (max-normalised here)
    peer = create_method("captum:LayerGradCam", relu_attributions=True)(clf, x, t)
    from salbench.methods.base import normalize_maps

    assert (normalize_maps(peer, "minmax") - ours).abs().max() <= 1e-4
    assert adapters.feature_target(clf)[0] is clf.model.get_submodule("layer4")


# ------------------------------------------------------------------ pytorch-grad-cam
@pytest.mark.parametrize("batch", ["cnn_batch", "vit_batch"])
def test_gradcam_adapter_equals_salbench_gradcam(batch, request):
    pytest.importorskip("pytorch_grad_cam")
    clf, x, t = request.getfixturevalue(batch)
    ours = create_method("gradcam")(clf, x, t)
    peer = create_method("gradcam:GradCAM")(clf, x, t)
    assert ours.flatten(1).amax(1).eq(1).all()  # non-trivial maps
    assert (ours - peer).abs().max() <= 1e-4


def test_other_gradcam_classes_run_on_the_same_layer(cnn_batch):
    pytest.importorskip("pytorch_grad_cam")
    clf, x, t = cnn_batch
    for name, params in (("gradcam:EigenGradCAM", {}), ("gradcam:GradCAMPlusPlus", {}), ("gradcam:HiResCAM", {}), ("gradcam:LayerCAM", {})):
        m = create_method(name, **params)(clf, x, t)
        assert m.shape == (4, 128, 128) and torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1


# ------------------------------------------------------------------ zennit
def test_zennit_epsilon_rule_on_a_linear_model_is_input_times_weight(linear):
    pytest.importorskip("zennit")
    clf, x, t, expected = linear
    maps = create_method("zennit:EpsilonPlus")(clf, x, t)
    assert (maps - expected).abs().max() <= 1e-4


def test_zennit_box_rule_gets_pixel_bounds_by_default(cnn_batch):
    pytest.importorskip("zennit")
    clf, x, t = cnn_batch
    m = create_method("zennit:EpsilonGammaBox", gamma=0.5)(clf, x[:2], t[:2])
    assert m.shape == (2, 128, 128) and torch.isfinite(m).all() and m.flatten(1).amax(1).eq(1).all()


# ------------------------------------------------------------------ names, parameters, provenance
def test_wildcards_never_select_an_adapter():
    pytest.importorskip("captum")
    create_method("captum:Saliency")  # built once: still not a listed name
    assert not any(":" in n for n in METHODS.select("*"))
    assert "captum:Saliency" not in METHODS.names() and METHODS.select("captum:Saliency") == ["captum:Saliency"]


@pytest.mark.parametrize("name,params,needle", [
    ("captum:IntegratedGradient", {}, "captum has no attribution class 'IntegratedGradient' (did you mean: IntegratedGradients"),
    ("captum:Integrated Gradients", {}, "expected captum:ClassName or captum:Wrapper(ClassName)"),
    ("gradcam:GradCam", {}, "grad-cam has no CAM class 'GradCam' (did you mean: GradCAM"),
    ("zennit:EpsilonPlush", {}, "zennit has no composite 'EpsilonPlush' (did you mean: EpsilonPlus"),
    ("captum:IntegratedGradients", {"n_stepz": 8}, "has no parameter 'n_stepz' (given 8) (did you mean: n_steps?)"),
    ("captum:IntegratedGradients", {"n_steps": "many"}, "n_steps='many': expected an integer"),
])
def test_bad_adapter_names_and_parameters_are_one_line(name, params, needle):
    pytest.importorskip("captum")
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("zennit")
    with pytest.raises(UsageError) as e:
        create_method(name, **params)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_missing_peer_package_is_one_line(monkeypatch):
    monkeypatch.setitem(adapters.PEER_PACKAGES, "zennit", ("zennit_not_installed_xyz", "zennit"))
    monkeypatch.setattr(METHODS, "_built", {})
    with pytest.raises(UsageError, match=r"^zennit:<name> methods need the 'zennit' package: pip install zennit"):
        create_method("zennit:EpsilonPlus")


@pytest.mark.slow
def test_a_run_records_the_peer_and_its_version_and_shows_it_in_the_leaderboard(tmp_path):
    pytest.importorskip("captum")
    pytest.importorskip("pytorch_grad_cam")
    import importlib.metadata

    from salbench import zoo
    from salbench.config import RunSpec
    from salbench.report import leaderboard_frame
    from salbench.results import read_table
    from salbench.runner import run
    from testutils import tiny_resnet_recipe

    zoo.register_recipe(tiny_resnet_recipe("adapter-cnn", seed=12), replace=True)
    spec = RunSpec(dataset="synthetic?n=8&size=32&classes=4", models=["zoo:adapter-cnn"], batch_size=4, device="cpu",
                   methods=["captum:IntegratedGradients", "gradcam:GradCAM", "gradient"],
                   method_params={"captum:IntegratedGradients": {"n_steps": 4}})
    out = run(spec, tmp_path / "run", progress=False)
    loc = read_table(out, "localization")
    assert set(loc["method"]) == {"captum:IntegratedGradients", "gradcam:GradCAM", "gradient"} and loc["error"].isna().all()
    cfg = json.loads((out / "run.json").read_text())["spec"]["method_configs"]
    captum_version = importlib.metadata.version("captum")
    assert cfg["captum:IntegratedGradients"]["peer"] == {"package": "captum", "version": captum_version, "class": "captum.attr.IntegratedGradients"}
    assert cfg["captum:IntegratedGradients"]["params"]["n_steps"] == 4
    assert cfg["gradcam:GradCAM"]["peer"]["version"] == importlib.metadata.version("grad-cam")
    board = leaderboard_frame([out]).set_index("method")
    assert board.loc["captum:IntegratedGradients", "family"] == f"captum {captum_version}"
    assert board.loc["gradcam:GradCAM", "family"].startswith("grad-cam ")
    assert board.loc["gradient", "family"] == "gradient"
