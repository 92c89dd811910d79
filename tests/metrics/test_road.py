"""ROAD pinned to Rong et al. 2022: the imputation is the paper's linear system (checked against
scipy's spsolve on that system and against pytorch-grad-cam's NoisyLinearImputer), reproduces a
linear ramp exactly, adds the stated noise; MoRF / LeRF agree with pytorch-grad-cam's ROAD."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve

from salbench.datasets.base import Batch
from salbench.metrics import MapContext
from salbench.metrics.road import NEIGHBOURS, Road, linear_impute, noisy_linear_impute, removal_masks
from salbench.metrics.perturbation import removal_rank

#: stated tolerance of the default float32 CG solve (tol 1e-4 on the residual) against the exact solve
SOLVE_ATOL = 2e-3


def reference_impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The paper's system written out: for each removed pixel p, sum_valid(w) x_p - sum_{removed q} w x_q
    = sum_{known q} w x_q over the 8 neighbours inside the image; spsolve per channel."""
    h, w = removed.shape
    ids = -np.ones((h, w), dtype=int)
    unknown = np.argwhere(removed)
    ids[removed] = np.arange(len(unknown))
    a = lil_matrix((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), img.shape[0]))
    for k, (i, j) in enumerate(unknown):
        for dy, dx, wt in NEIGHBOURS:
            y, x = i + dy, j + dx
            if 0 <= y < h and 0 <= x < w:
                a[k, k] += wt
                if removed[y, x]:
                    a[k, ids[y, x]] -= wt
                else:
                    b[k] += wt * img[:, y, x]
    sol = spsolve(a.tocsc(), b)
    out = img.copy()
    out[:, removed] = sol.T
    return out


def _case(n=3, size=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size, size, generator=g, dtype=torch.float64), 7, 1, 3)[:, 0]
    removed = smooth > smooth.flatten(1).quantile(0.4, dim=1)[:, None, None]  # blobs, touching the border too
    return x, removed


@pytest.mark.parametrize("solver, atol", [("cg", SOLVE_ATOL), ("banded", 1e-6)])
def test_imputation_matches_spsolve_on_the_papers_system(solver, atol):
    """The batched CG (the device path) to its residual tolerance; the banded Cholesky (the CPU
    path) exactly, up to its float32 result."""
    x, removed = _case()
    ours, iters = linear_impute(x, removed, solver=solver)
    for i in range(len(x)):
        ref = reference_impute(x[i].numpy(), removed[i].numpy())
        assert np.abs(ours[i].numpy() - ref).max() < atol
        assert np.array_equal(ours[i].numpy()[:, ~removed[i].numpy()], x[i].numpy()[:, ~removed[i].numpy()])  # known pixels fixed
    if solver == "cg":
        tight, _ = linear_impute(x, removed, tol=1e-10, max_iter=2000, solver="cg")
        ref0 = reference_impute(x[0].numpy(), removed[0].numpy())
        assert np.abs(tight[0].numpy() - ref0).max() < 1e-5  # the same system, not an approximation of it
        assert (iters > 0).all()
    else:
        assert (iters == 0).all()


def test_the_cpu_default_is_the_exact_solve_and_edge_cases():
    x, removed = _case(n=2, size=16, seed=3)
    auto, _ = linear_impute(x.float(), removed)
    banded, _ = linear_impute(x.float(), removed, solver="banded")
    assert torch.equal(auto, banded)
    none = torch.zeros_like(removed)
    everything = torch.ones_like(removed[:1])
    kept, _ = linear_impute(x.float(), none, solver="banded")
    assert torch.equal(kept, x.float())  # nothing removed: the image itself
    filled, _ = linear_impute(x[:1].float(), everything, solver="banded")  # no known pixel: no solution, CG's fill instead
    cg, _ = linear_impute(x[:1].float(), everything, solver="cg")
    assert torch.isfinite(filled).all() and torch.equal(filled, cg)
    with pytest.raises(ValueError, match="solver='lu'"):
        linear_impute(x, removed, solver="lu")
    with pytest.raises(ValueError, match="solver='lu'"):
        Road.Params(solver="lu")


