"""Helpers shared by tests (imported as ``testutils``; conftest modules share one name)."""

from __future__ import annotations

import torch


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
