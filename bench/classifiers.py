"""Classifier wrapper: a timm model that takes images in [0,1] pixel space at any resolution.

Each wrapper owns its preprocessing (timm's data config: mean/std, input size, interpolation),
so classifiers with different preprocessing see the same masked image. It also exposes the
feature map that CAM-family methods read, found automatically:

* CNNs (``forward_features`` returns B x C x h x w): that output, the input of the head.
* NHWC backbones (Swin, some MLP-mixers: B x h x w x C): the same output, permuted to NCHW.
* Token models (ViT, DeiT: B x N x C), prefix tokens dropped and reshaped to the patch grid:
  - class-token heads: the *input* of the last block. The last block's output is unusable
    because the head reads only the class token, so patch tokens there have zero gradient;
  - heads that pool the patch tokens (``global_pool`` avg / max / avgmax): the output of
    ``forward_features``, which the head reads directly, as a CNN's. The last block's input
    of such a model gave anti-localised Grad-CAM maps on the zoo ViT (LE 95%, below the
    random control), the output tokens localise like the CNNs' maps.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salbench.device import autocast
from salbench.errors import NotApplicable, UsageError, close_matches
from salbench.registry import is_pattern, split_list

#: timm ``global_pool`` values whose head pools the patch tokens (not a class token or attention pool).
POOLED_TOKEN_HEADS = ("avg", "max", "avgmax")

_INTERP = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area", "lanczos": "bicubic", "random": "bilinear"}
#: Interpolation names a preprocessing override may give (timm's, mapped to torch modes).
INTERPOLATIONS = tuple(_INTERP)


@dataclass(frozen=True)
class Preprocess:
    """How a classifier wants its input: normalisation and input resolution."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    @classmethod
    def from_timm(cls, model: nn.Module, **overrides: Any) -> "Preprocess":
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=model)
        base = {
            "mean": tuple(float(v) for v in cfg["mean"]),
            "std": tuple(float(v) for v in cfg["std"]),
            "input_size": tuple(int(v) for v in cfg["input_size"]),
            "interpolation": str(cfg.get("interpolation", "bilinear")),
            "crop_pct": float(cfg.get("crop_pct", 1.0)),
        }
        return cls.from_dict({**base, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - known)
        if bad:
            raise UsageError(f"unknown preprocessing key(s) {bad}: expected some of {sorted(known)}")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                v = tuple(float(x) for x in d[key])
                if len(v) == 1:  # one value for all three channels
                    v = v * 3
                if len(v) != 3:
                    raise UsageError(f"preprocessing {key}={list(d[key])}: expected three values (R, G, B) or one")
                if key == "std" and min(v) <= 0:
                    raise UsageError(f"preprocessing std={list(d[key])}: expected values > 0")
                d[key] = v
        if "input_size" in d:
            v = d["input_size"]
            v = (3, int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)
            if len(v) == 2:
                v = (3, *v)
            d["input_size"] = v
        if "interpolation" in d and d["interpolation"] not in _INTERP:
            raise UsageError(f"preprocessing interpolation={d['interpolation']!r}: expected one of {sorted(_INTERP)}")
        return cls(**d)


@dataclass
class FeatureSpec:
    """What ``Classifier.forward_with_features`` returns as features, found on first use."""

    kind: str  # "nchw" | "nhwc" | "tokens" (last block input) | "token_output" | "module"
    channels: int
    grid: tuple[int, int] | None = None
    module: str | None = None
    prefix_tokens: int = 0


class Classifier(nn.Module):
    """A timm model behind a pixel-space interface: ``clf(x)`` with x in [0,1], B x 3 x H x W."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        preprocess: Preprocess,
        num_classes: int,
        *,
        meta: dict[str, Any] | None = None,
        amp_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        feature_layer: str | None = None,
    ):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.meta = dict(meta or {})
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.feature_layer = feature_layer
        self._features: FeatureSpec | None = None
        self.scorer: nn.Module | None = None  # BN-folded copy for no-grad forwards (set_scorer)
        self._frozen: tuple[int, torch.device, nn.Module] | None = None  # (id(scorer), device, its frozen CPU graph)
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------- preprocessing
    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel images -> model input: resize to the model's input size, then (x - mean) / std."""
        size = tuple(self.preprocess.input_size[1:])
        if tuple(x.shape[-2:]) != size:
            mode = _INTERP[self.preprocess.interpolation]
            kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=size, mode=mode, antialias=mode in ("bilinear", "bicubic"), **kw)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def set_scorer(self, scorer: nn.Module) -> None:
        """A faster model computing the same logits (BN folded into the convs), used by
        ``forward`` only when no gradient is recorded: scoring passes, where only logits matter.
        Gradients, hooks and modified backward rules always see ``model``, the function as
        trained: folding moves activations by float rounding, enough to flip a ReLU at zero or a
        near-tied max-pool choice and change a gradient map by up to 6.5e-2."""
        self.scorer = scorer.eval()
        for p in self.scorer.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            self.scorer.to(memory_format=torch.channels_last)
        self.scorer.to(self.device)

    def scorer_changed(self) -> None:
        """Call after changing ``scorer``'s weights in place: its frozen graph is built again."""
        self._frozen = None

    def _scoring_model(self) -> nn.Module:
        """The scorer, on a CPU in float32 as a frozen TorchScript graph (``freeze_for_cpu``),
        built on first use for the scorer and device it is used with."""
        scorer = self.scorer
        assert scorer is not None
        device = self.device
        if device.type != "cpu" or self.amp_dtype != torch.float32 or not FREEZE_ON_CPU:
            return scorer
        if self._frozen is None or self._frozen[0] != id(scorer) or self._frozen[1] != device:
            _, h, w = self.preprocess.input_size
            frozen, how = freeze_for_cpu(scorer, torch.rand(5, 3, h, w, generator=torch.Generator().manual_seed(0)))
            self.meta["scorer"] = how
            self._frozen = (id(scorer), device, frozen)
        return self._frozen[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self._scoring_model() if self.scorer is not None and not torch.is_grad_enabled() else self.model
        with autocast(self.device, self.amp_dtype):
            out = model(self.normalize(x))
        return out.float()

    # ----------------------------------------------------------------- features
    def _token_blocks(self) -> nn.Module | None:
        blocks = getattr(self.model, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
            return blocks[-1]
        return None

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the CAM feature map (B x C x h x w float32).

        The feature map is a fresh leaf of the autograd graph; the rest of the network reads a
        copy of it (not the leaf itself, so an in-place activation right after the feature layer,
        e.g. MobileNetV2's ReLU6 after ``conv_head``, works), and ``torch.autograd.grad(score,
        fmap)`` is cheap: the layers below it record no graph (their parameters are frozen and
        the input needs no gradient).
        """
        spec = self.features_spec()
        leaves: list[torch.Tensor] = []

        def to_leaf(t: torch.Tensor) -> torch.Tensor:
            if t.ndim == 4:  # NCHW feature map
                leaf = t.detach().float().requires_grad_(True)
                leaves.append(leaf)
                return leaf.to(t.dtype, copy=True)
            prefix, grid = spec.prefix_tokens, spec.grid
            leaf = t[:, prefix:].detach().float().transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid).requires_grad_(True)  # type: ignore[misc]
            leaves.append(leaf)
            return torch.cat([t[:, :prefix].detach(), leaf.flatten(2).transpose(1, 2).to(t.dtype)], dim=1)

        handle = None
        if spec.kind == "tokens":
            block = self._token_blocks()
            assert block is not None
            handle = block.register_forward_pre_hook(lambda _m, args: (to_leaf(args[0]), *args[1:]))
        elif spec.kind == "module":
            module = self.model.get_submodule(spec.module)  # type: ignore[arg-type]
            handle = module.register_forward_hook(lambda _m, _a, out: to_leaf(out))
        try:
            with torch.enable_grad(), autocast(self.device, self.amp_dtype):
                feats = self.model.forward_features(self.normalize(x))
                if spec.kind in ("nchw", "token_output"):
                    feats = to_leaf(feats)
                elif spec.kind == "nhwc":
                    feats = to_leaf(feats.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
                logits = self.model.forward_head(feats)
        finally:
            if handle is not None:
                handle.remove()
        return logits.float(), leaves[-1]

    def features_spec(self) -> FeatureSpec:
        """Find (once) which tensor is the CAM feature map; NotApplicable when none fits."""
        if self._features is not None:
            return self._features
        _, h, w = self.preprocess.input_size
        probe = torch.zeros(1, 3, h, w, device=self.device)
        nfeat = int(getattr(self.model, "num_features", -1))
        prefix = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        with torch.no_grad():
            if self.feature_layer:
                captured: list[torch.Tensor] = []
                try:
                    module = self.model.get_submodule(self.feature_layer)
                except AttributeError:
                    names = [n for n, _ in self.model.named_modules()]
                    raise UsageError(f"feature layer {self.feature_layer!r} not in {self.name}{close_matches(self.feature_layer, names)}") from None
                hnd = module.register_forward_hook(lambda _m, _a, out: captured.append(out))
                try:
                    self.model(self.normalize(probe))
                finally:
                    hnd.remove()
                out = captured[-1]
                grid = token_grid(self.model, out.shape[1] - prefix) if out.ndim == 3 else None
                self._features = FeatureSpec("module", int(out.shape[-1] if out.ndim == 3 else out.shape[1]), grid, self.feature_layer, prefix)
                return self._features
            feats = self.model.forward_features(self.normalize(probe))
        if feats.ndim == 4 and feats.shape[1] == nfeat:
            self._features = FeatureSpec("nchw", nfeat, tuple(feats.shape[2:]))
        elif feats.ndim == 4 and feats.shape[3] == nfeat:
            self._features = FeatureSpec("nhwc", nfeat, tuple(feats.shape[1:3]))
        elif feats.ndim == 3 and self._token_blocks() is not None:
            grid = token_grid(self.model, feats.shape[1] - prefix)
            if grid is None:
                raise NotApplicable(f"{self.name}: cannot reshape {feats.shape[1] - prefix} tokens to a patch grid")
            kind = "token_output" if getattr(self.model, "global_pool", None) in POOLED_TOKEN_HEADS else "tokens"
            self._features = FeatureSpec(kind, int(feats.shape[2]), grid, None, prefix)
        else:
            raise NotApplicable(f"{self.name}: no spatial feature map found (forward_features gives shape {tuple(feats.shape)})")
        return self._features

    def linear_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of a global-average-pool + linear head, the precondition of CAM."""
        spec = self.features_spec()
        head = self.model.get_classifier()
        pool = getattr(self.model, "global_pool", None)
        if pool is None:  # timm ClassifierHead / NormMlpClassifierHead keep the pool in the head (RegNet, ConvNeXt)
            pool = getattr(getattr(self.model, "head", None), "global_pool", None)
        pool_type = getattr(pool, "pool_type", pool if isinstance(pool, str) else None)
        if spec.kind not in ("nchw", "nhwc") or not isinstance(head, nn.Linear):
            raise NotApplicable(f"{self.name}: CAM needs a CNN with a global-average-pool + linear head")
        if pool_type != "avg":
            raise NotApplicable(f"{self.name}: CAM needs global average pooling, head pools with {pool_type!r}")
        extra = [n for n, m in getattr(self.model, "head", nn.Identity()).named_children() if n not in ("global_pool", "fc", "flatten", "drop") and not isinstance(m, (nn.Identity, nn.Dropout, nn.Flatten))]
        if extra:
            raise NotApplicable(f"{self.name}: CAM needs GAP + linear, the head also has {extra}")
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features, device=head.weight.device)
        return head.weight.float(), bias.float()

    def feature_layer_used(self) -> dict[str, Any]:
        """The tensor CAM-family methods read, for run.json (see the module docstring)."""
        try:
            spec = self.features_spec()
        except NotApplicable as exc:
            return {"kind": None, "reason": str(exc)}
        where = {
            "module": f"output of module {spec.module!r} (model_overrides feature_layer)",
            "nchw": "output of forward_features, the head's input (after the last activation; pytorch-grad-cam's usual CNN choice is the last stage, e.g. layer4, whose output this is for ResNets)",
            "nhwc": "output of forward_features (NHWC, permuted to NCHW)",
            "tokens": "input of the last transformer block, prefix tokens dropped, reshaped to the patch grid",
            "token_output": "output of forward_features (patch tokens the pooled head reads), reshaped to the patch grid",
        }[spec.kind]
        return {"kind": spec.kind, "module": spec.module, "channels": spec.channels, "grid": list(spec.grid) if spec.grid else None, "tensor": where}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "preprocess": asdict(self.preprocess),
                "feature_layer": self.feature_layer_used(), "channels_last": self.channels_last, **self.meta}


