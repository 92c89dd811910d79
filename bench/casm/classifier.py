"""The classifier f that CASM training starts from, with what rebuilding its architecture needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from salbench import zoo
from salbench.errors import UsageError, close_matches
from salbench.weights import load_local_weights


@dataclass
class ClassifierInit:
    """The classifier f to start from and how to rebuild its architecture."""

    model: nn.Module
    arch: str
    model_kwargs: dict[str, Any]
    modifications: list[str]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]
    interpolation: str


def build_classifier(spec: str, init: str = "pretrained", num_classes: int | None = None, seed: int = 0) -> ClassifierInit:
    """The classifier f for training: ``zoo:<name>`` (zoo weights, trained on demand, or the bare
    architecture with ``init="scratch"``), a timm architecture (hub weights or scratch), or
    ``arch@file`` (a timm architecture with local weights, e.g. ``resnet50@resnet50.safetensors``
    for ImageNet training without the hub). Random initialisations are seeded with ``seed``."""
    import timm  # seconds to import: only training and model building need it

    torch.manual_seed(seed)
    if spec.startswith("zoo:"):
        recipe = zoo.get_recipe(spec)
        if init == "pretrained":
            model, _ = zoo.load(recipe.name)
        else:
            model = zoo.create_model(recipe)
        return ClassifierInit(
            model.cpu().train(), recipe.arch, dict(recipe.model_kwargs), list(recipe.modifications), recipe.num_classes,
            recipe.mean, recipe.std, (3, recipe.data.size, recipe.data.size), recipe.interpolation,
        )
    if "@" in spec:  # a timm architecture with weights from a local file (offline ImageNet training)
        if init == "scratch":
            raise UsageError(f"classifier {spec!r} with init=scratch: a weights file only makes sense with init=pretrained")
        arch = spec.split("@", 1)[0]
        model, _ = load_local_weights(arch, spec.split("@", 1)[1])
        return _timm_init(model, arch)
    if not timm.is_model(spec.split(".")[0]):
        raise UsageError(f"unknown classifier {spec!r}: expected zoo:<name> or a timm model{close_matches(spec, timm.list_models())}")
    kw = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        model = timm.create_model(spec, pretrained=init == "pretrained", **kw)
    except Exception as exc:
        raise UsageError(f"cannot create {spec!r} (init={init}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return _timm_init(model, spec)


def _timm_init(model: nn.Module, arch: str) -> ClassifierInit:
    """A ``ClassifierInit`` for a timm model, with its own data config (mean, std, size)."""
    import timm.data  # see build_classifier: deferred heavy import

    cfg = timm.data.resolve_data_config({}, model=model)
    return ClassifierInit(
        model.train(), arch.split(".")[0], {}, [], int(model.num_classes),
        tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]), tuple(int(v) for v in cfg["input_size"]),
        str(cfg.get("interpolation", "bilinear")),
    )


__all__ = ["ClassifierInit", "build_classifier"]
