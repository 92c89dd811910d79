"""Shared fixtures: small random-weight timm classifiers (a CNN and a ViT) at 32x32."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_classifier(arch: str, num_classes: int = 10, size: int = 32, seed: int = 0, **kwargs):
    import timm

    from salbench.classifiers import Classifier, Preprocess

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, size, size))
    return Classifier(model, f"random:{arch}", pre, num_classes)


CLASSIFIER_ARCHS = {
    "cnn": ("test_resnet", {}),
    "vit": ("test_vit", {"img_size": 32, "patch_size": 8}),
}


@pytest.fixture(scope="session", params=sorted(CLASSIFIER_ARCHS))
def classifier(request):
    arch, kw = CLASSIFIER_ARCHS[request.param]
    return make_classifier(arch, **kw)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Tests never touch the user's cache: $SALBENCH_HOME is a per-session temp dir."""
    if "SALBENCH_TEST_HOME" not in os.environ:
        os.environ["SALBENCH_TEST_HOME"] = str(tmp_path_factory.mktemp("salbench_home"))
    monkeypatch.setenv("SALBENCH_HOME", os.environ["SALBENCH_TEST_HOME"])
