"""The peers' methods through salbench's metrics: ``captum:<class>``, ``gradcam:<class>``, ``zennit:<composite>``.

``captum:IntegratedGradients``, ``captum:NoiseTunnel(Saliency)``, ``gradcam:EigenGradCAM`` or
``zennit:EpsilonPlus`` name any attribution class of captum, pytorch-grad-cam or zennit. The
method registry builds the adapter class the first time such a name is asked for (the package is
imported then; a one-line error when it is not installed). Adapters are never listed, so ``'*'``
in ``--methods`` never pulls one in. Parameters come from ``method_params`` keyed by the same
name; they are the peer's own keyword arguments (constructor and ``attribute``/call), checked
against its signature like any method's ``Params``.

How each peer is called, so that its maps are comparable with salbench's:

* the model is the ``Classifier`` itself (pixel-space input, its own normalisation); gradients
  always go through the unfolded model (``Classifier.forward`` with autograd on);
* the feature layer of CAM methods (pytorch-grad-cam's ``target_layers``, captum's ``layer``) is
  the module whose output is the tensor salbench's CAM family reads
  (``Classifier.features_spec``, see ``feature_target``), reshaped the same way for token models;
* one batch per call: captum and zennit take the whole batch (captum's own batching knobs, e.g.
  ``internal_batch_size``, are parameters); pytorch-grad-cam too, its CAM taken at the feature
  map's resolution (before its own resize) and upsampled like salbench's.

Signed attributions become non-negative maps by one convention: **|sum over channels|** of the
attribution (the signed total contribution of each pixel, or of each feature-map position, its
magnitude kept; captum's ``visualize_image_attr`` default ``absolute_value``, and salbench's
``integrated_gradients``), normalised by the maximum. pytorch-grad-cam's CAMs are already
ReLU'd and are min-max normalised like salbench's ``gradcam``.

Provenance: an adapter's ``config()`` (run.json ``method_configs``, the spec hash, the map-cache
key) holds the peer package, its version and the class; its family, shown in the leaderboard's
family column, is ``"<package> <version>"``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import re
import warnings
import weakref
from typing import Any, ClassVar

import torch
from torch import nn

from salbench.errors import NotApplicable, UsageError
from salbench.methods.base import METHODS, Capabilities, SaliencyMethod

#: spec prefix -> (import name, distribution name)
PEER_PACKAGES = {"captum": ("captum", "captum"), "gradcam": ("pytorch_grad_cam", "grad-cam"), "zennit": ("zennit", "zennit")}
_SPEC = re.compile(r"^([A-Za-z_]\w*)(?:\(([A-Za-z_]\w*)\))?$")
#: captum attributions that draw random numbers (seeded per batch, see ``CaptumAdapter``).
_STOCHASTIC = {"NoiseTunnel", "ShapleyValueSampling", "KernelShap", "Lime", "FeaturePermutation", "GradientShap", "ShapleyValues"}


def peer_module(prefix: str) -> tuple[Any, str]:
    """(the imported peer package, its version); a one-line ``UsageError`` when it is not installed."""
    module, dist = PEER_PACKAGES[prefix]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{prefix}:<name> methods need the {dist!r} package: pip install {dist} (or salbench[peers])") from None
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(mod, "__version__", "unknown"))
    return mod, version


def abs_channel_sum(attr: torch.Tensor) -> torch.Tensor:
    """The adapters' convention for signed attributions (module docstring): B x C x h x w -> |sum_c|."""
    attr = attr.float()
    if attr.ndim == 4:
        attr = attr.sum(1)
    return attr.abs()


def _params_class(name: str, signatures: list[tuple[Any, set[str]]], defaults: dict[str, Any] | None = None) -> type:
    """A frozen dataclass of the keyword parameters of the peer callables (minus those the adapter
    passes itself), typed from their defaults so ``check_params`` can check scalars."""
    fields: dict[str, tuple[Any, Any]] = {}
    for fn, skip in signatures:
        for p in list(inspect.signature(fn).parameters.values()):
            if p.name in skip or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in fields:
                continue
            default = (defaults or {}).get(p.name, p.default)
            if default is inspect.Parameter.empty:
                default = None  # required by the peer: the peer's own error says so when it is left out
            if isinstance(default, (list, dict, set)) or not isinstance(default, (int, float, str, bool, tuple, type(None))):
                default = None  # not expressible in a spec; the peer's default applies
            hint: Any = type(default) if isinstance(default, (int, float, str, bool)) else Any
            fields[p.name] = (hint, default)
    cls_name = re.sub(r"\W", "_", name) + "Params"
    return dataclasses.make_dataclass(cls_name, [(k, t, dataclasses.field(default=d)) for k, (t, d) in fields.items()], frozen=True)


