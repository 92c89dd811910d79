"""The classifier zoo: small timm classifiers trained from scratch on the synthetic benchmark.

Every zoo classifier is a plain timm model, ``timm.create_model(arch, pretrained=False,
num_classes=K, **model_kwargs)`` followed by optional named post-hoc modifications (see
``MODIFICATIONS``), trained by a fixed, seeded recipe (``ZooRecipe``) on images rendered by
``salbench.datasets.synthetic``. Classifier specs name them ``zoo:<name>``.

Cache layout, under ``zoo_home()`` = ``salbench.store.path("zoo")`` (``$SALBENCH_HOME/zoo``)::

    <name>-<recipe key>/model.safetensors   the weights (strict state dict of create_model(recipe))
    <name>-<recipe key>/meta.json           recipe, data spec, val top-1, timings, preprocessing
    data/synthetic-<cfg key>-<split>-<n>.npy (+ -labels.npy)   rendered uint8 images, shared
    .locks/                                  one lock file per model (concurrent builds wait)

A model directory is written under a temporary name and renamed into place in one step, so an
interrupted build never leaves a directory that ``load`` would accept. The recipe key hashes every
recipe field (architecture, kwargs, modifications, data config, hyperparameters, seed), so a change
of any of them trains a new model next to the old one.

Determinism: the weights are seeded (``torch.manual_seed(seed)`` before the model is built, data
order and augmentation from ``numpy.random.default_rng(seed)``) and training runs on the CPU, so the
same recipe gives the same weights on the same machine with the same torch thread count
(different thread counts can change floating-point reduction order in the last bits).

Recipes are tuned for a 2-core CPU: all four default models train from an empty cache in a few
minutes together, each reaching >= 95% top-1 on 1000 validation images. The CNNs keep an output
stride of 8 (an 8x8 final feature map at 64x64 input) and timm's global-average-pool + linear head,
so CAM-family methods get a usable resolution; the ViT uses 8x8 patches (an 8x8 token grid).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from salbench import store
from salbench.datasets.synthetic import SyntheticConfig, SyntheticDataset, render
from salbench.errors import UsageError
from salbench.registry import Registry
from salbench.util import freeze, jsonable

#: Bumped when the training code changes in a way that changes the weights a recipe gives.
ZOO_FORMAT = 1
#: Accuracy every zoo classifier must reach on the validation split.
MIN_VAL_TOP1 = 0.95

ZOO: Registry["ZooRecipe"] = Registry("zoo classifier")


# ----------------------------------------------------------------------------------------------
# Post-hoc modifications: deterministic, named, applied after timm.create_model (and on load).


def _no_maxpool(model: nn.Module) -> None:
    """ResNet: drop the stem max-pool (halves the output stride)."""
    if not hasattr(model, "maxpool"):
        raise UsageError(f"modification 'no_maxpool': {type(model).__name__} has no maxpool")
    model.maxpool = nn.Identity()


MODIFICATIONS: dict[str, Callable[[nn.Module], None]] = {"no_maxpool": _no_maxpool}


# ----------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class ZooRecipe:
    """Everything that determines a zoo classifier's weights.

    Training: ``steps`` optimiser steps of ``batch_size`` images drawn without replacement (one
    shuffled pass after another) from the first ``train_images`` images of the synthetic ``train``
    split; PyTorch's one-cycle schedule (``OneCycleLR``: cosine warm-up from ``lr / div_factor`` to
    ``lr`` over ``warmup_frac`` of the steps, cosine annealing to ``lr / div_factor /
    final_div_factor``, and with ``cycle_momentum`` Adam's beta1 / SGD's momentum cycled between 0.85
    and 0.95); cross-entropy with ``label_smoothing``; weight decay on weights with ``ndim > 1``
    only. ``max_shift`` > 0 adds a random cyclic translation of up to
    that many pixels (one draw per batch). ``init="torch"`` re-initialises every ``Conv2d`` and
    ``Linear`` with PyTorch's default (Kaiming-uniform) after timm built the model: timm's
    ConvNeXt/ViT init (truncated normal, std 0.02) leaves these tiny models nearly linear at the
    start and costs them hundreds of steps on a plateau. Validation: top-1 on the first ``val_images`` images of
    the ``val`` split.
    """

    name: str
    arch: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    modifications: tuple[str, ...] = ()
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    train_images: int = 20000
    steps: int = 600
    batch_size: int = 128
    init: str = "timm"  # "timm": the model's own init; "torch": PyTorch defaults for every conv/linear
    optimizer: str = "adamw"  # "adamw" | "sgd" (Nesterov momentum 0.9)
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.15
    div_factor: float = 25.0
    final_div_factor: float = 1e3
    cycle_momentum: bool = True
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    max_shift: int = 0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    interpolation: str = "bilinear"
    seed: int = 0
    val_images: int = 1000
    min_val_top1: float = MIN_VAL_TOP1

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_kwargs", freeze(dict(self.model_kwargs)))
        object.__setattr__(self, "modifications", tuple(self.modifications))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.optimizer not in ("adamw", "sgd"):
            raise UsageError(f"zoo recipe {self.name!r}: optimizer={self.optimizer!r}, expected 'adamw' or 'sgd'")
        if self.init not in ("timm", "torch"):
            raise UsageError(f"zoo recipe {self.name!r}: init={self.init!r}, expected 'timm' or 'torch'")
        bad = [m for m in self.modifications if m not in MODIFICATIONS]
        if bad:
            raise UsageError(f"zoo recipe {self.name!r}: unknown modification(s) {bad}; known: {sorted(MODIFICATIONS)}")
        if self.steps < 1 or self.batch_size < 1 or self.train_images < self.batch_size:
            raise UsageError(f"zoo recipe {self.name!r}: need steps >= 1 and train_images >= batch_size >= 1")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UsageError(f"zoo recipe {self.name!r}: mean and std need three values")

    def __hash__(self) -> int:  # model_kwargs is a dict: hash the canonical form instead
        return hash(self.key())

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (the data config as a nested dict)."""
        return jsonable(self)

    def key(self) -> str:
        """12 hex digits hashing every field and the zoo format version."""
        blob = json.dumps({"format": ZOO_FORMAT, **self.to_dict()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> "ZooRecipe":
        return dataclasses.replace(self, **changes)


def register_recipe(obj: ZooRecipe | Callable[[], ZooRecipe] | None = None, *, replace: bool = False):
    """Register a recipe in ``ZOO``: call it with a ``ZooRecipe``, or use it as a decorator over a
    zero-argument factory returning one (timm style). Registering an equal recipe under the same
    name again is a no-op; a different one needs ``replace=True`` (meant for tests)."""

    def add(recipe: ZooRecipe) -> ZooRecipe:
        if not isinstance(recipe, ZooRecipe):
            raise TypeError(f"register_recipe expects a ZooRecipe, got {type(recipe).__name__}")
        if recipe.name in ZOO:
            old = ZOO.get(recipe.name)
            if old == recipe:
                return old
            if not replace:
                raise ValueError(f"zoo classifier {recipe.name!r} is registered twice with different recipes")
            ZOO._entries.pop(recipe.name)
        ZOO.add(recipe.name, recipe)
        return recipe

    if obj is None:
        return lambda fn: (add(fn()), fn)[1]
    if isinstance(obj, ZooRecipe):
        return add(obj)
    add(obj())
    return obj


def get_recipe(name: str) -> ZooRecipe:
    """The registered recipe for ``name`` (a leading ``zoo:`` is accepted)."""
    return ZOO.get(name[4:] if name.startswith("zoo:") else name)


# ----------------------------------------------------------------------------------------------
# The four default classifiers. Output stride 8 everywhere (8x8 final map / token grid at 64x64).


# Shared by the four default recipes: 30k rendered training images (rendered once, ~10-20 s), batch
# 128, AdamW + one-cycle, label smoothing 0.1. Steps were chosen on a 2-core CPU so that each model
# trains in about 45-90 s and still clears 97% val top-1 with a margin (measured: see meta.json).
TRAIN_IMAGES = 30000


@register_recipe
def _resnet() -> ZooRecipe:
    # BasicBlock ResNet, one block per stage; stem 32x32 -> max-pool 16x16 -> stages 16, 8, 8, 8
    # (stages 3 and 4 dilated by timm's output_stride=8).
    return ZooRecipe(
        name="resnet",
        arch="resnet18",
        model_kwargs=dict(layers=(1, 1, 1, 1), channels=(16, 32, 48, 96), stem_width=16, output_stride=8),
        train_images=TRAIN_IMAGES,
        steps=320,
        lr=3e-3,
    )


@register_recipe
def _efficientnet() -> ZooRecipe:
    # timm's five-stage test EfficientNet (edge-residual + inverted-residual blocks with SE), 1x1
    # conv head before the global pool; stages 32, 16, 8, 8, 8 (last two dilated).
    return ZooRecipe(
        name="efficientnet",
        arch="test_efficientnet",
        model_kwargs=dict(output_stride=8),
        train_images=TRAIN_IMAGES,
        steps=350,
        lr=3e-3,
    )


@register_recipe
def _convnext() -> ZooRecipe:
    # ConvNeXt with the overlapping stem (3x3/2 conv, GELU, 3x3/2 conv: with the 4x4 patchify stem
    # these tiny ConvNeXts did not learn the textures in budget), stages 16, 8, 8, 8 (last two
    # dilated, 3x3 depthwise there), PyTorch default init (timm's std-0.02 init plateaus for
    # hundreds of steps).
    return ZooRecipe(
        name="convnext",
        arch="convnext_atto",
        model_kwargs=dict(
            depths=(2, 2, 2, 1), dims=(32, 48, 64, 96), kernel_sizes=(7, 7, 3, 3), stem_type="overlap_act", output_stride=8
        ),
        train_images=TRAIN_IMAGES,
        init="torch",
        steps=450,
        lr=3e-3,
    )


@register_recipe
def _vit() -> ZooRecipe:
    # ViT with 8x8 patches (an 8x8 token grid), no class token, average-pooled tokens; PyTorch
    # default init and +-4 px random translations (without them it overfits: ~96.5% val).
    return ZooRecipe(
        name="vit",
        arch="vit_tiny_patch16_224",
        model_kwargs=dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, class_token=False, global_pool="avg"),
        train_images=TRAIN_IMAGES,
        init="torch",
        max_shift=4,
        steps=700,
        lr=3e-3,
    )


# ----------------------------------------------------------------------------------------------
# Paths, models


def zoo_home() -> pathlib.Path:
    """The zoo's folder in the store: ``$SALBENCH_HOME/zoo``."""
    return store.path("zoo")


def zoo_dir(recipe: ZooRecipe | str) -> pathlib.Path:
    """The cache directory of a recipe (or of a registered name): ``zoo_home()/<name>-<key>``."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    return zoo_home() / f"{recipe.name}-{recipe.key()}"


def _complete(d: pathlib.Path) -> bool:
    return (d / "meta.json").is_file() and (d / "model.safetensors").is_file()


def is_built(name: str) -> bool:
    """Whether the registered recipe ``name`` has a complete cached model."""
    return _complete(zoo_dir(get_recipe(name)))


#: ``timm.create_model`` arguments that load files or fetch weights: never taken from a meta.json
#: (``checkpoint_path`` would ``torch.load`` an arbitrary file with pickle enabled).
LOADER_ARGUMENTS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"})


def create_architecture(arch: str, model_kwargs: Mapping[str, Any], modifications: Iterable[str], num_classes: int) -> nn.Module:
    """An untrained timm model rebuilt from recorded metadata (a recipe, or a cached meta.json).

    ``model_kwargs`` may only shape the architecture: arguments that load files or weights
    (``LOADER_ARGUMENTS``) are refused, since a cached meta.json is data, not trusted code.
    """
    if not isinstance(arch, str) or not isinstance(model_kwargs, Mapping):
        raise UsageError(f"bad model metadata: arch={arch!r} must be a string and model_kwargs a mapping")
    bad = sorted(set(map(str, model_kwargs)) & LOADER_ARGUMENTS)
    if bad:
        raise UsageError(f"model metadata for {arch!r} passes {bad} to timm.create_model: refused (architecture arguments only)")
    import timm  # seconds to import: deferred so that commands which build no model never pay for it

    model = timm.create_model(arch, pretrained=False, num_classes=int(num_classes), **freeze(dict(model_kwargs)))
    for mod in modifications:
        try:
            MODIFICATIONS[mod](model)
        except KeyError:
            raise UsageError(f"unknown zoo model modification {mod!r}; known: {sorted(MODIFICATIONS)}") from None
    return model


def create_model(recipe: ZooRecipe | str) -> nn.Module:
    """The recipe's architecture, untrained (timm model + post-hoc modifications), in train mode."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    return create_architecture(recipe.arch, recipe.model_kwargs, recipe.modifications, recipe.num_classes)


def _set_data_config(model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Make ``timm.data.resolve_data_config(model=model)`` give the zoo preprocessing."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        input_size=tuple(meta["input_size"]),
        interpolation=meta["interpolation"],
        crop_pct=1.0,
        num_classes=int(meta["num_classes"]),
        url="",
        hf_hub_id=None,
    )
    model.pretrained_cfg = cfg
    with contextlib.suppress(AttributeError):
        model.default_cfg = cfg


# ----------------------------------------------------------------------------------------------
# Data (rendered once per synthetic config and shared by every recipe)


def _render_range(cfg: SyntheticConfig, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    imgs = np.empty((stop - start, cfg.size, cfg.size, 3), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int64)
    for j, i in enumerate(range(start, stop)):
        img, label, _, _ = render(cfg, split, i)
        imgs[j] = np.round(img * 255).astype(np.uint8)
        labels[j] = label
    return imgs, labels


def _render(cfg: SyntheticConfig, split: str, n: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images ``0..n-1`` of a split as uint8 NxHxWx3 (identical to ``SyntheticDataset.arrays``),
    rendered in worker processes when the platform forks cheaply."""
    workers = min(os.cpu_count() or 1, 8)
    chunk = 500
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    imgs = np.empty((n, cfg.size, cfg.size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    bar = tqdm(total=n, desc=f"zoo: render {split} x{n}", disable=not progress, leave=False, unit="img")
    pool = None
    if workers > 1 and n >= 2 * chunk and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        if pool is not None:
            futures = {pool.submit(_render_range, cfg, split, s, e): (s, e) for s, e in bounds}
            for fut in concurrent.futures.as_completed(futures):
                s, e = futures[fut]
                imgs[s:e], labels[s:e] = fut.result()
                bar.update(e - s)
        else:
            for s, e in bounds:
                imgs[s:e], labels[s:e] = _render_range(cfg, split, s, e)
                bar.update(e - s)
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    return imgs, labels


def _cached_split(cfg: SyntheticConfig, split: str, n: int) -> tuple[pathlib.Path, pathlib.Path] | None:
    """The smallest cached (images, labels) file pair of ``cfg``/``split`` holding at least ``n`` images."""
    data_dir = zoo_home() / "data"
    stem = f"synthetic-{cfg.key()}-{split}-"
    sizes = []
    for path in data_dir.glob(stem + "*.npy"):
        size = path.name[len(stem) : -len(".npy")]
        if size.isdigit() and int(size) >= n and path.with_name(f"{stem}{size}-labels.npy").is_file():
            sizes.append(int(size))
    if not sizes:
        return None
    size = min(sizes)
    return data_dir / f"{stem}{size}.npy", data_dir / f"{stem}{size}-labels.npy"


def _render_split(cfg: SyntheticConfig, split: str, n: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    data_dir = zoo_home() / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    imgs, labels = _render(cfg, split, n, progress)
    stem = f"synthetic-{cfg.key()}-{split}-{n}"
    store.atomic_save_npy(data_dir / f"{stem}-labels.npy", labels)  # labels first: images mark completeness
    store.atomic_save_npy(data_dir / f"{stem}.npy", imgs)
    return imgs, labels


def split_arrays(cfg: SyntheticConfig, split: str, n: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (uint8 NxHxWx3, as ``SyntheticDataset.arrays`` gives them) and labels
    of a synthetic split, cached as ``.npy`` under ``zoo_home()/data``. A cached file with more
    images of the same config is sliced (images depend only on their index), so recipes with
    different training-set sizes share one render."""
    found = _cached_split(cfg, split, n)
    if found is not None:
        try:
            imgs, labels = np.load(found[0], mmap_mode="r"), np.load(found[1], mmap_mode="r")
            if imgs.shape[0] == labels.shape[0] >= n and imgs.shape[1:] == (cfg.size, cfg.size, 3):
                return np.array(imgs[:n]), np.array(labels[:n])
        except (OSError, ValueError):
            pass  # unreadable: render again (the atomic save replaces it)
    return _render_split(cfg, split, n, progress)


# ----------------------------------------------------------------------------------------------
# Training


def _to_input(x_u8: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(x_u8).permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(mean).div_(std).contiguous()


def _optimizer(recipe: ZooRecipe, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean: Iterable[float], std: Iterable[float], batch_size: int = 250) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 NxHxWx3 images."""
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(_to_input(images[i : i + batch_size], m, s).to(device))
        correct += int((logits.argmax(1).cpu() == torch.from_numpy(labels[i : i + batch_size])).sum())
    return correct / len(images)


def _train(recipe: ZooRecipe, images: np.ndarray, labels: np.ndarray, progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    model = create_model(recipe)
    if recipe.init == "torch":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()
    model.train()
    opt = _optimizer(recipe, model)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.lr,
        total_steps=recipe.steps,
        pct_start=recipe.warmup_frac,
        anneal_strategy="cos",
        cycle_momentum=recipe.cycle_momentum,
        div_factor=recipe.div_factor,
        final_div_factor=recipe.final_div_factor,
    )
    mean = torch.tensor(recipe.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, dtype=torch.float32).view(1, 3, 1, 1)
    n, bs = recipe.train_images, recipe.batch_size
    per_epoch = n // bs
    loss_avg = acc_avg = None
    perm = rng.permutation(n)
    bar = tqdm(total=recipe.steps, desc=f"zoo:{recipe.name}", disable=not progress, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for step in range(recipe.steps):
            j = step % per_epoch
            if j == 0 and step > 0:
                perm = rng.permutation(n)
            idx = np.sort(perm[j * bs : (j + 1) * bs])
            x = _to_input(images[idx], mean, std)
            y = torch.from_numpy(labels[idx])
            if recipe.max_shift > 0:
                dy, dx = (int(v) for v in rng.integers(-recipe.max_shift, recipe.max_shift + 1, 2))
                x = torch.roll(x, (dy, dx), (2, 3))
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            sched.step()
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"zoo:{recipe.name}: training diverged (loss {loss.item()}) at step {step}")
            acc = (logits.argmax(1) == y).float().mean().item()
            loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
            acc_avg = acc if acc_avg is None else 0.95 * acc_avg + 0.05 * acc
            bar.update(1)
            if step % 10 == 0 or step == recipe.steps - 1:
                bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.3f}", refresh=False)
    finally:
        bar.close()
    train_time = time.perf_counter() - t0
    model.eval()
    return model, {"train_time_s": round(train_time, 2), "train_loss": round(float(loss_avg), 4), "train_acc": round(float(acc_avg), 4)}


# ----------------------------------------------------------------------------------------------
# Build / load


def _read_meta(d: pathlib.Path) -> dict[str, Any]:
    with open(d / "meta.json") as f:
        return json.load(f)


def _build_one(recipe: ZooRecipe, force: bool, progress: bool) -> dict[str, Any]:
    final = zoo_dir(recipe)
    with store.lock("zoo", f"{recipe.name}-{recipe.key()}"):
        if _complete(final) and not force:
            return _read_meta(final)
        t_start = time.perf_counter()
        cfg = recipe.data
        images, labels = split_arrays(cfg, "train", recipe.train_images, progress=progress)
        val_images, val_labels = split_arrays(cfg, "val", recipe.val_images, progress=progress)
        data_time = time.perf_counter() - t_start
        model, stats = _train(recipe, images, labels, progress)
        val_top1 = evaluate(model, val_images, val_labels, recipe.mean, recipe.std)
        train_ds = SyntheticDataset(cfg, "train", recipe.train_images)
        val_ds = SyntheticDataset(cfg, "val", recipe.val_images)
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 3, cfg.size, cfg.size))
        passed = val_top1 >= recipe.min_val_top1
        meta: dict[str, Any] = {
            "name": recipe.name,
            "spec": f"zoo:{recipe.name}",
            "recipe_key": recipe.key(),
            "zoo_format": ZOO_FORMAT,
            "arch": recipe.arch,
            "family": type(model).__module__.rsplit(".", 1)[-1],
            "model_class": type(model).__name__,
            "model_kwargs": jsonable(recipe.model_kwargs),
            "modifications": list(recipe.modifications),
            "num_params": sum(p.numel() for p in model.parameters()),
            "feature_shape": list(feats.shape[1:]),
            "data": {
                "synthetic": jsonable(cfg),
                "synthetic_key": cfg.key(),
                "train_spec": train_ds.spec,
                "val_spec": val_ds.spec,
            },
            "recipe": recipe.to_dict(),
            "seed": recipe.seed,
            "steps": recipe.steps,
            "epochs": round(recipe.steps * recipe.batch_size / recipe.train_images, 3),
            "val_top1": val_top1,
            "val_images": recipe.val_images,
            "min_val_top1": recipe.min_val_top1,
            "passed": passed,
            **stats,
            "data_time_s": round(data_time, 2),
            "build_time_s": round(time.perf_counter() - t_start, 2),
            "torch_threads": torch.get_num_threads(),
            "num_classes": recipe.num_classes,
            "class_names": list(train_ds.class_names),
            "mean": list(recipe.mean),
            "std": list(recipe.std),
            "input_size": [3, cfg.size, cfg.size],
            "interpolation": recipe.interpolation,
            "crop_pct": 1.0,
            "versions": store.versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with store.atomic_directory(final) as tmp:  # force, or a broken leftover: replaced in one rename
            state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"name": recipe.name, "recipe_key": recipe.key(), "arch": recipe.arch})
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
    if not passed:
        msg = (
            f"zoo:{recipe.name} reached only {100 * val_top1:.1f}% val top-1 (< {100 * recipe.min_val_top1:.0f}% required); "
            f"cached anyway at {final} with passed=false in meta.json"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
    return meta


def build(names: list[str] | str | None = None, *, force: bool = False, progress: bool = True) -> list[dict]:
    """Train and cache the named zoo classifiers (default: all registered) that are not cached yet
    (all of them with ``force``); return their meta dicts in order."""
    if names is None:
        selected = ZOO.names()
    else:
        selected = ZOO.select([n[4:] if n.startswith("zoo:") else n for n in ([names] if isinstance(names, str) else names)])
    recipes = [ZOO.get(n) for n in selected]
    todo = [r for r in recipes if force or not _complete(zoo_dir(r))]
    largest: dict[SyntheticConfig, int] = {}
    for r in todo:  # render each config's largest training set once; the others slice it
        largest[r.data] = max(largest.get(r.data, 0), r.train_images)
    for cfg, n in largest.items():
        if _cached_split(cfg, "train", n) is None:
            _render_split(cfg, "train", n, progress)
    return [_build_one(r, force, progress) for r in recipes]


def load(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained zoo classifier ``name`` (built on demand) in eval mode on ``device``, and its meta."""
    recipe = get_recipe(name)
    d = zoo_dir(recipe)
    if not _complete(d):
        build([recipe.name])
    meta = _read_meta(d)
    model = create_architecture(meta["arch"], meta["model_kwargs"], meta.get("modifications", ()), meta["num_classes"])
    model.load_state_dict(load_file(str(d / "model.safetensors"), device="cpu"), strict=True)
    _set_data_config(model, meta)
    if not meta.get("passed", True):
        warnings.warn(f"zoo:{recipe.name} missed the accuracy bar: val top-1 {100 * meta['val_top1']:.1f}%", RuntimeWarning, stacklevel=2)
    return model.eval().to(device), meta


__all__ = [
    "MIN_VAL_TOP1",
    "MODIFICATIONS",
    "ZOO",
    "ZooRecipe",
    "build",
    "create_architecture",
    "create_model",
    "evaluate",
    "get_recipe",
    "is_built",
    "load",
    "register_recipe",
    "split_arrays",
    "zoo_dir",
    "zoo_home",
]
