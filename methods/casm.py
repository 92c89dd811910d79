"""CASM maskers as saliency methods (training code: ``salbench.casm``).

Registered here:

* ``casm``           the embedded classifier-agnostic masker: thinning L100, entropy score, shared
                     encoder, classifier f initialised from ``zoo:resnet``, trained on the
                     synthetic set;
* ``casm-baseline``  the same masker trained classifier-dependently (thinning F: f never changes);
* ``casm-<name>``    every masker in the cache (``salbench train casm --name NAME``), registered
                     when this module is imported and after each training in the same process.

Each method's ``Params`` carry its training spec (``classifier``, ``dataset``, ``score``,
``share_encoder``, ``thinning``, ``train_classes``, ``steps``, ``lambda_r``, ``seed``), so the run's
``method_configs`` in run.json record what the masker was trained with. The masker is looked up in
the cache by the hash of that spec (``$SALBENCH_HOME/casm/<name>-<key>``). Training is one explicit
step, ``prepare(device, progress)``, which the runner calls before a run for every method that
``needs_training``: it trains a missing masker (a log line and a tqdm bar; a few minutes on a 2-core
CPU for the default pair), caches it, and loads it. Computing maps never trains: ``attribute``
raises ``MaskerNotTrained`` when the masker is not in the cache. Changing a spec parameter in a run
spec (``method_params: {casm: {thinning: L}}``) makes ``prepare`` train and cache that masker.
``checkpoint=PATH`` uses a masker directory directly; its spec then comes from its meta.json (spec
parameters given alongside must agree with it).

Classifier-agnostic at inference: the map depends only on the image, never on the source
classifier the runner passes (``classifier_dependent=False``). The runner still evaluates the
method once per source model, so with several source models the maps are computed again and are
identical; only the OM column (which uses the source classifier's clean prediction) differs.

Applicability: a masker is trained for one image domain and resolution. ``check`` reports
NotApplicable when the source classifier's input resolution differs from the resolution the masker
was trained at (e.g. ImageNet classifiers at 224 with the synthetic 64x64 masker): a proxy for
"another domain" that needs its own masker (``salbench train casm ...`` and ``checkpoint=``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import threading
from typing import Any, ClassVar

import torch

from salbench import casm as C
from salbench import zoo
from salbench.errors import NotApplicable, SalbenchError, UsageError
from salbench.methods.base import METHODS, Capabilities, SaliencyMethod

#: Spec fields a method's Params carry (everything else comes from the method's base spec).
SPEC_FIELDS = ("classifier", "dataset", "score", "share_encoder", "thinning", "train_classes", "steps", "lambda_r", "seed")

_CAPS = Capabilities(needs_training=True, classifier_dependent=False, batchable=True, family="casm")
_LOADED: dict[tuple[str, str], tuple[C.Masker, dict]] = {}
_LOAD_LOCK = threading.Lock()
_INPUT_SIZE: dict[str, tuple[int, int]] = {}


class MaskerNotTrained(SalbenchError):
    """A CASM method was asked for maps before its masker was trained (``prepare`` trains it)."""


def _make_params(base: C.CasmSpec) -> type:
    """A frozen Params dataclass whose defaults are ``base``'s spec fields (lambda_r: effective)."""
    defaults = {f: getattr(base, f) for f in SPEC_FIELDS}
    defaults["lambda_r"] = base.lam
    types = {"classifier": str, "dataset": str, "score": str, "share_encoder": bool, "thinning": str,
             "train_classes": "tuple[int, ...] | None", "steps": int, "lambda_r": float, "seed": int}
    fields = [("checkpoint", "str | None", dataclasses.field(default=None))]
    fields += [(f, types[f], dataclasses.field(default=defaults[f])) for f in SPEC_FIELDS]

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "train_classes", C.class_tuple(self.train_classes))
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self, "share_encoder", bool(self.share_encoder))
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "lambda_r", float(self.lambda_r))
        if self.score not in C.SCORES:
            raise ValueError(f"score={self.score!r}: expected one of {', '.join(C.SCORES)}")
        try:
            C.parse_thinning(self.thinning)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if self.steps < 1 or self.lambda_r < 0:
            raise ValueError("steps must be >= 1 and lambda_r >= 0")

    return dataclasses.make_dataclass("Params", fields, frozen=True, namespace={"__post_init__": __post_init__})


