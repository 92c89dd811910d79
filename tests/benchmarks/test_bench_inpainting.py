"""Inpainting backends, and the on-device ``pushpull`` fill against OpenCV Telea at 224x224.

``test_pushpull_vs_telea_224`` is the measurement behind docs/performance.md: 32 images of
224x224 with half of the pixels removed (smooth random blobs); pushpull is benchmarked, Telea is
timed back to back with it in the same process, and the top-1 agreement of two classifiers
(random-init timm resnet18 and vit_tiny, as in ``salbench throughput``) on the two inpainted
batches is compared with their agreement between Telea and no inpainting at all.
"""

from __future__ import annotations

import pytest
import torch

from salbench.metrics.inpainting import INPAINTERS, inpaint
from salbench.throughput import half_masks, inpainting_comparison, load_for_throughput

from benchutils import smooth_images


@pytest.mark.parametrize("backend", sorted(INPAINTERS.names()))
def test_inpaint_backend(benchmark, backend):
    x = smooth_images(8, 64)
    remove = half_masks(8, 64)
    masked = x * (~remove)[:, None]
    benchmark.group = "inpainting[8x64px]"
    out = benchmark(inpaint, masked, remove, backend)
    assert out.shape == x.shape and torch.equal(out[~remove[:, None].expand_as(out)], masked[~remove[:, None].expand_as(out)])


@pytest.fixture(scope="module")
def eval_classifiers():
    dev = torch.device("cpu")
    return {name: load_for_throughput(f"random:{name}", dev, "float32", False, False) for name in ("resnet18", "vit_tiny_patch16_224")}


def test_pushpull_vs_telea_224(benchmark, eval_classifiers):
    x = smooth_images(32, 224, seed=3)
    remove = half_masks(32, 224, seed=4)
    masked = x * (~remove)[:, None]
    benchmark.group = "inpainting[32x224px]"
    benchmark.pedantic(inpaint, args=(masked, remove, "pushpull"), rounds=3, iterations=1, warmup_rounds=1)
    res = inpainting_comparison(x, remove, eval_classifiers, backend="pushpull", reference="telea", rounds=7)
    benchmark.extra_info.update(
        telea_ms=res.reference_ms, pushpull_ms=res.backend_ms, speedup=res.speedup, mean_abs_diff=res.mean_abs_diff,
        top1_agreement=res.top1_agreement, masked_out_agreement=res.masked_out_agreement,
    )
    print("\n" + res.line())
    assert res.removed_fraction == pytest.approx(0.5, abs=1e-3)
    assert res.speedup > 1.0, res.line()  # the on-device fill must at least beat Telea on the CPU
    for name, agree in res.top1_agreement.items():  # closer to Telea than leaving the hole black
        assert agree >= res.masked_out_agreement[name], res.line()
