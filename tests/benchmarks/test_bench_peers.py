"""salbench against captum (vanilla gradient) and pytorch-grad-cam (Grad-CAM), side by side.

The small parametrised benchmarks put both implementations in one pytest-benchmark group
(test_resnet at 64x64, batch 8). ``test_headline_resnet18`` is the documented comparison
(resnet18, 224x224, batch 32, interleaved rounds in one process); it takes minutes on a CPU, so
it runs only with ``SALBENCH_PEER_HEADLINE=1``. ``salbench throughput --peers`` prints the same.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import pytest
import torch

from salbench.methods import create_method
from salbench.methods.base import normalize_maps
from salbench.throughput import PixelModel, feature_module, peer_comparison

from benchutils import smooth_images
from testutils import make_classifier

HAVE = {m: importlib.util.find_spec(m) is not None for m in ("captum", "pytorch_grad_cam")}


@pytest.fixture(scope="module")
def setup():
    clf = make_classifier("test_resnet", size=64)
    x = smooth_images(8, 64)
    with torch.no_grad():
        t = clf(x).argmax(1)
    return clf, x, t


@pytest.mark.skipif(not HAVE["captum"], reason="captum not installed")
@pytest.mark.parametrize("impl", ["salbench", "captum"])
def test_gradient_vs_captum(benchmark, impl, setup):
    clf, x, t = setup
    benchmark.group = "peer[gradient, test_resnet 8x64px]"
    if impl == "salbench":
        benchmark(create_method("gradient"), clf, x, t)
        return
    from captum.attr import Saliency

    sal = Saliency(clf)
    xp = x.clone()

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return normalize_maps(sal.attribute(xp, target=t, abs=True).amax(1), "max")

    benchmark(run)


@pytest.mark.skipif(not HAVE["pytorch_grad_cam"], reason="grad-cam not installed")
@pytest.mark.parametrize("impl", ["salbench", "pytorch-grad-cam"])
def test_gradcam_vs_pytorch_grad_cam(benchmark, impl, setup):
    clf, x, t = setup
    benchmark.group = "peer[gradcam, test_resnet 8x64px]"
    if impl == "salbench":
        benchmark(create_method("gradcam"), clf, x, t)
        return
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pm = PixelModel(clf)
    cam = GradCAM(model=pm, target_layers=[feature_module(pm.model, clf)])
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    benchmark(lambda: cam(input_tensor=x.clone(), targets=targets))
    cam.activations_and_grads.release()


@pytest.mark.skipif(not all(HAVE.values()), reason="captum / grad-cam not installed")
@pytest.mark.skipif(os.environ.get("SALBENCH_PEER_HEADLINE") != "1", reason="set SALBENCH_PEER_HEADLINE=1 (takes minutes on a CPU)")
def test_headline_resnet18(benchmark):
    results = benchmark.pedantic(lambda: peer_comparison("resnet18", batch_size=32, image_size=224, device="auto", rounds=5), rounds=1, iterations=1)
    for r in results:
        print("\n" + r.line())
        benchmark.extra_info[f"{r.method}_speedup"] = r.speedup
        benchmark.extra_info[f"{r.method}_max_abs_diff"] = r.max_abs_diff
        assert r.agree, r.line()
    speed = {r.method: r.speedup for r in results}
    assert speed["gradcam"] >= 1.5
    assert speed["gradient"] >= 0.95  # parity: the same forward + backward; 5 % allowance for a shared machine
