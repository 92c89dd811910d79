"""The saliency-method interface: a registered class with declared capabilities and one hook.

A method subclasses ``SaliencyMethod`` and overrides ``attribute`` (raw, non-negative maps for a
batch); ``__call__`` checks applicability, upsamples to the image size and normalises. Register it
with ``@register_method("name")``; any module in ``methods/`` (``salbench.methods``) is imported by the package,
so a new file is all a new method needs (the test suite is parametrised over the registry).

Normalisation rule (documented contract): the raw map ``a >= 0`` of each image is divided by its
maximum, so the most salient pixel is 1; an all-zero map stays all zero. Methods whose raw map has
an uninformative floor (RISE: every pixel carries the mean class probability) declare
``"minmax"``: the per-image minimum is subtracted first (a map whose spread is below 1e-4 of its
magnitude is float noise and becomes all zero), as are Grad-CAM and CAM (whose ReLU'd maps keep a
broad positive floor; pytorch-grad-cam scales them the same way). Methods whose raw map is already in [0,1]
(controls, trained maskers) declare ``normalization = "none"``.

Output contract, checked on every call (``check_raw_maps``; a ``MethodOutputError`` naming the
method, which a run records as that pair's error rows): ``attribute`` returns a B x h x w tensor
for the B images, finite, non-negative under ``"max"``, in [0, 1] under ``"none"`` (any finite
values under ``"minmax"``). Methods written outside salbench (plugins, plain functions) get the
same check as the built-in ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from salbench.classifiers import Classifier
from salbench.errors import NotApplicable, SalbenchError
from salbench.params import check_params as check_declared_params
from salbench.registry import Registry


@dataclass(frozen=True)
class Capabilities:
    """What a method needs and how it behaves; shown by ``salbench methods list``."""

    needs_gradients: bool = False
    needs_feature_layer: bool = False
    needs_training: bool = False
    classifier_dependent: bool = True
    batchable: bool = True
    stochastic: bool = False
    family: str = "gradient"


class SaliencyMethod:
    """Base class. Subclasses set ``name``, ``capabilities``, optional ``Params`` and ``attribute``."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    normalization: ClassVar[str] = "max"  # "max" | "minmax" | "none"
    default_selected: ClassVar[bool] = True  # part of a run that asks for every method ("*")
    description: ClassVar[str] = ""
    #: Objects besides the class hierarchy whose source files decide the maps (a wrapped plain
    #: function, a peer library's class): ``mapcache.code_digest`` hashes them too.
    code_objects: ClassVar[tuple[Any, ...]] = ()

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params: Any):
        self.params = check_params(type(self), params)
        self.seed = 0

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        """Raise ``UsageError`` (naming method, key, value and the size) when the parameters do not
        fit images of ``image_size`` (H, W). The runner calls it before any work; nothing by default."""

    @classmethod
    def defaults_for(cls, image_size: tuple[int, int]) -> dict[str, Any]:
        """Parameter defaults suited to images of ``image_size`` (H, W) in the dataset.

        The runner applies them beneath any user-given parameters and records the values it used
        in run.json. Empty by default: the ``Params`` defaults (chosen for the 64x64 synthetic set).
        """
        return {}

    # -- cost and applicability -------------------------------------------------
    def cost(self) -> tuple[float, float]:
        """(forward passes, backward passes) per image, for ``methods list`` and throughput."""
        return (1.0, 1.0 if self.capabilities.needs_gradients else 0.0)

    def check(self, classifier: Classifier) -> None:
        """Raise ``NotApplicable`` with a reason when the method cannot run on ``classifier``."""
        if self.capabilities.needs_feature_layer:
            classifier.features_spec()

    def prepare(self, device: torch.device, progress: bool = True) -> None:
        """Make the method ready to run on ``device`` before any map is asked for.

        A no-op for ordinary methods. Methods that ``needs_training`` (CASM maskers) train or load
        what they need here, in one explicit step the runner calls before a run, so that calling
        the method never starts hidden work.
        """

    # -- the hook ---------------------------------------------------------------
    def attribute(self, classifier: Classifier, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Raw non-negative maps, B x h x w at any resolution (upsampled by the caller)."""
        raise NotImplementedError

    def attribute_with_diagnostics(self, classifier: Classifier, images: torch.Tensor, targets: torch.Tensor,
                                   seeds: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Raw maps and per-image diagnostics (name -> B-long tensor) that the method gets on the
        way at little cost, e.g. Integrated Gradients' completeness gap; none by default. The
        runner stores them as stored-only columns of the localization table (``metrics/diagnostics.py``)."""
        return self.attribute(classifier, images, targets, seeds), {}

    def __call__(self, classifier: Classifier, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor | None = None,
                 diagnostics: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Maps in [0,1], B x H x W at the images' resolution.

        ``targets`` are class indices (B,); ``seeds`` are per-image seeds (B,) for stochastic
        methods, derived from the run seed and dataset index so a map never depends on the batch.
        A ``diagnostics`` dict receives the method's per-image diagnostics (float32, B-long).
        """
        if seeds is None:
            seeds = torch.arange(len(images), device=images.device)
        with torch.enable_grad() if self.capabilities.needs_gradients else torch.no_grad():
            raw, diag = self.attribute_with_diagnostics(classifier, images, targets.to(images.device), seeds.to(images.device))
        if diagnostics is not None:
            diagnostics.update({k: v.detach().float() for k, v in diag.items()})
        raw = check_raw_maps(self.name, raw, len(images), self.normalization).detach().float()
        if raw.shape[-2:] != images.shape[-2:]:
            raw = F.interpolate(raw[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return normalize_maps(raw, self.normalization)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "params": dataclasses.asdict(self.params)}


class MethodOutputError(SalbenchError):
    """A method returned maps that break the output contract (shape, NaN/inf, range)."""


def check_raw_maps(name: str, raw: Any, batch: int, rule: str) -> torch.Tensor:
    """``raw`` if it is a finite B x h x w tensor within the range ``rule`` expects, else a
    ``MethodOutputError`` whose one line names the method and what was wrong."""
    if not isinstance(raw, torch.Tensor):
        raise MethodOutputError(f"method {name!r} returned {type(raw).__name__}, expected a tensor of B x H x W maps")
    raw = raw.detach()
    if raw.ndim != 3 or raw.shape[0] != batch:
        raise MethodOutputError(f"method {name!r} returned shape {tuple(raw.shape)}, expected B x H x W maps with B = {batch} (one per image)")
    if not raw.is_floating_point():
        raw = raw.float()
    finite = torch.isfinite(raw)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        what = "NaN" if bool(torch.isnan(raw).any()) else "infinite"
        raise MethodOutputError(f"method {name!r} returned {what} values ({bad} of {raw.numel()} pixels)")
    if rule in ("max", "none") and raw.numel():
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0:
            hint = "return non-negative maps or declare normalization='minmax'" if rule == "max" else "return maps in [0, 1]"
            raise MethodOutputError(f"method {name!r} returned negative values (min {lo:.3g}) under normalization {rule!r}; {hint}")
        if rule == "none" and hi > 1:
            raise MethodOutputError(f"method {name!r} returned values above 1 (max {hi:.3g}) under normalization 'none'; return maps in [0, 1] or declare normalization='max'")
    return raw


#: Relative spread under which a "minmax" map counts as flat (see ``normalize_maps``).
MINMAX_RTOL = 1e-4


def normalize_maps(raw: torch.Tensor, rule: str) -> torch.Tensor:
    """Apply a normalisation rule per image (see module docstring)."""
    if rule == "none":
        return raw.clamp(0, 1)
    if rule == "minmax":
        flat = raw.flatten(1)
        lo, hi = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
        # A spread below MINMAX_RTOL of the map's magnitude is float rounding (it changes with the
        # batch a map is computed in), not contrast: such a map is flat, i.e. all zero.
        flat_map = (hi - lo) <= MINMAX_RTOL * torch.maximum(hi.abs(), lo.abs())
        return normalize_maps(torch.where(flat_map, torch.zeros_like(raw), raw - lo), "max")
    if rule == "max":
        raw = raw.clamp_min(0)
        peak = raw.flatten(1).amax(1).view(-1, 1, 1)
        return torch.where(peak > 0, raw / peak.clamp_min(torch.finfo(raw.dtype).tiny), torch.zeros_like(raw))
    raise ValueError(f"unknown normalization rule {rule!r}")


#: Every method; installed packages add theirs through the ``salbench.methods`` entry-point group
#: (loaded on first use), peer adapters answer to ``captum:``, ``gradcam:`` and ``zennit:`` names.
METHODS: Registry[type[SaliencyMethod]] = Registry("saliency method", entry_points="salbench.methods")


def register_method(name: str):
    """Class decorator: ``@register_method("gradcam")``."""

    def deco(cls: type[SaliencyMethod]) -> type[SaliencyMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def check_params(cls: type[SaliencyMethod], params: dict[str, Any]) -> Any:
    """``cls.Params(**params)``, refusing unknown keys and wrong scalar types with one line naming
    the method, the key and the value (``SpecError``, a ``UsageError``)."""
    return check_declared_params("method", cls.name, cls.Params, params)


def create_method(name: str, **params: Any) -> SaliencyMethod:
    return METHODS.get(name)(**params)


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The unnormalised class score S_c of each image's target class (Simonyan et al.)."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def not_applicable(reason: str) -> NotApplicable:
    return NotApplicable(reason)