def token_grid(model: nn.Module, n_tokens: int) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    grid = getattr(pe, "grid_size", None)
    if grid is not None and int(grid[0]) * int(grid[1]) == n_tokens:
        return int(grid[0]), int(grid[1])
    side = int(round(n_tokens**0.5))
    return (side, side) if side * side == n_tokens else None


# --------------------------------------------------------------------- loading by spec
@dataclass
class ModelOptions:
    """Per-run options applied to every classifier the run loads."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    fold_bn: bool = True  # no-grad scoring forwards use a BN-folded copy (same logits up to rounding, ~10% faster)


def state_dict_checksum(model: nn.Module) -> str:
    """sha256 over parameter/buffer names and bytes: identifies the weights a run used."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_classifier(spec: str, options: ModelOptions | None = None) -> Classifier:
    """Build the classifier a spec string names.

    ``zoo:<name>``        a salbench zoo classifier (trained on demand, cached under $SALBENCH_HOME)
    ``<timm name>[.tag]`` pretrained timm weights (hub or local Hugging Face cache)
    ``<timm name>@<file>``local ``.pth``/``.safetensors`` weights
    ``random:<timm name>``randomly initialised (throughput only: cost does not depend on weights)
    """
    import timm

    options = options or ModelOptions()
    overrides = dict(options.overrides.get(spec, {}))
    feature_layer = overrides.pop("feature_layer", None)
    own_format = overrides.pop("channels_last", None)  # this classifier's memory format, over the run's
    channels_last = options.channels_last if own_format is None else bool(own_format)
    if spec.startswith("zoo:"):
        from salbench import zoo

        model, meta = zoo.load(spec[4:], device="cpu")
        pre = Preprocess.from_dict({k: meta[k] for k in ("mean", "std", "input_size", "interpolation") if k in meta} | overrides)
        num_classes = int(meta["num_classes"])
        meta = {"source": "zoo", "val_top1": meta.get("val_top1"), "arch": meta.get("arch"), "recipe": meta.get("recipe_key")}
    elif spec.startswith("random:"):
        arch = spec.split(":", 1)[1]
        _check_timm_name(arch.split(".")[0])
        model = timm.create_model(arch, pretrained=False)
        pre = Preprocess.from_timm(model, **overrides)
        num_classes = int(model.num_classes)
        meta = {"source": "random-init", "arch": arch}
    elif "@" in spec:
        from salbench.weights import load_local_weights

        arch, path = spec.split("@", 1)
        model, meta = load_local_weights(arch, path)
        pre = Preprocess.from_timm(model, **overrides)
        num_classes = int(model.num_classes)
    else:
        from salbench.hub import offline_unless_reachable

        _check_timm_name(spec.split(".")[0])
        with offline_unless_reachable() as offline:
            try:
                model = timm.create_model(spec, pretrained=True)
            except Exception as exc:  # hub unreachable, no cached weights, unknown tag
                why = "not in the local Hugging Face cache and the hub is offline or unreachable" if offline else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                raise UsageError(f"cannot load pretrained timm weights for {spec!r}: {why}") from None
        pre = Preprocess.from_timm(model, **overrides)
        num_classes = int(model.num_classes)
        meta = {"source": "timm-pretrained", "arch": spec}
    meta["weights_sha256"] = state_dict_checksum(model)
    scorer = None
    if options.fold_bn:
        scorer = copy.deepcopy(model).eval()
        folded = fold_batchnorm(scorer, torch.rand(2, *pre.input_size, generator=torch.Generator().manual_seed(0)))
        meta["bn_folded"] = len(folded)
        meta["bn_folding"] = {"pairs": folded, "used_for": "no-grad scoring forwards only (logits); saliency gradients and hooks use the unfolded model"}
    clf = Classifier(model, spec, pre, num_classes, meta=meta, amp_dtype=options.amp_dtype, channels_last=channels_last, feature_layer=feature_layer)
    clf = clf.to(options.device)
    if scorer is not None and (meta["bn_folded"] or (clf.device.type == "cpu" and options.amp_dtype == torch.float32 and FREEZE_ON_CPU)):
        clf.set_scorer(scorer)  # on a CPU also without BN: the scorer's frozen graph is faster (freeze_for_cpu)
        clf._scoring_model()  # freeze now, so that meta["scorer"] says how scoring forwards run
    if feature_layer:
        clf.features_spec()  # an unknown module name is a UsageError now, before a run writes anything
    return clf