def test_imputation_matches_pytorch_grad_cam():
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    x, removed = _case(n=2, size=24, seed=1)
    ours, _ = linear_impute(x.float(), removed)
    for i in range(2):
        theirs = road.NoisyLinearImputer(noise=0.0)(x[i].float(), (~removed[i]).float())  # their mask: 1 = kept
        assert (ours[i] - theirs).abs().max() < SOLVE_ATOL


def test_a_linear_ramp_is_imputed_exactly():
    """Each removed pixel is the weighted mean of its 8 neighbours; the weights are symmetric, so a
    linear function is its own neighbour average: away from the border the ramp comes back exactly."""
    size = 24
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    ramp = torch.stack([0.02 * yy + 0.01 * xx, 0.5 - 0.015 * xx, 0.03 * yy]).unsqueeze(0)
    removed = torch.zeros(1, size, size, dtype=torch.bool)
    removed[0, 3:15, 4:20] = True  # a large hole
    removed[0, 18:21, 2:22:3] = True  # and scattered pixels
    out, _ = linear_impute(ramp, removed, tol=1e-10, max_iter=2000)
    assert (out - ramp).abs().max() < 1e-5  # float32
    loose, _ = linear_impute(ramp, removed)  # the default tolerance
    assert (loose - ramp).abs().max() < SOLVE_ATOL


def test_noise_is_the_papers_and_seeded_per_image():
    x, removed = _case(n=2, size=32)
    seeds = torch.tensor([7, 8])
    a = noisy_linear_impute(x.float(), removed, seeds, noise=0.01)
    clean, _ = linear_impute(x.float(), removed)
    diff = a - clean
    assert diff[~removed[:, None].expand_as(diff)].abs().max() == 0  # known pixels untouched
    d = diff[removed[:, None].expand_as(diff)]
    assert abs(float(d.std()) - 0.01) < 0.001 and abs(float(d.mean())) < 0.001
    b = noisy_linear_impute(x[1:].float(), removed[1:], seeds[1:], noise=0.01)
    assert torch.equal(a[1:], b)  # the same draws for an image in any batch


def test_removal_masks_take_the_most_and_least_salient_fractions():
    maps = torch.arange(100, dtype=torch.float32).view(1, 10, 10)
    morf, lerf = removal_masks(removal_rank(maps, torch.tensor([0])), (0.2, 0.5), (10, 10))
    assert morf[0, 0].sum() == 20 and morf[0, 0].flatten()[80:].all()  # the 20 largest values
    assert lerf[1, 0].sum() == 50 and lerf[1, 0].flatten()[:50].all()  # the 50 smallest


def _ctx(x, maps, clf, targets):
    n = len(x)
    batch = Batch(index=torch.arange(n), ids=[str(i) for i in range(n)], images=x, labels=targets, boxes=torch.zeros(n, 1, 4),
                  box_valid=torch.zeros(n, 1, dtype=torch.bool))
    return MapContext(maps=maps, binary=maps > 0.5, box=torch.zeros(n, 4), box_valid=torch.zeros(n, dtype=torch.bool), batch=batch,
                      targets=targets, classifiers={"src": clf}, source_model="src", eval_models=("src",), logits_clean={"src": clf(x)}, shared={})