def _call_kwargs(params: Any, fn: Any) -> dict[str, Any]:
    """The parameters ``fn`` accepts, lists made tuples (YAML has no tuples), ``None`` left to the peer's default."""
    accepted = set(inspect.signature(fn).parameters)
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if f.name in accepted and v is not None:
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return out


# ------------------------------------------------------------------------- feature layer
_TARGETS: "weakref.WeakKeyDictionary[Any, tuple[nn.Module, Any]]" = weakref.WeakKeyDictionary()


def feature_target(classifier) -> tuple[nn.Module, Any]:
    """(module of ``classifier.model``, reshape) such that the module's output, put through
    ``reshape``, is the B x C x h x w feature map salbench's CAM family reads
    (``Classifier.features_spec``); ``reshape`` is None where the output already is that map.
    Found once per classifier (a probe forward pass)."""
    if classifier not in _TARGETS:
        _TARGETS[classifier] = _find_feature_target(classifier)
    return _TARGETS[classifier]


def _find_feature_target(classifier) -> tuple[nn.Module, Any]:
    spec = classifier.features_spec()
    model = classifier.model

    def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
        t = t[:, spec.prefix_tokens:]
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *spec.grid)

    if spec.kind == "module":
        module = model.get_submodule(spec.module)
        return module, (tokens_to_map if spec.grid is not None else None)
    if spec.kind == "tokens":  # the input of the last block = the output of the one before it
        blocks = model.blocks
        if len(blocks) < 2:
            raise NotApplicable(f"{classifier.name}: the feature map is the input of the only transformer block; no module outputs it")
        return blocks[-2], tokens_to_map
    # nchw / nhwc / token_output: the module whose output is forward_features' result (outermost)
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, n=n: outputs.__setitem__(n, out)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            _, h, w = classifier.preprocess.input_size
            feats = model.forward_features(classifier.normalize(torch.zeros(1, 3, h, w, device=classifier.device)))
    finally:
        for hd in handles:
            hd.remove()
    hits = [n for n, out in outputs.items() if out is feats]
    if not hits:
        raise NotApplicable(f"{classifier.name}: no module outputs the feature map (forward_features computes it outside a module)")
    module = model.get_submodule(min(hits, key=lambda n: n.count(".")))
    reshape = {"nchw": None, "nhwc": lambda t: t.permute(0, 3, 1, 2), "token_output": tokens_to_map}[spec.kind]
    return module, reshape


# ------------------------------------------------------------------------- base
class PeerAdapter(SaliencyMethod):
    """Base of the adapter classes ``build`` makes; ``peer`` is the spec prefix, ``target`` the class."""

    peer: ClassVar[str] = ""
    peer_version: ClassVar[str] = ""
    peer_class: ClassVar[str] = ""  # dotted name of the peer's class
    default_selected = False

    def config(self) -> dict[str, Any]:
        return {**super().config(), "family": self.capabilities.family,
                "peer": {"package": PEER_PACKAGES[self.peer][1], "version": self.peer_version, "class": self.peer_class}}


class CaptumAdapter(PeerAdapter):
    """``captum:<Attribution>`` and ``captum:<Wrapper>(<Attribution>)`` (NoiseTunnel)."""

    peer = "captum"
    normalization = "max"
    outer: ClassVar[Any] = None
    inner: ClassVar[Any] = None
    needs_layer: ClassVar[bool] = False

    def check(self, classifier) -> None:
        super().check(classifier)
        if self.needs_layer and feature_target(classifier)[1] is not None:
            raise NotApplicable(f"{classifier.name}: captum's layer attributions read a layer's raw output, and this classifier's "
                                f"feature map is reshaped from {classifier.features_spec().kind} (tokens / NHWC); use gradcam:<class>")

    def _make(self, classifier) -> Any:
        def construct(cls: Any, forward: Any) -> Any:
            sig = inspect.signature(cls.__init__).parameters
            args: dict[str, Any] = {}
            if "layer" in sig:
                args["layer"] = feature_target(classifier)[0]
            return cls(forward, **args, **{k: v for k, v in _call_kwargs(self.params, cls.__init__).items() if k not in ("forward_func", "model", "layer", "attribution_method")})

        if self.inner is not None:
            return self.outer(construct(self.inner, classifier))
        return construct(self.outer, classifier)

    def attribute(self, classifier, images, targets, seeds):
        attribution = self._make(classifier)
        kwargs = _call_kwargs(self.params, attribution.attribute)
        if self.inner is not None:  # NoiseTunnel passes the inner method's keywords through
            kwargs.update({k: v for k, v in _call_kwargs(self.params, self.inner.attribute).items() if k not in ("inputs", "target")})
        with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed((int(seeds.sum()) + self.seed) % 2**63)  # the same batch draws the same noise
            attr = attribution.attribute(images.detach().clone(), target=targets, **kwargs)
        if isinstance(attr, tuple):
            attr = attr[0]
        return abs_channel_sum(attr)


