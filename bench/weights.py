"""Local classifier weights (``arch@path`` specs) and classifier/dataset class-count checks.

``load_local_weights(arch, path)`` builds ``timm.create_model(arch, pretrained=False,
num_classes=N)`` with N read from the checkpoint's classifier weight (the parameter timm's
pretrained config names, e.g. ``fc.weight``, ``head.fc.weight``), then loads the file strictly:

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: ``torch.load(map_location="cpu", weights_only=True)``
  (no pickled code runs); ``.safetensors``: ``safetensors.torch.load_file``;
* a state dict nested under ``state_dict``, ``model``, ``model_state_dict`` or ``module`` is
  unwrapped (repeatedly), and a prefix shared by every key (``module.`` from DataParallel/DDP,
  ``_orig_mod.`` from ``torch.compile``, ``model.`` from Lightning) is stripped when the model's
  own keys lack it;
* missing, unexpected or mis-shaped keys are refused with a UsageError naming a few of each.

Class counts: ``check_class_count(classifier_num_classes, dataset_num_classes, spec)`` returns the
logit offset the runner must apply: 0 when the counts agree, 1 for a 1001-way classifier (index 0
is the "background" class of TF-slim/Inception-era checkpoints) on a 1000-class dataset, and
refuses anything else. ``drop_background_class(classifier)`` applies an offset of 1 for good by
slicing the first row off the model's classifier layer, so every code path (logits, CAM weights)
sees the dataset's 1000 classes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salbench.errors import UsageError, close_matches

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")
#: How many missing/unexpected keys an error message lists.
SHOW_KEYS = 5


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from the usual containers (see module docstring)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:
            raise UsageError(f"cannot read safetensors file {str(p)!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled objects other than tensors/containers, truncated file, ...
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise UsageError(f"cannot read weights file {str(p)!r} with torch.load(weights_only=True): {type(exc).__name__}: {first}") from None
    else:
        raise UsageError(f"weights file {str(p)!r}: unknown extension {p.suffix!r}; expected one of {', '.join((*TORCH_SUFFIXES, '.safetensors'))}")
    for _ in range(4):  # {"state_dict": {"model": {...}}} and similar
        if not isinstance(obj, dict):
            break
        nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None or (all(isinstance(v, torch.Tensor) for v in obj.values()) and obj):
            break
        obj = nested
    if not isinstance(obj, dict):
        raise UsageError(f"weights file {str(p)!r} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UsageError(f"weights file {str(p)!r}: no tensors found (top-level keys: {sorted(map(str, obj))[:SHOW_KEYS]})")
    return tensors


def strip_prefixes(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes shared by every key that the model's own keys do not have."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in model_keys):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _classifier_names(arch: str) -> list[str]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    name = getattr(cfg, "classifier", None) if cfg is not None else None
    if name is None:
        return ["head", "fc", "classifier", "head.fc"]
    return list(name) if isinstance(name, (list, tuple)) else [name]


def infer_num_classes(arch: str, sd: dict[str, torch.Tensor]) -> int | None:
    """Rows of the checkpoint's classifier weight (None when the file has no classifier)."""
    for name in _classifier_names(arch):
        w = sd.get(f"{name}.weight")
        if w is not None and w.ndim >= 1:
            return int(w.shape[0])
    return None


