"""Deletion / insertion pinned to Petsiuk et al. 2018 (RISE), not to their own output: closed-form
curves on a model that reads only the object, the random-order expectation of a constant map, the
cross-classifier mean, and agreement with Quantus' pixel flipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salbench.datasets.base import Batch
from salbench.errors import UsageError
from salbench.metrics import MapContext
from salbench.metrics.deletion import DeletionCross, Deletion, Insertion, blur_substrate, curve_auc, paper_sigma

H = W = 16
OBJ = (slice(4, 12), slice(4, 12))  # an 8 x 8 object: a quarter of the image
PATTERN = (torch.arange(H)[:, None] + torch.arange(W)[None, :]) % 2 * 2.0 - 1  # +-1 checkerboard


class ObjectReader(torch.nn.Module):
    """Two classes; logit of class 1 = k * (s - 1/4), s = mean over the object of (x - 1/2) * pattern.
    It reads only the object's pixels and only their checkerboard (blur and 1/2-grey erase it)."""

    def __init__(self, k: float = 20.0):
        super().__init__()
        self.k = k
        self.mask = torch.zeros(H, W)
        self.mask[OBJ] = 1

    def s(self, x: torch.Tensor) -> torch.Tensor:
        return (((x.mean(1) - 0.5) * PATTERN * self.mask).sum((1, 2)) / self.mask.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.k * (self.s(x) - 0.25)
        return torch.stack([torch.zeros_like(z), z], 1)


def _images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, H, W, generator=g) * 0.4 + 0.3  # background: anything
    x[:, :, OBJ[0], OBJ[1]] = (0.5 + 0.5 * PATTERN[OBJ]).expand(n, 3, 8, 8)  # object: s = 1/2 when intact
    return x