class CasmMethod(SaliencyMethod):
    """A trained CASM masker (see the module docstring). Subclasses set ``base_spec``."""

    capabilities: ClassVar[Capabilities] = _CAPS
    normalization: ClassVar[str] = "none"
    base_spec: ClassVar[C.CasmSpec] = C.CasmSpec()
    Params = _make_params(C.CasmSpec())

    # -- the masker this instance stands for --------------------------------------------------
    def training_spec(self) -> C.CasmSpec:
        """The training spec: the base spec with this instance's spec parameters."""
        p = self.params
        return self.base_spec.replace(**{f: getattr(p, f) for f in SPEC_FIELDS})

    def _checkpoint_meta(self) -> dict[str, Any] | None:
        if self.params.checkpoint is None:
            return None
        meta = C.read_meta(self.params.checkpoint)
        spec = meta["spec"]
        defaults = self.Params()
        for f in SPEC_FIELDS:
            given = getattr(self.params, f)
            want = spec.get(f) if f != "lambda_r" else meta.get("lambda_r_effective", spec.get(f))
            if f == "train_classes" and want is not None:
                want = tuple(want)
            if given != getattr(defaults, f) and given != want:
                raise UsageError(f"method {self.name!r}: {f}={given!r} disagrees with checkpoint {self.params.checkpoint!r} ({f}={want!r})")
        return meta

    def masker_dir(self) -> pathlib.Path:
        if self.params.checkpoint is not None:
            return C.resolve_checkpoint(self.params.checkpoint)
        return C.masker_dir(self.training_spec())

    def prepare(self, device: torch.device, progress: bool = True) -> None:
        """Train the masker if it is not cached (logged, with a progress bar), then load it on ``device``.

        Training runs on the CPU whatever ``device`` is: the cache key does not name a device, so the
        cached weights must not depend on which machine trained them first (``salbench train casm
        --device cuda`` is the explicit way to train on a GPU).
        """
        if self.params.checkpoint is None:
            spec = self.training_spec()
            if not C.is_trained(spec):
                print(f"casm: training masker {spec.name!r} (not cached) for method {self.name!r}: {spec.steps} steps, thinning "
                      f"{spec.thinning}, score {spec.score}, classifier {spec.classifier} -> {C.masker_dir(spec)}", file=sys.stderr, flush=True)
                C.train(spec, progress=progress)
                register_cached_maskers()
        self.masker(device)

    def masker(self, device: torch.device | str = "cpu") -> tuple[C.Masker, dict]:
        """The trained masker on ``device`` and its meta, loaded from the cache (never trained here)."""
        if self.params.checkpoint is not None:
            self._checkpoint_meta()
            d = self.masker_dir()
        else:
            spec = self.training_spec()
            d = C.masker_dir(spec)
            if not C.is_complete(d):
                raise MaskerNotTrained(
                    f"{self.name}: masker {spec.name!r} is not trained (no {d}); call the method's prepare() before asking "
                    "for maps (salbench run prepares every method that needs training), or train it with `salbench train casm`"
                )
        key = (str(d.resolve()), str(torch.device(device)))
        with _LOAD_LOCK:
            if key not in _LOADED:
                _LOADED[key] = C.load_masker(d, device=device)
            return _LOADED[key]

    def trained_input_size(self) -> tuple[int, int]:
        """The resolution the masker was (or will be) trained at, without training it."""
        if self.params.checkpoint is not None:
            return tuple(C.read_meta(self.params.checkpoint)["input_size"][-2:])  # type: ignore[return-value]
        spec = self.training_spec()
        d = C.masker_dir(spec)
        if C.is_complete(d):
            return tuple(C.read_meta(d)["input_size"][-2:])  # type: ignore[return-value]
        if spec.classifier not in _INPUT_SIZE:
            if spec.classifier.startswith("zoo:"):
                size = zoo.get_recipe(spec.classifier).data.size
                _INPUT_SIZE[spec.classifier] = (size, size)
            else:
                import timm  # seconds to import: only a masker of a timm classifier that is not trained yet needs it

                cfg = timm.data.resolve_data_config({}, model=timm.create_model(spec.classifier, pretrained=False))
                _INPUT_SIZE[spec.classifier] = tuple(int(v) for v in cfg["input_size"][-2:])  # type: ignore[assignment]
        return _INPUT_SIZE[spec.classifier]

    # -- SaliencyMethod hooks -----------------------------------------------------------------
    def cost(self) -> tuple[float, float]:
        return (1.0, 0.0)  # one encoder (classifier trunk) forward + a small decoder

    def check(self, classifier) -> None:
        want = self.trained_input_size()
        have = tuple(classifier.preprocess.input_size[-2:])
        if have != tuple(want):
            raise NotApplicable(
                f"{self.name}: masker trained on {want[0]}x{want[1]} images, source classifier {classifier.name} takes "
                f"{have[0]}x{have[1]} (another image domain); train one with `salbench train casm` and pass checkpoint=DIR"
            )

    def attribute(self, classifier, images, targets, seeds):
        masker, _ = self.masker(images.device)
        return masker(images)

    def config(self) -> dict[str, Any]:
        params = dataclasses.asdict(self.params)
        if self.params.checkpoint is not None:
            meta = self._checkpoint_meta()
            assert meta is not None
            spec = C.CasmSpec.from_dict(meta["spec"])
            key = meta["key"]
        else:
            spec = self.training_spec()
            key = spec.key()
        params.update({f: getattr(spec, f) for f in SPEC_FIELDS})
        params["lambda_r"] = spec.lam
        if params["train_classes"] is not None:
            params["train_classes"] = list(params["train_classes"])
        return {"name": self.name, "params": params, "training": {**spec.to_dict(), "lambda_r": spec.lam, "key": key}}


