"""Helpers shared by tests (imported as ``testutils``; conftest modules share one name)."""

from __future__ import annotations

import os

import pytest
import torch


def skip_unless_ci_requires(tool: str, reason: str) -> None:
    """Skip a test whose external tool is missing, unless ``SALBENCH_REQUIRE_TOOLS`` names it: CI
    installs Chromium and TeX and sets it, so there a missing tool fails the test instead of
    silently skipping it."""
    required = {t.strip() for t in os.environ.get("SALBENCH_REQUIRE_TOOLS", "").split(",") if t.strip()}
    if tool in required:
        pytest.fail(f"{tool} is required here (SALBENCH_REQUIRE_TOOLS) but not installed: {reason}")
    pytest.skip(reason)


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


def tiny_resnet_recipe(name: str, seed: int, **overrides):
    """A zoo recipe small enough to train in a test: a one-block-per-stage ResNet on 4-class
    32x32 synthetic data, no accuracy bar."""
    from salbench import zoo
    from salbench.datasets.synthetic import SyntheticConfig

    fields = dict(
        name=name,
        arch="resnet18",
        model_kwargs=dict(layers=(1, 1, 1, 1), channels=(8, 8, 16, 16), stem_width=8, output_stride=8),
        data=SyntheticConfig(seed=seed, num_classes=4, size=32),
        train_images=64,
        val_images=16,
        steps=2,
        batch_size=16,
        min_val_top1=0.0,
    )
    return zoo.ZooRecipe(**{**fields, **overrides})