class GradCamAdapter(PeerAdapter):
    """``gradcam:<BaseCAM subclass>``: pytorch-grad-cam on salbench's feature layer."""

    peer = "gradcam"
    normalization = "minmax"
    target: ClassVar[Any] = None

    def attribute(self, classifier, images, targets, seeds):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer, reshape = feature_target(classifier)
        init = {k: v for k, v in _call_kwargs(self.params, self.target.__init__).items() if k not in ("model", "target_layers", "reshape_transform")}
        cam = self.target(model=classifier, target_layers=[layer], reshape_transform=reshape, **init)
        full_res = self.target.__name__ == "FullGrad"  # works on input gradients and biases at the image resolution
        if not full_res:
            grid = classifier.features_spec().grid
            if grid is None:
                _, fm = classifier.forward_with_features(images[:1])
                grid = tuple(fm.shape[-2:])
            cam.get_target_width_height = lambda _x, g=grid: (g[1], g[0])  # its CAM before any resize: upsampled like salbench's
        call = {k: v for k, v in _call_kwargs(self.params, self.target.__call__).items() if k not in ("input_tensor", "targets")}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = cam(input_tensor=images.detach().clone().requires_grad_(True),
                          targets=[ClassifierOutputTarget(int(c)) for c in targets.tolist()], **call)
        finally:
            cam.activations_and_grads.release()
        return torch.as_tensor(out, dtype=torch.float32, device=images.device)


class ZennitAdapter(PeerAdapter):
    """``zennit:<Composite>``: zennit's ``Gradient`` attributor under a composite (LRP rules and
    the like) on the classifier's unfolded model; the output relevance is the one-hot target."""

    peer = "zennit"
    normalization = "max"
    composite: ClassVar[Any] = None

    def attribute(self, classifier, images, targets, seeds):
        from zennit.attribution import Gradient

        kwargs = _call_kwargs(self.params, self.composite.__init__)
        required = [n for n, p in inspect.signature(self.composite.__init__).parameters.items() if p.default is inspect.Parameter.empty and n != "self"]
        if "low" in required and "low" not in kwargs:  # the first layer's input bounds: pixels 0 and 1, normalised
            kwargs["low"] = ((0 - classifier.mean) / classifier.std).expand(1, 3, 1, 1)
        if "high" in required and "high" not in kwargs:
            kwargs["high"] = ((1 - classifier.mean) / classifier.std).expand(1, 3, 1, 1)
        composite = self.composite(**kwargs)
        model = _PixelModel(classifier)
        one_hot = torch.nn.functional.one_hot(targets, classifier.num_classes).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Gradient(model=model, composite=composite) as attributor:
                _, relevance = attributor(images.detach().clone(), one_hot)
        return abs_channel_sum(relevance)


class _PixelModel(nn.Module):
    """The classifier's unfolded model behind its pixel-space normalisation, holding no other
    module (a composite registers its rules on every submodule it is given)."""

    def __init__(self, classifier):
        super().__init__()
        self.model = classifier.model
        self._normalize = classifier.normalize

    def forward(self, x):
        return self.model(self._normalize(x)).float()


# ------------------------------------------------------------------------- factories
def _parse(prefix: str, arg: str) -> tuple[str, str | None]:
    m = _SPEC.match(arg.strip())
    if not m:
        raise UsageError(f"method {prefix}:{arg!r}: expected {prefix}:ClassName" + (" or captum:Wrapper(ClassName)" if prefix == "captum" else ""))
    return m.group(1), m.group(2)


