"""Faithfulness metrics against their per-image peers (test_resnet at 64x64, 8 images, the same
maps): ROAD vs pytorch-grad-cam's ROAD, deletion + insertion vs the RISE per-image loop.
``salbench.faithfulness_peers.faithfulness_comparison`` prints the same as interleaved ratios."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from salbench.faithfulness_peers import causal_per_image, model_context
from salbench.metrics.deletion import Deletion, Insertion
from salbench.metrics.road import Road

from benchutils import smooth_images, smooth_maps
from testutils import make_classifier

FRACTIONS = (0.2, 0.5, 0.8)


@pytest.fixture(scope="module")
def setup():
    clf = make_classifier("test_resnet", size=64).eval()
    x, maps = smooth_images(8, 64), smooth_maps(8, 64)
    with torch.no_grad():
        t = clf(x).argmax(1)
    return clf, x, maps, t


@pytest.mark.skipif(importlib.util.find_spec("pytorch_grad_cam") is None, reason="grad-cam not installed")
@pytest.mark.parametrize("impl", ["salbench", "pytorch-grad-cam"])
def test_road_vs_pytorch_grad_cam(benchmark, impl, setup):
    clf, x, maps, t = setup
    benchmark.group = "peer[ROAD 3 fractions MoRF+LeRF, test_resnet 8x64px]"
    if impl == "salbench":
        road = Road(fractions=FRACTIONS)
        benchmark(lambda: road.compute(model_context(clf, x, maps, t)))
        return
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in t]
    peers = [cls(percentile=round(100 * (1 - f))) for f in FRACTIONS for cls in (ROADMostRelevantFirst, ROADLeastRelevantFirst)]
    benchmark(lambda: [m(x, maps.numpy(), targets, clf, return_diff=False) for m in peers])


@pytest.mark.parametrize("impl", ["salbench", "per-image loop"])
def test_deletion_insertion_vs_per_image_loop(benchmark, impl, setup):
    clf, x, maps, t = setup
    benchmark.group = "deletion+insertion 16 steps, test_resnet 8x64px"
    if impl == "salbench":
        metrics = (Deletion(steps=16), Insertion(steps=16, sigma=5 * 64 / 224))
        benchmark(lambda: [m.compute(model_context(clf, x, maps, t)) for m in metrics])
        return
    benchmark(lambda: causal_per_image(clf, x, maps, t, 16, 5 * 64 / 224))


def test_per_image_loop_is_the_same_computation(setup):
    """The loop the benchmark compares against computes the batched metric's AUCs."""
    clf, x, maps, t = setup
    ctx = model_context(clf, x[:2], maps[:2], t[:2])
    ours = torch.stack([Deletion(steps=16).compute(ctx)["deletion_auc"], Insertion(steps=16, sigma=5 * 64 / 224).compute(ctx)["insertion_auc"]], 1)
    loop = torch.as_tensor(causal_per_image(clf, x[:2], maps[:2], t[:2], 16, 5 * 64 / 224), dtype=torch.float32)
    assert torch.allclose(ours, loop, atol=1e-5)