def _method_class(method: str, base: C.CasmSpec, description: str) -> type[CasmMethod]:
    cls = type(
        f"Casm_{method.replace('-', '_').replace('.', '_').replace('+', '_')}",
        (CasmMethod,),
        {"base_spec": base, "Params": _make_params(base), "description": description, "__module__": __name__, "__doc__": description},
    )
    cls.name = method
    return cls


def register_masker(name: str, base: C.CasmSpec, description: str | None = None) -> str | None:
    """Register ``casm-<name>`` (or the default names) for a training spec unless already taken."""
    method = C.method_name(name)
    if method in METHODS:
        return None
    METHODS.add(method, _method_class(method, base, description or f"CASM masker {name!r} ({base.thinning}, {base.score}, {'shared' if base.share_encoder else 'separate'} encoder)"))
    return method


def register_cached_maskers() -> list[str]:
    """Register ``casm-<name>`` for every cached masker whose method name is free (newest per name)."""
    added = []
    try:
        cached = C.cached_maskers()
    except OSError:
        return added
    for name, d in cached.items():
        if name in C.DEFAULT_NAMES:
            continue
        try:
            spec = C.CasmSpec.from_dict(C.read_meta(d)["spec"])
        except (OSError, ValueError, KeyError, TypeError, UsageError):
            continue
        m = register_masker(name, spec)
        if m:
            METHODS.get(m).default_selected = False  # named checkpoints run when asked for by name or pattern
            added.append(m)
    return added


CASM_DEFAULT = C.CasmSpec(name="casm", thinning="L100")
BASELINE_DEFAULT = C.CasmSpec(name="baseline", thinning="F")

register_masker("casm", CASM_DEFAULT, "CASM: classifier-agnostic masker (thinning L100, entropy, shared encoder), trained before the first run")
register_masker("baseline", BASELINE_DEFAULT, "CASM baseline: the same masker trained classifier-dependently (thinning F)")
register_cached_maskers()
