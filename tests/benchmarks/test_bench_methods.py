"""Every registered method on a small CNN and a small ViT (parametrised over the registry)."""

from __future__ import annotations

import pytest

from salbench.errors import NotApplicable
from salbench.methods import METHODS, create_method
from salbench.throughput import forward_backward_baseline, method_params


@pytest.mark.parametrize("name", METHODS.names())
def test_method(benchmark, name, classifier, batch32):
    x, t, seeds = batch32
    cls = METHODS.get(name)
    if cls.capabilities.needs_training:
        pytest.skip(f"{name} needs a trained masker (benchmarked through salbench throughput)")
    method = create_method(name, **method_params(name, x.shape[-1]))
    try:
        method.check(classifier)
    except NotApplicable as exc:
        pytest.skip(f"not applicable: {exc}")
    benchmark.group = f"method[{classifier.model.__class__.__name__}]"
    benchmark.extra_info.update(method=name, model=classifier.name, batch=len(x), size=x.shape[-1])
    maps = benchmark(method, classifier, x, t, seeds)
    assert maps.shape == (len(x), *x.shape[-2:])


def test_forward_backward_baseline(benchmark, classifier, batch32):
    """The cost floor of gradient methods: one forward and one backward pass to the input."""
    x, t, _ = batch32
    benchmark.group = f"method[{classifier.model.__class__.__name__}]"
    grad = benchmark(forward_backward_baseline, classifier, x, t)
    assert grad.shape == x.shape