def _lookup(mod: Any, prefix: str, name: str, base: type, what: str) -> Any:
    obj = getattr(mod, name, None)
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        known = sorted(n for n in dir(mod) if inspect.isclass(getattr(mod, n)) and issubclass(getattr(mod, n), base) and not n.startswith("_"))
        from salbench.errors import close_matches

        raise UsageError(f"method {prefix}:{name}: {PEER_PACKAGES[prefix][1]} has no {what} {name!r}{close_matches(name, known)}; known: {', '.join(known)}")
    return obj


def _captum(arg: str) -> type[SaliencyMethod]:
    mod, version = peer_module("captum")
    import captum.attr as attr_mod
    from captum.attr._utils.attribution import Attribution, GradientAttribution, LayerAttribution

    outer_name, inner_name = _parse("captum", arg)
    outer = _lookup(attr_mod, "captum", outer_name, Attribution, "attribution class")
    inner = _lookup(attr_mod, "captum", inner_name, Attribution, "attribution class") if inner_name else None
    if inner is None and "attribution_method" in inspect.signature(outer.__init__).parameters:
        raise UsageError(f"method captum:{outer_name} wraps another attribution: name it as captum:{outer_name}(Saliency)")
    core = inner or outer
    skip = {"self", "forward_func", "model", "layer", "attribution_method", "inputs", "target", "additional_forward_args", "return_convergence_delta"}
    sigs = [(outer.__init__, skip), (outer.attribute, skip)] + ([(inner.__init__, skip), (inner.attribute, skip)] if inner else [])
    name = f"captum:{arg}"
    return type(f"Captum_{outer_name}" + (f"_{inner_name}" if inner_name else ""), (CaptumAdapter,), {
        "Params": _params_class(name, sigs), "outer": outer, "inner": inner, "peer_version": version,
        "peer_class": f"captum.attr.{outer_name}" + (f"({inner_name})" if inner_name else ""), "name": name,
        "needs_layer": issubclass(core, LayerAttribution),
        "capabilities": Capabilities(needs_gradients=issubclass(core, GradientAttribution), needs_feature_layer=issubclass(core, LayerAttribution),
                                     stochastic=outer_name in _STOCHASTIC or inner_name in _STOCHASTIC, family=f"captum {version}"),
        "description": f"captum {version} {outer_name}" + (f"({inner_name})" if inner_name else "") + ", |sum over channels|",
        "code_objects": tuple(c for c in (outer, inner) if c is not None),
    })


def _gradcam(arg: str) -> type[SaliencyMethod]:
    mod, version = peer_module("gradcam")
    from pytorch_grad_cam.base_cam import BaseCAM

    name_, inner = _parse("gradcam", arg)
    if inner:
        raise UsageError(f"method gradcam:{arg}: expected gradcam:ClassName")
    target = _lookup(mod, "gradcam", name_, BaseCAM, "CAM class")
    skip = {"self", "model", "target_layers", "reshape_transform", "input_tensor", "targets", "tta_transforms", "detach", "compute_input_gradient", "uses_gradients"}
    name = f"gradcam:{arg}"
    return type(f"GradCam_{name_}", (GradCamAdapter,), {
        "Params": _params_class(name, [(target.__init__, skip), (target.__call__, skip)]), "target": target, "peer_version": version,
        "peer_class": f"pytorch_grad_cam.{name_}", "name": name,
        "capabilities": Capabilities(needs_gradients=True, needs_feature_layer=True, family=f"grad-cam {version}"),
        "description": f"pytorch-grad-cam {version} {name_} on salbench's feature layer", "code_objects": (target,),
    })


def _zennit(arg: str) -> type[SaliencyMethod]:
    mod, version = peer_module("zennit")
    from zennit import composites
    from zennit.core import Composite

    name_, inner = _parse("zennit", arg)
    if inner:
        raise UsageError(f"method zennit:{arg}: expected zennit:CompositeName")
    composite = _lookup(composites, "zennit", name_, Composite, "composite")
    skip = {"self", "layer_map", "first_map", "name_map", "zero_params", "canonizers", "composites"}
    name = f"zennit:{arg}"
    return type(f"Zennit_{name_}", (ZennitAdapter,), {
        "Params": _params_class(name, [(composite.__init__, skip)]), "composite": composite, "peer_version": version,
        "peer_class": f"zennit.composites.{name_}", "name": name,
        "capabilities": Capabilities(needs_gradients=True, family=f"zennit {version}"),
        "description": f"zennit {version} {name_} (Gradient attributor), |sum over channels|", "code_objects": (composite,),
    })


for _prefix, _factory in (("captum", _captum), ("gradcam", _gradcam), ("zennit", _zennit)):
    METHODS.add_prefix(_prefix, _factory)