def test_road_agrees_with_pytorch_grad_cam():
    """pytorch-grad-cam's ROADMostRelevantFirst(percentile=p) removes the pixels at or above the
    p-th percentile of the map, i.e. fraction 1 - p/100; its noise off, ours off: the same images,
    the same softmax probabilities (to the solver tolerance)."""
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from testutils import make_classifier

    clf = make_classifier("test_resnet", num_classes=4, size=32, seed=2).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 32, 32, generator=g)
    maps = torch.rand(3, 32, 32, generator=g)
    y = clf(x).argmax(1)
    fractions = (0.2, 0.5, 0.8)
    ours = Road(fractions=fractions, noise=0.0).compute(_ctx(x, maps, clf, y))
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in y]
    for k, f in enumerate(fractions):
        for cls, col in ((road.ROADMostRelevantFirst, "road_morf_curve"), (road.ROADLeastRelevantFirst, "road_lerf_curve")):
            metric = cls(percentile=round(100 * (1 - f)))
            metric.perturbation.imputer.noise = 0.0
            theirs = metric(x, maps.numpy(), targets, clf, return_diff=False)
            np.testing.assert_allclose(ours[col][:, k].numpy(), theirs, atol=2e-3)


def test_morf_removes_the_object_and_lerf_keeps_it():
    from test_deletion import H, OBJ, W, ObjectReader, _images

    model = ObjectReader()
    x = _images(4)
    gt = torch.zeros(4, H, W)
    gt[:, OBJ[0], OBJ[1]] = 1
    out = Road(fractions=(0.3, 0.5, 0.7), noise=0.01).compute(_ctx(x, gt + 0.01 * torch.rand(4, H, W), model, torch.ones(4, dtype=torch.long)))
    assert (out["road_morf_hits"] == 0).all() and (out["road_lerf_hits"] == 1).all()
    assert torch.equal(out["road_gap"], torch.ones(4))


def test_a_batch_without_scored_images_is_null():
    from salbench.metrics.deletion import Deletion
    from test_deletion import ObjectReader, _images

    x = _images(3)
    ctx = _ctx(x, torch.rand(3, 16, 16), ObjectReader(), torch.ones(3, dtype=torch.long))
    ctx.batch.index = torch.tensor([1, 2, 3])  # no index divisible by the stride
    for metric in (Road(fractions=(0.5,), stride=4), Deletion(steps=4, stride=4)):
        out = metric.compute(ctx)
        assert {c.column for c in metric.columns} == set(out) and all(torch.isnan(v).all() for v in out.values())


def test_a_removal_the_source_already_scored_in_the_batch_is_not_imputed_or_scored_again(monkeypatch):
    """Two methods whose maps coincide on some images (as Grad-CAM and HiResCAM do on the zoo):
    the second pays only for the images where its removals differ, and its values are those of a
    computation without the cache."""
    from salbench.metrics import road as road_module
    from testutils import make_classifier

    clf = make_classifier("test_resnet", num_classes=4, size=32, seed=2).eval()
    g = torch.Generator().manual_seed(5)
    x, first = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 32, 32, generator=g)
    second = first.clone()
    second[3] = torch.rand(32, 32, generator=g)  # image 3 gets another map, images 0-2 the same one
    y = clf(x).argmax(1)
    solved, calls = [], []
    impute, score = road_module.noisy_linear_impute, road_module.target_scores
    monkeypatch.setattr(road_module, "noisy_linear_impute", lambda x, *a, **k: solved.append(len(x)) or impute(x, *a, **k))
    monkeypatch.setattr(road_module, "target_scores", lambda c, images, *a, **k: calls.append(len(images)) or score(c, images, *a, **k))
    metric = Road(fractions=(0.2, 0.5))
    ctx = _ctx(x, first, clf, y)
    metric.compute(ctx)
    assert solved == [16] and calls == [16]  # 4 images x 2 fractions x (MoRF, LeRF)
    again = metric.compute(replace(ctx, maps=second))
    assert solved == [16, 4] and calls == [16, 4]  # image 3 only
    fresh = metric.compute(replace(ctx, maps=second, shared={}))
    for k in fresh:  # a classifier call on 4 images rounds as one on 16 does, to float32 precision
        torch.testing.assert_close(again[k], fresh[k], atol=1e-6, rtol=0)
    other = metric.compute(replace(ctx, targets=(y + 1) % 4))  # another target is another score
    assert solved[-1] == 16 and not torch.equal(other["road_morf_prob"], again["road_morf_prob"])