def _few(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOW_KEYS else ""
    return ", ".join(keys[:SHOW_KEYS]) + more


def load_local_weights(arch: str, path: str) -> tuple[nn.Module, dict[str, Any]]:
    """A timm ``arch`` with weights from a local file, in eval mode, and provenance metadata."""
    import timm

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"weights file {path!r} for {arch!r} does not exist" if not p.exists() else f"weights path {path!r} is not a file")
    base = arch.split(".")[0]
    if not timm.is_model(base):
        raise UsageError(f"unknown timm model {base!r} in '{arch}@{path}'{close_matches(base, timm.list_models())}")
    sd = read_state_dict(p)
    kw: dict[str, Any] = {}
    n = infer_num_classes(arch, strip_prefixes(dict(sd), set()))
    if n is not None:
        kw["num_classes"] = n
    try:
        model = timm.create_model(arch, pretrained=False, **kw)
    except Exception as exc:
        raise UsageError(f"cannot create timm model {arch!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    own = model.state_dict()
    sd = strip_prefixes(sd, set(own))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (file vs model): {_few(shapes)}")
        raise UsageError(f"weights {str(p)!r} do not fit timm model {arch!r}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
    model.eval()
    meta = {"source": "local-file", "arch": arch, "path": str(p.resolve()), "file_sha256": file_sha256(p)}
    return model, meta


# --------------------------------------------------------------------------- class counts
def check_class_count(classifier_num_classes: int, dataset_num_classes: int, spec: str) -> int:
    """The logit offset to apply to classifier ``spec`` on a dataset, or a UsageError.

    0: the counts agree. 1: a 1001-way classifier on a 1000-class dataset, whose index 0 is the
    background class: use ``logits[:, 1:1001]`` (or ``drop_background_class``) so that logit
    ``k + 1`` scores dataset class ``k``. Anything else cannot be evaluated.
    """
    c, d = int(classifier_num_classes), int(dataset_num_classes)
    if c == d:
        return 0
    if c == d + 1 == 1001:
        return 1
    hint = " (pass classes=imagenet or num_classes= to a folder dataset whose labels are ImageNet indices)" if c == 1000 else ""
    raise UsageError(f"classifier {spec!r} has {c} classes but the dataset has {d}{hint}")


def slice_logits(logits: torch.Tensor, offset: int, num_classes: int) -> torch.Tensor:
    """The dataset's ``num_classes`` logits of a classifier with a class offset."""
    return logits if offset == 0 and logits.shape[-1] == num_classes else logits[..., offset : offset + num_classes]


def drop_background_class(classifier: nn.Module) -> nn.Module:
    """Remove logit 0 (background) of a 1001-way classifier in place; returns it.

    Works on a ``salbench.classifiers.Classifier`` (its ``model``, its BN-folded ``scorer`` when
    it has one, and ``num_classes`` are updated) or a bare timm model: the classifier layer
    (``Linear`` or 1x1 ``Conv2d``) keeps rows 1.., so logits, gradients and CAM weights all follow
    the dataset's class order.
    """
    model = getattr(classifier, "model", classifier)
    for m in (model, getattr(classifier, "scorer", None)):
        if m is not None:
            _drop_first_head_row(m)
    if model is not classifier and hasattr(classifier, "num_classes"):
        classifier.num_classes = int(classifier.num_classes) - 1
    if hasattr(classifier, "scorer_changed"):
        classifier.scorer_changed()
    return classifier


def _drop_first_head_row(model: nn.Module) -> None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, (list, tuple)):
        heads = list(head)
    else:
        heads = [head]
    names = {id(m): n for n, m in model.named_modules()}
    for h in heads:
        if not isinstance(h, (nn.Linear, nn.Conv2d)) or id(h) not in names:
            raise UsageError(f"cannot drop the background class: classifier layer is {type(h).__name__}, not Linear/Conv2d")
        out = h.out_features if isinstance(h, nn.Linear) else h.out_channels
        if out < 2:
            raise UsageError(f"cannot drop the background class of a {out}-way classifier")
        if isinstance(h, nn.Linear):
            new: nn.Module = nn.Linear(h.in_features, out - 1, bias=h.bias is not None)
        else:
            new = nn.Conv2d(h.in_channels, out - 1, h.kernel_size, h.stride, h.padding, h.dilation, h.groups, bias=h.bias is not None)
        new = new.to(device=h.weight.device, dtype=h.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(h.weight[1:])
            if h.bias is not None:
                new.bias.copy_(h.bias[1:])  # type: ignore[union-attr]
        new.weight.requires_grad_(h.weight.requires_grad)
        if new.bias is not None and h.bias is not None:
            new.bias.requires_grad_(h.bias.requires_grad)
        new.train(h.training)
        _set_submodule(model, names[id(h)], new)
    if hasattr(model, "num_classes"):
        model.num_classes = int(model.num_classes) - 1


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