#: Scoring forwards on a CPU run a frozen TorchScript graph (``freeze_for_cpu``); set
#: ``SALBENCH_FREEZE_SCORER=0`` to run the eager scorer instead (e.g. to bisect a numerical question).
FREEZE_ON_CPU = os.environ.get("SALBENCH_FREEZE_SCORER", "1") != "0"


class _ChannelsLastInput(nn.Module):
    """A frozen graph traced on channels-last input, given its input in that layout."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.contiguous(memory_format=torch.channels_last))


def freeze_for_cpu(model: nn.Module, probe: torch.Tensor, tol: float = 1e-4) -> tuple[nn.Module, str]:
    """A faster CPU module computing ``model``'s logits (eval mode, no gradients), and how it was made.

    Why TorchScript and not ``torch.compile``: on the 2-core development CPU, tracing and freezing
    a zoo classifier takes well under a second, and compiling it with Inductor took 24-52 s per
    classifier plus more per new batch shape, longer than the default run's scoring saves. Frozen
    graphs, medians of 11 interleaved forwards of 64 images at 64 px (ms, eager -> frozen): zoo
    resnet 48 -> 16, efficientnet 25 -> 15.5, convnext 37 -> 32, vit 25 -> 19. Two recipes, by a
    fixed rule (so a run's numbers do not depend on a timing): a network whose convolutions are all
    dense gets ``torch.jit.optimize_for_inference`` (oneDNN prepacked convolutions, conv+ReLU
    fused: the ResNet's 3x); one with grouped / depthwise convolutions (EfficientNet, ConvNeXt) or
    at most one convolution (a ViT's patch embedding) is frozen on channels-last input (there
    oneDNN's layout conversions around every depthwise conv and SE block cost more than they save).

    The frozen module is checked against ``model`` on ``probe`` and on its first three images (a
    second batch size: a trace must not have baked one in); a logit more than ``tol`` (relative to
    the largest) away, or any failure to trace, returns ``model`` itself and says why.
    """
    import warnings

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dense = len(convs) > 1 and all(c.groups == 1 for c in convs)
    how = "frozen TorchScript, oneDNN-optimised" if dense else "frozen TorchScript, channels-last"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
            source = copy.deepcopy(model).eval()
            example = probe if dense else probe.contiguous(memory_format=torch.channels_last)
            if not dense:
                source = source.to(memory_format=torch.channels_last)
            graph = torch.jit.freeze(torch.jit.trace(source, example, check_trace=False))
            if dense:
                graph = torch.jit.optimize_for_inference(graph)
            frozen: nn.Module = graph if dense else _ChannelsLastInput(graph)
            ref = model(probe)
            err = max((frozen(probe) - ref).abs().max().item(), (frozen(probe[:3]) - model(probe[:3])).abs().max().item())
    except Exception as exc:  # an untraceable model (data-dependent control flow, ...) stays eager
        return model, f"eager (freezing failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
    if not err <= tol * max(1.0, ref.abs().max().item()):
        return model, f"eager (the frozen graph's logits moved by {err:.2e})"
    return frozen, how


def fold_batchnorm(model: nn.Module, probe: torch.Tensor, tol: float = 1e-4) -> list[str]:
    """Fold every eval-mode BatchNorm2d that reads a Conv2d's output into that conv, in place.

    Pairs are found on a probe forward pass (outputs kept alive so tensor ids stay unique);
    timm's BatchNormAct2d keeps its dropout/activation. The folded model is checked against the
    original on the probe and put back if a logit moves by more than ``tol`` (relative), e.g.
    when a conv output also feeds another layer. Returns the folded pairs as ``"conv+bn"`` module
    names (empty when nothing was folded).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    outs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[nn.Module | None, nn.Module]] = []
    hooks = [m.register_forward_hook(lambda m, a, o: outs.__setitem__(id(o), (m, o))) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(lambda m, a: pairs.append((outs.get(id(a[0]), (None,))[0], m)))
              for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            ref = model(probe)
    finally:
        for h in hooks:
            h.remove()
    outs.clear()
    pairs = [(c, b) for c, b in pairs if c is not None and not b.training and b.track_running_stats]
    parent = {id(c): (p, n) for p in model.modules() for n, c in p.named_children()}
    names = {id(m): n for n, m in model.named_modules()}
    folded = [f"{names[id(c)]}+{names[id(b)]}" for c, b in pairs]
    replaced = []
    for conv, bn in pairs:
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]  # timm BatchNormAct2d
        for orig, new in ((conv, fuse_conv_bn_eval(conv, bn)), (bn, nn.Sequential(*rest) if rest else nn.Identity())):
            p, n = parent[id(orig)]
            setattr(p, n, new)
            replaced.append((p, n, orig))
    if pairs:
        with torch.no_grad():
            err = (model(probe) - ref).abs().max().item()
        if err > tol * max(1.0, ref.abs().max().item()):
            for p, n, orig in reversed(replaced):
                setattr(p, n, orig)
            return []
    return folded


def _check_timm_name(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        raise UsageError(f"unknown timm model {arch!r}{close_matches(arch, timm.list_models())}")


def expand_model_specs(specs: str | list[str] | None, *, pretrained_only: bool = False) -> list[str]:
    """Expand comma-separated classifier specs with wildcards: ``zoo:*``, ``resnet*``, ``vit_*``."""
    import timm

    out: list[str] = []
    for item in split_list(specs):
        if item.startswith("zoo:") and is_pattern(item):
            from salbench import zoo

            hits = [f"zoo:{n}" for n in fnmatch.filter(zoo.ZOO.names(), item[4:])]
        elif item.startswith("zoo:"):
            from salbench import zoo

            zoo.ZOO.get(item[4:])
            hits = [item]
        elif is_pattern(item) and "@" not in item:
            hits = timm.list_models(item, pretrained=pretrained_only)
        else:
            hits = [item]
        if not hits:
            raise UsageError(f"model pattern {item!r} matches nothing")
        out.extend(h for h in hits if h not in out)
    return out