def _ctx(x: torch.Tensor, maps: torch.Tensor, models: dict, index: torch.Tensor | None = None) -> MapContext:
    n = len(x)
    index = torch.arange(n) if index is None else index
    batch = Batch(index=index, ids=[str(i) for i in index.tolist()], images=x, labels=torch.ones(n, dtype=torch.long),
                  boxes=torch.zeros(n, 1, 4), box_valid=torch.zeros(n, 1, dtype=torch.bool))
    return MapContext(maps=maps, binary=maps > 0.5, box=torch.zeros(n, 4), box_valid=torch.zeros(n, dtype=torch.bool), batch=batch,
                      targets=batch.labels, classifiers=models, source_model="src", eval_models=tuple(models),
                      logits_clean={k: m(x) for k, m in models.items()}, shared={})


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_deletion_of_the_object_first_follows_the_closed_form_curve_and_reaches_the_floor():
    model = ObjectReader()
    x = _images(4)
    gt = torch.zeros(4, H, W)
    gt[:, OBJ[0], OBJ[1]] = 1
    steps = 16
    out = Deletion(steps=steps, baseline=0.5).compute(_ctx(x, gt, {"src": model}))
    # the paper's curve: after step k, the first floor(k * HW / steps) pixels of the order are grey;
    # they are object pixels first, each taking 1/64 of s = 1/2 away
    removed = np.minimum(np.arange(steps + 1) * H * W // steps, 64)
    expected = _sigmoid(20 * (0.5 * (1 - removed / 64) - 0.25))
    np.testing.assert_allclose(out["deletion_curve"].numpy(), np.tile(expected, (4, 1)), atol=1e-5)
    auc = (expected.sum() - expected[0] / 2 - expected[-1] / 2) / steps
    np.testing.assert_allclose(out["deletion_auc"].numpy(), auc, atol=1e-5)
    assert out["deletion_auc"].max() < 0.15  # near the floor (0); the object is a quarter of the image
    inverse = Deletion(steps=steps, baseline=0.5).compute(_ctx(x, 1 - gt, {"src": model}))
    assert inverse["deletion_auc"].min() > 0.7  # background first: the score holds until 3/4 are gone


def test_insertion_of_the_object_first_rises_at_once():
    model = ObjectReader()
    x = _images(4)
    gt = torch.zeros(4, H, W)
    gt[:, OBJ[0], OBJ[1]] = 1
    ins = Insertion(steps=16, sigma=2.0).compute(_ctx(x, gt, {"src": model}))
    curve = ins["insertion_curve"]
    assert curve[:, 0].max() < 0.05 and (curve[:, 4:] > 0.99).all()  # blurred start near 0; object in after a quarter
    assert ins["insertion_auc"].min() > 0.85
    assert Insertion(steps=16, sigma=2.0).compute(_ctx(x, 1 - gt, {"src": model}))["insertion_auc"].max() < 0.3
    assert model.s(blur_substrate(x, 2.0)).abs().max() < 0.05  # the blurred copy has no checkerboard left
    assert paper_sigma((224, 224)) == 5.0 and paper_sigma((64, 64)) == pytest.approx(5 * 64 / 224)  # the paper's, scaled


def test_a_constant_map_gives_the_random_order_expectation():
    """Ties are broken by a seeded random order: a constant map's mean curve is the hypergeometric
    expectation of a uniformly random deletion order (raster order would fail: the object is centred)."""
    from scipy.stats import hypergeom

    model = ObjectReader()
    n, steps = 400, 8
    x = _images(n)
    out = Deletion(steps=steps, baseline=0.5).compute(_ctx(x, torch.full((n, H, W), 0.3), {"src": model}))
    counts = np.arange(steps + 1) * H * W // steps
    expected = []
    for c in counts:  # j object pixels among c random pixels: j ~ Hypergeometric(256, 64, c)
        j = np.arange(0, 65)
        expected.append((hypergeom.pmf(j, H * W, 64, c) * _sigmoid(20 * (0.5 * (1 - j / 64) - 0.25))).sum())
    curves = out["deletion_curve"].numpy()
    se = curves.std(0) / np.sqrt(n)
    assert np.all(np.abs(curves.mean(0) - expected) <= 4 * se + 1e-5), (curves.mean(0), expected)
    # and two images with the same index get the same order (seeded by the dataset index alone)
    again = Deletion(steps=steps, baseline=0.5).compute(_ctx(x[:3], torch.full((3, H, W), 0.3), {"src": model}))
    assert torch.equal(again["deletion_curve"], out["deletion_curve"][:3])


def test_auc_is_the_rise_trapezoid():
    curve = torch.tensor([[1.0, 0.5, 0.25, 0.0], [0.2, 0.2, 0.2, 0.2]])
    # RISE: (sum - first/2 - last/2) / (n - 1)
    assert torch.allclose(curve_auc(curve), torch.tensor([(1.75 - 0.5) / 3, 0.2]))


def test_cross_is_the_mean_over_the_other_eval_classifiers_and_stride_subsamples():
    a, b, c = ObjectReader(20.0), ObjectReader(5.0), ObjectReader(10.0)
    x = _images(6)
    maps = torch.rand(6, H, W, generator=torch.Generator().manual_seed(0))
    models = {"src": a, "e1": b, "e2": c}
    cross = DeletionCross(steps=8).compute(_ctx(x, maps, models))["deletion_cross_auc"]
    each = [Deletion(steps=8).compute(_ctx(x, maps, {"src": m}))["deletion_auc"] for m in (b, c)]
    assert torch.allclose(cross, (each[0] + each[1]) / 2, atol=1e-6)
    strided = Deletion(steps=8, stride=3).compute(_ctx(x, maps, {"src": a}))["deletion_auc"]
    full = Deletion(steps=8).compute(_ctx(x, maps, {"src": a}))["deletion_auc"]
    assert torch.isnan(strided[[1, 2, 4, 5]]).all() and torch.equal(strided[[0, 3]], full[[0, 3]])


def test_deletion_agrees_with_quantus_pixel_flipping():
    """Quantus' PixelFlipping on the same model, images and maps (baseline 0): its curve is our
    deletion curve after the clean point. Quantus flips ``features_in_step`` of the 3*H*W channel
    values per step and wants it to divide H*W: at 12 x 12 and 6 steps that is 72 = 24 whole pixels."""
    quantus = pytest.importorskip("quantus")
    from testutils import make_classifier

    clf = make_classifier("test_resnet", num_classes=4, size=16, seed=1).eval()  # Quantus refuses a module in training mode
    g = torch.Generator().manual_seed(5)
    n, side, steps = 4, 12, 6
    x = torch.rand(n, 3, side, side, generator=g)
    maps = torch.rand(n, side, side, generator=g)  # continuous: no ties, one order for both
    y = clf(x).argmax(1)
    batch = Batch(index=torch.arange(n), ids=[str(i) for i in range(n)], images=x, labels=y, boxes=torch.zeros(n, 1, 4),
                  box_valid=torch.zeros(n, 1, dtype=torch.bool))
    ctx = MapContext(maps=maps, binary=maps > 0.5, box=torch.zeros(n, 4), box_valid=torch.zeros(n, dtype=torch.bool), batch=batch,
                     targets=y, classifiers={"src": clf}, source_model="src", eval_models=("src",), logits_clean={"src": clf(x)}, shared={})
    ours = Deletion(steps=steps, baseline=0.0).compute(ctx)
    metric = quantus.PixelFlipping(features_in_step=3 * side * side // steps, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = np.asarray(metric(model=clf, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(), device="cpu", softmax=True))
    assert theirs.shape == (n, steps)
    np.testing.assert_allclose(ours["deletion_curve"][:, 1:].numpy(), theirs, atol=1e-5)


def test_chunk_changes_only_how_many_images_go_through_each_call():
    """chunk 0 (the device's default, auto_chunk) and a chunk that splits the steps unevenly give
    the same curves; the classifier sees calls of at most chunk images."""
    from salbench.metrics.perturbation import auto_chunk

    assert auto_chunk(torch.device("cpu")) == 64 and auto_chunk(torch.device("cuda")) == 1024
    sizes = []

    class Counting(ObjectReader):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

    x, model = _images(5), Counting()
    maps = torch.rand(5, H, W, generator=torch.Generator().manual_seed(0))
    auto = Deletion(steps=8).compute(_ctx(x, maps, {"src": model}))
    ctx = _ctx(x, maps, {"src": model})
    sizes.clear()
    split = Deletion(steps=8, chunk=3).compute(ctx)
    assert sizes[0] == 5 and sorted(set(sizes[1:])) == [2, 3]  # the substrate's 5, then the 35 inner images in 3s
    torch.testing.assert_close(auto["deletion_curve"], split["deletion_curve"])
    with pytest.raises(UsageError, match="chunk=-1"):
        Deletion(chunk=-1)


def test_scoring_calls_record_no_gradient():
    """The perturbed copies are scored without autograd, whatever the caller's mode: a Classifier
    then uses its BN-folded scorer, as the run's other scoring forwards do."""
    from salbench.metrics.perturbation import target_scores

    modes = []

    class Recording(ObjectReader):
        def forward(self, x):
            modes.append(torch.is_grad_enabled())
            return super().forward(x)

    x = _images(3)
    with torch.enable_grad():
        target_scores(Recording(), x, torch.zeros(3, dtype=torch.long), chunk=2)
    assert modes == [False, False]
