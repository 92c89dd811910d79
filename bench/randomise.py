"""Cascading model-parameter randomisation (Adebayo et al. 2018), cached like the zoo.

``layer_groups(model)``: the classifier's parameterised modules grouped by top-level block, from
the output back to the input: the top-level children that hold parameters, in reverse order, with
timm's stage/block lists (a top-level ``stages``/``blocks``/``layers``/``features`` container)
split into one group per stage or block. Parameters the model owns directly (a ViT's
``pos_embed``, ``cls_token``) belong to the input end, the last group. So ResNet gives ``fc,
layer4, ..., conv1``; ConvNeXt ``head, stages.3, ..., stem``; ViT ``head, fc_norm, blocks.N-1, ...,
patch_embed + pos_embed``.

``randomised_classifier(clf, depth, seed)``: a copy of ``clf`` whose top ``depth`` groups are
re-initialised (each module's own ``reset_parameters``, as Quantus' MPRT does; parameters with no
such method drawn from N(0, 0.02)). Group ``g`` is re-initialised from its own seed ``(seed, g)``,
so depth ``k + 1`` keeps depth ``k``'s draws: the randomisation cascades. The copy's state dict is
cached under ``$SALBENCH_HOME/sanity/`` keyed by the trained weights' sha256, the seed and the
depth (safetensors, atomic write); a cached copy is verified by its own sha256 on load.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from salbench import store
from salbench.classifiers import Classifier, state_dict_checksum

#: Top-level containers whose elements are stages or blocks (timm, torchvision): one group each.
STAGE_LISTS = ("stages", "blocks", "layers", "features")


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """(name, modules) per group, output end first; every parameter of ``model`` is in one group."""
    groups: list[tuple[str, list[nn.Module]]] = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in STAGE_LISTS and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            groups += [(f"{name}.{k}", [sub]) for k, sub in child.named_children() if any(True for _ in sub.parameters())]
        else:
            groups.append((name, [child]))
    own = [p for p in model.parameters(recurse=False)]
    if own:
        if groups:
            first_name, first_mods = groups[0]
            groups[0] = (f"{first_name}+own", [*first_mods, _Own(model)])
        else:
            groups.append(("own", [_Own(model)]))
    return groups[::-1]


class _Own(nn.Module):
    """Marks the parameters a model owns directly (not inside a child module)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.__dict__["target"] = model  # not a registered child: no cycle in named_modules()


def _reinit(modules: list[nn.Module], seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for top in modules:
            if isinstance(top, _Own):
                with torch.no_grad():
                    for p in top.target.parameters(recurse=False):
                        nn.init.normal_(p, std=0.02)
                continue
            for m in top.modules():
                direct = list(m.parameters(recurse=False))
                if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                    m.reset_parameters()
                elif direct:
                    with torch.no_grad():
                        for p in direct:
                            nn.init.normal_(p, std=0.02)
                if hasattr(m, "reset_running_stats") and callable(m.reset_running_stats):
                    m.reset_running_stats()


def group_seed(seed: int, group: int) -> int:
    return int(hashlib.sha256(f"mprt:{seed}:{group}".encode()).hexdigest()[:8], 16)


def randomise(model: nn.Module, depth: int, seed: int) -> list[str]:
    """Re-initialise the top ``depth`` groups of ``model`` in place; returns their names."""
    groups = layer_groups(model)
    depth = min(depth, len(groups))
    for g, (_, modules) in enumerate(groups[:depth]):
        _reinit(modules, group_seed(seed, g))
    return [n for n, _ in groups[:depth]]


def _cache_path(weights_sha256: str, seed: int, depth: int):
    return store.path("sanity") / f"{weights_sha256[:24]}-s{seed}-d{depth}.safetensors"


def randomised_classifier(clf: Classifier, depth: int, seed: int, cache: bool = True) -> Classifier:
    """A copy of ``clf`` with its top ``depth`` layer groups re-initialised (see the module doc).

    No BN-folded scorer: every forward of the copy uses the randomised weights. ``meta`` records
    the groups randomised (``mprt_layers``) and the copy's own ``weights_sha256``.
    """
    out = copy.deepcopy(clf)
    out.scorer = None
    model = out.model
    names = [n for n, _ in layer_groups(model)][: min(depth, len(layer_groups(model)))]
    base = clf.meta.get("weights_sha256") or state_dict_checksum(clf.model)
    path = _cache_path(base, seed, depth)
    state = None
    if cache and path.is_file():
        try:
            blob = path.read_bytes()
            state = st_load(blob)
        except Exception:  # a damaged file is rebuilt below
            state = None
    if state is not None:
        model.load_state_dict({k: v.to(out.device) for k, v in state.items()}, strict=True)
        if state_dict_checksum(model) != _stored_sha(path):
            state = None  # altered since written: rebuild from the trained weights
            model.load_state_dict(clf.model.state_dict(), strict=True)
    if state is None:
        with store.lock("sanity", path.stem):
            randomise(model, depth, seed)
            if cache:
                tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
                store.atomic_write_bytes(path, st_save(tensors, metadata={"base_sha256": base, "seed": str(seed), "depth": str(depth),
                                                                          "layers": ",".join(names)}))
                store.atomic_write_bytes(path.with_suffix(".sha256"), state_dict_checksum(model).encode())
    for p in model.parameters():
        p.requires_grad_(False)
    out.meta = {**clf.meta, "weights_sha256": state_dict_checksum(model), "mprt_base_sha256": base, "mprt_seed": seed,
                "mprt_depth": depth, "mprt_layers": names}
    return out


def _stored_sha(path) -> str | None:
    try:
        return path.with_suffix(".sha256").read_text().strip()
    except OSError:
        return None
