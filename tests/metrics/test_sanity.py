"""Sanity checks (Adebayo et al. 2018): similarities against reference libraries, the cascading
randomisation, the random-logit class, and the MPRT definition test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salbench.metrics.sanity import (
    Sanity,
    SanityContext,
    average_ranks,
    hog_features,
    hog_similarity,
    random_other_class,
    spearman_abs,
    ssim,
)
from testutils import make_classifier


def _smooth_maps(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    m = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    m = F.avg_pool2d(m, 5, 1, 2)[:, 0]
    m = m - m.flatten(1).min(1).values[:, None, None]
    return m / m.flatten(1).max(1).values[:, None, None]


def test_spearman_of_absolute_maps_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    a = _smooth_maps(4, seed=1) - 0.5  # signed: the absolute values are ranked
    b = _smooth_maps(4, seed=2) - 0.5
    a[0, :8] = 0.0  # ties get average ranks
    got = spearman_abs(a, b)
    want = [spearmanr(a[i].abs().flatten().numpy(), b[i].abs().flatten().numpy()).statistic for i in range(4)]
    assert np.allclose(got.numpy(), want, atol=1e-5)


def test_average_ranks_match_scipy_and_the_spearman_matches_torchmetrics_on_cam_like_ties():
    from scipy.stats import rankdata
    from torchmetrics.functional.regression import spearman_corrcoef

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (6, 200), generator=g).float()  # a handful of values: long tie runs
    x[0] = 2.0  # one constant row
    assert np.array_equal(average_ranks(x).numpy(), rankdata(x.numpy(), method="average", axis=1))
    # maps that are zero over most pixels, as a ReLU'd CAM is
    a = (_smooth_maps(5, seed=4) - 0.6).clamp_min(0)
    b = (_smooth_maps(5, seed=5) - 0.6).clamp_min(0)
    want = spearman_corrcoef(a.flatten(1).T, b.flatten(1).T)
    assert torch.allclose(spearman_abs(a, b), want, atol=1e-5)


def test_ssim_matches_scikit_image_gaussian_ssim():
    from skimage.metrics import structural_similarity

    a, b = _smooth_maps(3, seed=3), _smooth_maps(3, seed=4)
    got = ssim(a, b)
    want = [structural_similarity(a[i].double().numpy(), b[i].double().numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for i in range(3)]
    assert np.allclose(got.numpy(), want, atol=1e-4), (got, want)  # both average the windows inside the map


def test_batched_hog_equals_scikit_image_hog():
    from skimage.feature import hog

    maps = _smooth_maps(3, size=40, seed=5).double()
    for cell in (4, 8):
        got = hog_features(maps, cell=cell).numpy()
        want = np.stack([hog(m.numpy(), orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2)) for m in maps])
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-6


def test_similarities_are_one_for_identical_maps_constant_ones_too_and_batch_invariant():
    m = _smooth_maps(4, seed=6)
    m[1] = 1.0  # the 'full' control: constant, correlation undefined, yet identical
    for fn in (spearman_abs, ssim, hog_similarity):
        assert torch.allclose(fn(m, m.clone()), torch.ones(4))
    other = _smooth_maps(4, seed=7)
    for fn in (spearman_abs, ssim, hog_similarity):
        full, part = fn(m, other), fn(m[2:], other[2:])
        assert torch.allclose(full[2:], part, atol=1e-6)
    assert torch.isnan(spearman_abs(m[1:2], other[1:2])).all()  # constant vs not: undefined, not made up


def test_random_other_class_is_never_the_target_and_is_seeded_per_image():
    targets = torch.tensor([0, 1, 2, 9] * 50)
    seeds = torch.arange(200) * 7919
    other = random_other_class(targets, seeds, 10)
    assert (other != targets).all() and other.min() >= 0 and other.max() <= 9
    assert torch.equal(other[:4], random_other_class(targets[:4], seeds[:4], 10))  # per image, not per batch
    assert len(set(other[targets == 0].tolist())) > 5  # spread over the other classes
    with pytest.raises(ValueError):
        random_other_class(targets, seeds, 1)


class _Templates(torch.nn.Module):
    """Hand-built classifier: logit_c = <template_c, grey image>; the gradient map of class c is |template_c|."""

    def __init__(self, templates: torch.Tensor):
        super().__init__()
        self.register_buffer("t", templates)
        self.num_classes = len(templates)

    def forward(self, x):
        return torch.einsum("bchw,khw->bk", x, self.t)


def test_random_logit_on_a_hand_built_case():
    """Two classes with disjoint templates: the random-logit map is the other template, and the
    similarities are those of the two templates (computed independently with scipy)."""
    from scipy.stats import spearmanr

    from salbench.classifiers import Classifier, Preprocess
    from salbench.methods import create_method

    size = 32
    t = torch.zeros(2, size, size)
    t[0, 4:14, 4:14] = torch.linspace(0.2, 1.0, 100).reshape(10, 10)
    t[1, 18:30, 16:28] = torch.linspace(1.0, 0.3, 144).reshape(12, 12)
    clf = Classifier(_Templates(t), "templates", Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3, input_size=(3, size, size)), 2)
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 0, 1])
    other = random_other_class(targets, torch.tensor([5, 6, 7]), 2)
    assert other.tolist() == [1, 1, 0]  # two classes: the only other one
    grad = create_method("gradient")
    original, flipped = grad(clf, x, targets, torch.zeros(3)), grad(clf, x, other, torch.zeros(3))
    assert torch.allclose(original[0], t[0] / t[0].max(), atol=1e-6) and torch.allclose(flipped[0], t[1] / t[1].max(), atol=1e-6)
    values = Sanity().compute(SanityContext(original, flipped, "random_logit"))
    want = spearmanr(t[0].flatten().numpy(), t[1].flatten().numpy()).statistic
    assert np.allclose(values["spearman"].numpy(), want, atol=1e-5)
    assert (values["ssim"] < 0.5).all()


# ------------------------------------------------------------------------------ randomisation
@pytest.mark.parametrize("arch,kw,first,last", [("test_resnet", {}, "fc", "conv1"),
                                                ("test_vit", {"img_size": 32, "patch_size": 8}, "head", "patch_embed+own"),
                                                ("test_convnext", {}, "head", "stem")])
def test_layer_groups_run_from_the_head_to_the_input_and_cover_every_parameter(arch, kw, first, last):
    from salbench.randomise import layer_groups

    model = make_classifier(arch, **kw).model
    groups = layer_groups(model)
    assert groups[0][0] == first and groups[-1][0] == last and len(groups) >= 3
    covered = set()
    for _, mods in groups:
        for m in mods:
            params = list(m.target.parameters(recurse=False)) if hasattr(m, "target") else list(m.parameters())
            covered |= {id(p) for p in params}
    assert covered == {id(p) for p in model.parameters()}


def test_randomisation_cascades_is_seeded_and_cached_on_disk(tmp_path, monkeypatch):
    from salbench import store
    from salbench.randomise import layer_groups, randomised_classifier

    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    clf = make_classifier("test_resnet")
    clf.meta["weights_sha256"] = "ab" * 32
    d1, d2 = randomised_classifier(clf, 1, seed=3), randomised_classifier(clf, 2, seed=3)
    names = [n for n, _ in layer_groups(clf.model)]
    sd0, sd1, sd2 = clf.model.state_dict(), d1.model.state_dict(), d2.model.state_dict()
    top = [k for k in sd0 if k.startswith(names[0] + ".")]
    second = [k for k in sd0 if k.startswith(names[1] + ".") and sd0[k].is_floating_point()]
    rest = [k for k in sd0 if not any(k.startswith(n + ".") for n in names[:2])]
    assert all(not torch.equal(sd0[k], sd1[k]) for k in top if "weight" in k)
    assert all(torch.equal(sd1[k], sd2[k]) for k in top)  # cascading: depth 2 keeps depth 1's draws
    assert any(not torch.equal(sd0[k], sd2[k]) for k in second) and all(torch.equal(sd0[k], sd1[k]) for k in second)
    assert all(torch.equal(sd0[k], sd2[k]) for k in rest)
    assert d1.meta["mprt_layers"] == names[:1] and d2.meta["mprt_layers"] == names[:2] and d1.scorer is None
    files = sorted(p.name for p in (store.path("sanity")).glob("*.safetensors"))
    assert len(files) == 2 and all(f.startswith("ab" * 12) for f in files)
    again = randomised_classifier(clf, 1, seed=3)  # from the cache: identical weights
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in sd1.items())
    other_seed = randomised_classifier(clf, 1, seed=4)
    assert not torch.equal(other_seed.model.state_dict()["fc.weight"], sd1["fc.weight"])
    # a cached copy altered on disk is not trusted: rebuilt from the trained weights
    from safetensors.torch import load_file, save_file

    path = next(store.path("sanity").glob("*-s3-d1.safetensors"))
    bad = load_file(str(path))
    bad["fc.weight"] = bad["fc.weight"] * 0
    save_file(bad, str(path))
    rebuilt = randomised_classifier(clf, 1, seed=3)
    assert torch.equal(rebuilt.model.state_dict()["fc.weight"], sd1["fc.weight"])


def test_mprt_top_layer_randomised_changes_a_gradient_map_and_leaves_a_control_identical():
    """The definition test: MPRT on a network whose top layer is randomised."""
    from salbench.methods import create_method
    from salbench.randomise import randomised_classifier

    clf = make_classifier("test_resnet", seed=1)
    rand = randomised_classifier(clf, 1, seed=0, cache=False)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    seeds = torch.arange(4)
    metric = Sanity()
    grad, centre, random_control = create_method("gradient"), create_method("centre"), create_method("random")
    g0, g1 = grad(clf, x, targets, seeds), grad(rand, x, targets, seeds)
    assert not torch.allclose(g0, g1)
    gv = metric.compute(SanityContext(g0, g1, "mprt"))
    assert (gv["spearman"] < 0.95).all() and (gv["ssim"] < 0.95).all()
    for control in (centre, random_control):
        c0, c1 = control(clf, x, targets, seeds), control(rand, x, targets, seeds)
        assert torch.equal(c0, c1)
        cv = metric.compute(SanityContext(c0, c1, "mprt"))
        assert all(torch.equal(v, torch.ones(4)) for v in cv.values())


def test_params_are_validated_and_scaled_to_the_image():
    from salbench.errors import SpecError
    from salbench.metrics import select_metrics

    got = select_metrics(["sanity"], params={"sanity": {"depths": [3, 1, 3], "images": 8}}, image_size=(224, 224))["sanity"]
    assert got.params.depths == (1, 3) and got.params.images == 8 and got.params.hog_cell == 28
    assert got.depths_for(2) == [1, 2] and got.depths_for(7) == [1, 3, 7]
    assert not got.covers("occlusion") and got.covers("gradcam")
    with pytest.raises(SpecError, match="depths=\\[0\\]"):
        select_metrics(["sanity"], params={"sanity": {"depths": [0]}})
    with pytest.raises(SpecError, match="images=-1"):
        select_metrics(["sanity"], params={"sanity": {"images": -1}})
