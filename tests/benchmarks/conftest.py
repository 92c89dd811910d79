"""Fixtures of the pytest-benchmark suite (hot paths on small inputs).

Run:  pytest tests/benchmarks --benchmark-only                      (the normal run skips them)
Save: pytest tests/benchmarks --benchmark-only --benchmark-autosave
Gate: pytest tests/benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=mean:10%

``SALBENCH_BENCH_THREADS=N`` fixes the CPU intra-op threads for the suite (default: as the test
session sets them); on a shared machine 1 thread gives steadier numbers.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchutils import smooth_images, smooth_maps


@pytest.fixture(autouse=True, scope="session")
def _bench_threads():
    n = os.environ.get("SALBENCH_BENCH_THREADS")
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def batch32():
    """8 images of 32x32 with targets and seeds: the size of the unit-test classifiers."""
    x = smooth_images(8, 32)
    return x, torch.arange(8) % 10, torch.arange(8)


@pytest.fixture(scope="session")
def maps64():
    """16 smooth saliency maps of 64x64 in [0,1], their images and one GT box per image."""
    m = smooth_maps(16, 64)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 48.0]]).expand(16, 1, 4).clone()
    return m, smooth_images(16, 64), boxes, torch.ones(16, 1, dtype=torch.bool)
