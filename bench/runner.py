"""The evaluator: a plain function over (dataset x methods x source classifiers x eval classifiers).

``prepare`` first loads the classifiers and creates the methods: the one, logged, step that may
train (zoo classifiers not yet cached, maskers of methods that need training). The ``Evaluator``
is built from what it returns and only evaluates. For each batch of images (pixel space, on the device):

* every eval classifier scores the original images once;
* for each (source classifier, method) pair: maps -> localisation rows (binarise, box, LE/OM,
  continuous F1, mask statistics) -> masked-in / masked-out / inpainted images -> every eval
  classifier scores them -> agnosticism rows;
* for the few example images of the run (``salbench.examples``), the image and every pair's map,
  binary mask and inpainted image, for the report's qualitative figure;
* for the first images of the run (``sanity`` metric ``images``), the sanity checks: every pair's
  maps recomputed on randomised copies of the source classifier and for a random class, compared
  with the maps the batch already computed (table ``sanity``, ``metrics/sanity.py``);
* the batch's rows are written as one atomic part file per table, then its completion marker.

The report (leaderboard, paper tables, figures) is not written here: it reads these files
(``salbench.report``; ``salbench run`` calls it once the run has returned).

Everything stays on the device and batched; the only per-image work is inpainting backends
that are per-image CPU algorithms (OpenCV Telea), which run in a thread pool.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from salbench import __version__, distributed, examples, zoo
from salbench.classifiers import Classifier, ModelOptions, expand_model_specs, load_classifier
from salbench.config import RunSpec, spec_hash
from salbench.datasets import SaliencyDataset, build_dataset, collate
from salbench.device import device_name, resolve_device, resolve_dtype
from salbench.errors import NotApplicable, UsageError, close_matches
from salbench.mapcache import MapCache, code_digest, default_root, images_digest, map_key, quantize
from salbench.methods import METHODS, SaliencyMethod, create_method
from salbench.metrics import MapContext, Metric, ScoreContext, agnosticism, binarize, boxes, metrics_for, select_metrics
from salbench.metrics._util import mask_keys
from salbench.metrics.binarize import BINARIZERS
from salbench.metrics.boxes import BOX_RULES
from salbench.metrics.inpainting import INPAINTERS
from salbench.metrics.sanity import SanityContext, random_other_class
from salbench.plugins import provenance as plugin_provenance
from salbench.randomise import layer_groups, randomised_classifier
from salbench.results import RunLock, RunWriter, atomic_write_json, is_empty_run_dir, progress_info, read_run_json, schema
from salbench.plan import Speeds, build_plan, load_saved_speeds
from salbench.progress import RunProgress
from salbench.rng import image_seeds
from salbench.stage_clock import StageClock, add_seconds, by_method, by_stage
from salbench.run_outcome import RunFailed, all_failed, load_errors
from salbench.store import versions  # noqa: F401  (runner.versions: the store's provenance)
from salbench.weights import check_class_count, drop_background_class

DEFAULT_RESULTS = Path("results")


@dataclass
class ResolvedRun:
    """A spec with every name resolved and validated: nothing is written before this succeeds."""

    spec: RunSpec
    methods: list[str]
    models: list[str]
    eval_models: list[str]
    method_configs: dict[str, dict[str, Any]]
    dataset: SaliencyDataset
    hash: str
    config: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Metric] | None = None  # the run's metrics, configured (None: every registered one)

    @property
    def run_id(self) -> str:
        return self.hash[:12]


def resolve(spec: RunSpec, dataset: SaliencyDataset | None = None) -> ResolvedRun:
    """Expand wildcards, build the dataset and method objects, check every name (raises UsageError).
    ``dataset`` stands in for the spec's (``salbench plan --images``: a dataset not on this machine)."""
    methods = METHODS.select(spec.methods, exclude=spec.exclude_methods)
    if list(spec.methods) == ["*"]:  # "every method": registered methods, not every cached checkpoint
        methods = [m for m in methods if METHODS.get(m).default_selected]
    if not methods:
        raise UsageError(f"no methods left after excluding {spec.exclude_methods}")
    for name in sorted(set(spec.method_params) - set(METHODS.names())):
        METHODS.get(name)  # an adapter spec (captum:...) builds; anything else is an unknown method
    dataset = build_dataset(spec.dataset) if dataset is None else dataset
    # per-dataset defaults (e.g. RISE mask count, occlusion window for the image size), then the spec's
    method_params = {m: {**METHODS.get(m).defaults_for(tuple(dataset.image_size)), **spec.method_params.get(m, {})} for m in methods}
    # method parameters checked against the image size; a limit above the dataset size said aloud
    created = {m: create_method(m, **method_params[m]) for m in methods}
    for method in created.values():
        method.check_image_size(tuple(dataset.image_size))
    method_configs = {m: method.config() for m, method in created.items()}
    for m, method in created.items():  # a method from outside salbench: its family recorded for the report
        if not type(method).__module__.startswith("salbench."):
            method_configs[m].setdefault("family", method.capabilities.family)
    metrics = select_metrics(spec.metrics, spec.exclude_metrics, spec.metric_params, tuple(dataset.image_size))
    if spec.limit is not None and spec.limit > len(dataset):
        print(f"salbench: warning: limit={spec.limit} is more than the {len(dataset)} images of {dataset.spec}; evaluating {len(dataset)}", file=sys.stderr)
    models = expand_model_specs(spec.models)
    eval_models = expand_model_specs(spec.eval_models) if spec.eval_models else list(models)
    stray = [k for k in spec.model_overrides if k not in models and k not in eval_models]
    if stray:  # a typo here would silently leave the intended classifier unconfigured
        used = list(dict.fromkeys(models + eval_models))
        raise UsageError(f"model_overrides names {stray[0]!r}, which is not a classifier of this run{close_matches(stray[0], used)}; "
                         f"classifiers: {', '.join(used)}")
    BINARIZERS.get(spec.binarize)
    BOX_RULES.get(spec.box)
    INPAINTERS.get(spec.inpaint)
    resolve_dtype(spec.dtype)
    resolve_device(spec.device)
    n = len(dataset) if spec.limit is None else min(spec.limit, len(dataset))
    config = {
        **spec.to_dict(),
        "dataset": dataset.spec,
        "protocol": dataset.protocol(),
        "num_images": n,
        "methods": methods,
        "models": models,
        "eval_models": eval_models,
        "method_configs": method_configs,
        "metric_configs": {n: m.config() for n, m in metrics.items()},
        "salbench_version": __version__,
    }
    # plugin files (sha256) and modules / entry points (version) the methods come from; absent
    # without plugins, so that specs without any keep their hash and run directory name
    used_plugins = plugin_provenance(methods, spec.plugins)
    config.pop("plugins", None)
    if used_plugins:
        config["plugins"] = used_plugins
    return ResolvedRun(spec, methods, models, eval_models, method_configs, dataset, spec_hash(config), config, method_params, metrics)


def default_run_dir(resolved: ResolvedRun, root: Path = DEFAULT_RESULTS) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = resolved.spec.name or resolved.dataset.spec.split("?")[0].split(":")[0]
    return root / f"{base}-{resolved.run_id}-{stamp}"


def latest_run_dir(resolved: ResolvedRun, root: Path = DEFAULT_RESULTS) -> Path | None:
    """The newest run directory under ``root`` made from the same resolved spec (for ``--resume``)."""
    if not root.is_dir():
        return None
    hits = sorted(p for p in root.iterdir() if p.is_dir() and f"-{resolved.run_id}-" in p.name and (p / "run.json").is_file())
    return hits[-1] if hits else None


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:500]


class _Rows:
    """Column chunks for one table; each ``add`` is a block of rows (scalars are broadcast,
    columns it leaves out are null for its rows)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, dict[str, Any]]] = []

    def add(self, **columns: Any) -> None:
        n = next(len(v) for v in columns.values() if isinstance(v, (np.ndarray, list)))
        self.chunks.append((n, columns))

    def table(self, schema: pa.Schema) -> pa.Table:
        arrays = []
        for f in schema:
            flat: list[Any] = []
            for n, cols in self.chunks:
                v = cols.get(f.name)
                if isinstance(v, np.ndarray):
                    flat.extend(v.tolist())
                elif isinstance(v, list):
                    flat.extend(v)
                else:
                    flat.extend([v] * n)
            arrays.append(pa.array(flat, type=f.type))
        return pa.Table.from_arrays(arrays, schema=schema)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _column(t: torch.Tensor) -> Any:
    """A metric's B-long (or B x k) tensor as row values: bools stay bool, B x k becomes lists."""
    if t.dtype == torch.bool:
        return t.detach().cpu().numpy().astype(bool)
    if t.ndim == 2:  # per-image lists (curves); an image the metric did not score (all NaN) is null
        return [None if np.isnan(row).all() else row for row in _np(t).tolist()]
    return _np(t)


def _log(message: str) -> None:
    print(f"salbench: {message}", file=sys.stderr, flush=True)


def load_classifiers(resolved: ResolvedRun, device: torch.device, progress: bool = True) -> dict[str, Classifier]:
    """Every source and eval classifier of a run, on ``device``; zoo classifiers not yet in the
    cache are trained first (with their progress bars), each announced with a log line."""
    spec = resolved.spec
    options = ModelOptions(device=device, amp_dtype=resolve_dtype(spec.dtype), channels_last=spec.channels_last, overrides=spec.model_overrides)
    classifiers: dict[str, Classifier] = {}
    for name in dict.fromkeys(resolved.models + resolved.eval_models):
        if name.startswith("zoo:") and not zoo.is_built(name[4:]):
            roles = [role for role, names in (("source", resolved.models), ("eval", resolved.eval_models)) if name in names]
            _log(f"building {name}: not in the zoo cache ({zoo.zoo_dir(name[4:])}); the run uses it as {' and '.join(roles)} classifier")
            zoo.build([name[4:]], progress=progress)
        clf = load_classifier(name, options)
        if check_class_count(clf.num_classes, resolved.dataset.num_classes, name):
            drop_background_class(clf)  # 1001-way checkpoint with background at index 0
        classifiers[name] = clf
    return classifiers


def create_methods(resolved: ResolvedRun, device: torch.device, progress: bool = True) -> dict[str, SaliencyMethod]:
    """The run's methods with their parameters and the run seed; methods that need training
    train (or load) what they need now, each announced with a log line."""
    methods: dict[str, SaliencyMethod] = {}
    for name in resolved.methods:
        method = create_method(name, **resolved.method_params.get(name, {}))
        method.seed = resolved.spec.seed
        if method.capabilities.needs_training:
            _log(f"preparing {name}: it needs a trained model (trained now unless cached)")
            method.prepare(device, progress)
        methods[name] = method
    return methods


def prepare(resolved: ResolvedRun, device: torch.device, progress: bool = True) -> tuple[dict[str, Classifier], dict[str, SaliencyMethod]]:
    """Everything a run needs before its first batch: the classifiers and the prepared methods.

    The one step of a run that may train (missing zoo classifiers, untrained maskers); the
    ``Evaluator`` built from its result only evaluates.
    """
    return load_classifiers(resolved, device, progress), create_methods(resolved, device, progress)


def open_map_cache(spec: RunSpec) -> MapCache | None:
    """The saliency-map cache a spec asks for (``map_cache``: a folder, or "auto"), or None."""
    if not spec.map_cache:
        return None
    root = default_root() if spec.map_cache == "auto" else Path(spec.map_cache)
    return MapCache(root, spec.map_precision)


class Evaluator:
    """Evaluates batches of a run with classifiers and methods it is given (it loads and trains
    nothing); ``evaluate_batch`` makes a batch's rows.

    ``not_applicable`` holds the (method, source classifier) pairs a method refuses, with why.
    """

    def __init__(self, resolved: ResolvedRun, classifiers: dict[str, Classifier], methods: dict[str, SaliencyMethod],
                 device: torch.device, map_cache: MapCache | None = None):
        missing = [n for n in dict.fromkeys(resolved.models + resolved.eval_models) if n not in classifiers]
        if missing or set(methods) != set(resolved.methods):
            raise ValueError(f"Evaluator: classifiers missing {missing}, methods {sorted(methods)} for run methods {sorted(resolved.methods)}")
        self.r = resolved
        self.spec = resolved.spec
        self.device = device
        self.classifiers = classifiers
        self.methods = methods
        self.map_cache = map_cache
        self.clock = StageClock(device)  # seconds per stage, taken into each batch's marker
        self.on_step: Callable[[str, str], None] | None = None  # called as each (method, source) pair starts
        self.example_indices = set(examples.choose(resolved.config.get("num_images", 0), self.spec.seed))
        self.not_applicable: dict[tuple[str, str], str] = {}
        sanity = [m for m in metrics_for("sanity", resolved.metrics) if m.name == "sanity"]
        self.sanity = sanity[0] if sanity and sanity[0].params.images > 0 else None
        self._randomised: dict[tuple[str, int], Classifier] = {}
        for src in resolved.models:
            for name, method in self.methods.items():
                try:
                    method.check(self.classifiers[src])
                except NotApplicable as exc:
                    self.not_applicable[(name, src)] = str(exc)

    def _map_key(self, mname: str, src: str) -> str:
        independent = not self.methods[mname].capabilities.classifier_dependent
        clf = self.classifiers[src]
        return map_key({
            "dataset": self.r.dataset.spec, "image_size": list(self.r.dataset.image_size),
            "method": self.r.method_configs[mname], "code": code_digest(self.methods[mname]), "seed": self.spec.seed,
            "precision": self.spec.map_precision,
            "source": None if independent else [src, clf.meta.get("weights_sha256"), self.spec.target, self.spec.dtype,
                                                 self.spec.model_overrides.get(src), code_digest(clf)],
        })

    def _maps(self, mname: str, src: str, x: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, counts: dict[str, int],
              digest: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Maps of one (method, source) batch and the method's per-image diagnostics, from the map
        cache when it holds trusted ones (``digest``: ``images_digest(x)``; stale and corrupt
        entries are recomputed and counted; cached maps come without diagnostics)."""
        key = self._map_key(mname, src) if self.map_cache is not None else ""
        if self.map_cache is not None:
            cached, status = self.map_cache.load(key, index, digest, (len(x), *x.shape[2:]))
            if cached is not None:
                counts["maps_reused"] = counts.get("maps_reused", 0) + len(x)
                return cached.to(x.device), {}
            if status in ("stale", "corrupt"):
                counts[f"maps_{status}"] = counts.get(f"maps_{status}", 0) + len(x)
        seeds = image_seeds(self.spec.seed, index, self._salt(mname))
        diagnostics: dict[str, torch.Tensor] = {}
        maps = quantize(self.methods[mname](self.classifiers[src], x, targets, seeds, diagnostics=diagnostics), self.spec.map_precision)
        counts["maps_computed"] = counts.get("maps_computed", 0) + len(x)
        if self.map_cache is not None:
            self.map_cache.save(key, index, maps, {"method": mname, "source": src, "dataset": self.r.dataset.spec}, digest)
        return maps, diagnostics

    def _randomised_copy(self, src: str, depth: int) -> Classifier:
        """The source classifier with its top ``depth`` layer groups re-initialised (cached on disk)."""
        key = (src, depth)
        if key not in self._randomised:
            self._randomised[key] = randomised_classifier(self.classifiers[src], depth, self.sanity.params.seed)
        return self._randomised[key]

    def _sanity(self, batch, sel: list[int], kept: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]], out: "_Rows",
                counts: dict[str, int]) -> None:
        """The sanity checks on images ``sel`` of the batch: each kept (method, source) pair's maps
        recomputed on randomised copies of the source (cascading MPRT) and for a random other
        class, compared with the original maps by the sanity-table metrics.

        Only classifier-dependent methods are recomputed; a classifier-independent method's maps
        (controls, trained maskers) read neither the classifier nor the class, so its recomputed map
        is its original one and every similarity is 1 (tests/metrics/test_sanity.py recomputes
        controls on a randomised network and finds them identical). The method's own per-image
        seeds are reused, so a stochastic map changes only if the classifier or the class does.
        """
        r, spec, metric = self.r, self.spec, self.sanity
        x, index = batch.images[sel], batch.index[sel]
        ids = dict(run_id=r.run_id, dataset=r.dataset.spec, image_index=_np(index).astype(np.int64), image_id=[batch.ids[i] for i in sel],
                   label=_np(batch.labels[sel]).astype(np.int64))
        for src in r.models:
            clf = self.classifiers[src]
            n_groups = len(layer_groups(clf.model))
            tests: list[tuple[str, int | None]] = [("mprt", d) for d in metric.depths_for(n_groups)]
            if metric.params.random_logit:
                tests.append(("random_logit", None))
            for test, depth in tests:
                for (mname, s), (original, targets) in kept.items():
                    if s != src:
                        continue
                    row = dict(**ids, method=mname, source_model=src, test=test, depth=depth, groups=n_groups if test == "mprt" else None)
                    try:
                        with self.clock("sanity", mname, src):
                            model = self._randomised_copy(src, depth) if depth is not None else clf
                            row["layers"] = model.meta["mprt_layers"][-1] if depth is not None else None
                            t = targets if test == "mprt" else random_other_class(targets, image_seeds(spec.seed, index, self._salt("random_logit")), clf.num_classes)
                            seeds = image_seeds(spec.seed, index, self._salt(mname))
                            if self.methods[mname].capabilities.classifier_dependent:
                                other = quantize(self.methods[mname](model, x, t, seeds), spec.map_precision)
                            else:  # reads neither the classifier nor the class: its map is the original
                                other = original
                            ctx = SanityContext(original, other, test)
                            for m in metrics_for("sanity", r.metrics):
                                ctx.values.update(m.compute(ctx))
                    except torch.cuda.OutOfMemoryError:
                        raise
                    except Exception as exc:  # one failing recomputation is an error row, not a crash
                        if os.environ.get("SALBENCH_DEBUG"):
                            traceback.print_exc()
                        counts["sanity_errors"] = counts.get("sanity_errors", 0) + len(sel)
                        out.add(**row, target=_np(targets).astype(np.int64), error=_one_line(exc))
                        continue
                    counts["sanity_maps"] = counts.get("sanity_maps", 0) + len(sel)
                    out.add(**row, target=_np(t).astype(np.int64), error=None, **{k: _column(v) for k, v in ctx.values.items()})

    def _salt(self, method: str) -> int:
        return int(hashlib.sha1(method.encode()).hexdigest()[:7], 16)

    def _localize(self, maps: torch.Tensor, batch, diagnostics: dict[str, torch.Tensor] | None = None) -> MapContext:
        """Binarise, box, and every localization-table metric that does not depend on the source
        classifier (those that do run per source in ``_per_source``)."""
        spec = self.spec
        b = binarize.binarize(maps, spec.binarize, **spec.binarize_params)
        box, box_valid = boxes.box_from_mask(b, spec.box, saliency=maps, images=batch.images)
        ctx = MapContext(maps=maps, binary=b, box=box, box_valid=box_valid, batch=batch, diagnostics=dict(diagnostics or {}))
        for metric in metrics_for("localization", self.r.metrics):
            if not metric.per_source and metric.applies(ctx):
                ctx.values.update(metric.compute(ctx))
        return ctx

    def _per_source(self, ctx: MapContext, source_correct: torch.Tensor, targets: torch.Tensor, src: str | None = None,
                    logits_clean: dict[str, torch.Tensor] | None = None, shared: dict[Any, Any] | None = None) -> dict[str, Any]:
        """The source-dependent metrics on top of ``ctx`` (those that call classifiers get them,
        with the clean logits and the batch's ``shared`` cache); all localization columns as row values."""
        values = dict(ctx.values)
        models = dict(classifiers=self.classifiers, source_model=src, eval_models=tuple(self.r.eval_models), logits_clean=logits_clean,
                      shared=shared) if src is not None else {}
        here = replace(ctx, source_correct=source_correct, targets=targets, values=values, **models)
        for metric in metrics_for("localization", self.r.metrics):
            if metric.per_source and metric.applies(here):
                values.update(metric.compute(here))
        return {k: _column(v) for k, v in values.items()}

    def _scores(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        """Every agnosticism-table metric on one classifier's logits."""
        ctx = ScoreContext(logits=logits, labels=labels)
        out: dict[str, np.ndarray] = {}
        for metric in metrics_for("agnosticism", self.r.metrics):
            out.update({k: _np(v) for k, v in metric.compute(ctx).items()})
        return out

    def _agnosticism(self, x: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, stage: tuple[str, str] = ("", ""),
                     evaluated: dict[tuple[int, bytes], dict[str, torch.Tensor]] | None = None) -> dict[str, dict[str, Any]]:
        """Scores of every eval classifier on the masked-in, masked-out and inpainted images.

        The three variants go through each eval classifier as one batch. A failing eval
        classifier yields its exception in place of scores (error rows), the rest go on.

        ``evaluated`` (one per batch) holds the eval logits of every (image, binary mask) already
        composed and scored in the batch: the variants depend on the image and the mask alone, so
        an image whose mask another (method, source) pair already produced is not composed or
        scored again. On the zoo, Grad-CAM, HiResCAM and XGradCAM (and CAM on the GAP-linear
        heads) are the same map up to float rounding, and most of their masks coincide.
        """
        masked = [v for v in agnosticism.VARIANTS if v != "original"]
        n, evaluated = len(x), {} if evaluated is None else evaluated
        keys = list(enumerate(mask_keys(b)))
        new = [i for i, k in enumerate(keys) if k not in evaluated]
        logits: dict[str, torch.Tensor] = {}
        failed: dict[str, Exception] = {}
        if new:
            sel = torch.tensor(new, device=x.device)
            with self.clock("compose", *stage):
                stacked = torch.cat([agnosticism.compose(x[sel], b[sel], v, inpaint=self.spec.inpaint) for v in masked])
            for ev in self.r.eval_models:
                try:
                    with self.clock("eval", *stage):
                        logits[ev] = self.classifiers[ev](stacked).view(len(masked), len(new), -1)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:
                    failed[ev] = exc
            if not failed:  # a failure is not remembered: the next pair tries again and reports its own
                for j, i in enumerate(new):
                    evaluated[keys[i]] = {ev: lg[:, j] for ev, lg in logits.items()}
        fresh = {i: j for j, i in enumerate(new)}
        out: dict[str, dict[str, Any]] = {}
        for ev in self.r.eval_models:
            if ev in failed:
                out[ev] = {v: failed[ev] for v in masked}
                continue
            rows = [logits[ev][:, fresh[i]] if i in fresh else evaluated[keys[i]][ev] for i in range(n)]  # variants x classes each
            s_all = self._scores(torch.stack(rows, 1).reshape(len(masked) * n, -1), labels.repeat(len(masked)))
            out[ev] = {v: {k: t[j * n : (j + 1) * n] for k, t in s_all.items()} for j, v in enumerate(masked)}
        return out

    @torch.no_grad()
    def evaluate_batch(self, batch) -> tuple[dict[str, pa.Table], dict[str, int]]:
        spec, r = self.spec, self.r
        loc, agn = _Rows(), _Rows()
        rows = {"localization": loc, "agnosticism": agn, "example_images": _Rows(), "example_maps": _Rows(), "sanity": _Rows()}
        counts = {"maps": 0, "errors": 0, "load_errors": 0}
        if batch.errors is not None:  # images that failed to load: one error row each, then the rest
            bad = [i for i, e in enumerate(batch.errors) if e]
            counts["load_errors"] += len(bad)
            for i in bad:
                for src in r.models:
                    for mname in self.methods:
                        loc.add(run_id=r.run_id, dataset=r.dataset.spec, image_index=[int(batch.index[i])], image_id=[batch.ids[i]],
                                label=[int(batch.labels[i])], method=mname, source_model=src, binarize=spec.binarize, error=batch.errors[i])
            keep = [i for i, e in enumerate(batch.errors) if not e]
            if not keep:
                return {k: v.table(schema(k)) for k, v in rows.items()}, counts
            batch = batch.select(keep)
        batch = batch.to(self.device)
        x, labels = batch.images, batch.labels
        base = dict(run_id=r.run_id, dataset=r.dataset.spec)
        ids = dict(image_index=_np(batch.index).astype(np.int64), image_id=list(batch.ids), label=_np(labels).astype(np.int64))
        picked = [i for i, k in enumerate(batch.index.tolist()) if k in self.example_indices]  # stored for the report's figure
        if picked:
            boxes_ok = [[bx for bx, ok in zip(batch.boxes[i].tolist(), batch.box_valid[i].tolist()) if ok] for i in picked]
            rows["example_images"].add(**examples.image_columns(ids["image_index"][picked], [batch.ids[i] for i in picked], ids["label"][picked],
                                                                _np(x[picked]), boxes_ok, getattr(r.dataset, "class_names", None)))

        digest = images_digest(x) if self.map_cache is not None else ""
        with self.clock("clean"):
            logits_clean = {name: clf(x) for name, clf in self.classifiers.items()}
        scores_clean = {name: self._scores(lg, labels) for name, lg in logits_clean.items()}
        # Classifier-independent methods (controls, trained maskers) give the same maps for every
        # source classifier: compute maps and eval scores once, write rows for every source.
        shared: dict[str, Any] = {}
        shared_forwards: dict[Any, Any] = {}  # method-independent forwards of model metrics (substrate logits)
        evaluated: dict[tuple[int, bytes], dict[str, torch.Tensor]] = {}  # eval logits per (image, mask): _agnosticism
        # the sanity checks' images in this batch, and the original maps they compare against
        sanity_sel = [i for i, k in enumerate(batch.index.tolist()) if k < self.sanity.params.images] if self.sanity else []
        kept: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

        for src in r.models:
            src_logits = logits_clean[src]
            source_correct = src_logits.argmax(1) == labels
            targets = labels if spec.target == "label" else src_logits.argmax(1)
            for mname, method in self.methods.items():
                if (mname, src) in self.not_applicable:
                    continue
                if self.on_step is not None:
                    self.on_step(mname, src)
                row_base = dict(**base, **ids, method=mname, source_model=src)
                independent = not method.capabilities.classifier_dependent
                if independent and mname in shared:
                    result = shared[mname]
                else:
                    try:
                        with self.clock("maps", mname, src):
                            maps, diagnostics = self._maps(mname, src, x, targets, batch.index, counts, digest)
                        with self.clock("localize", mname, src):
                            ctx = self._localize(maps, batch, diagnostics)
                        stored = None
                        if picked:  # the inpainting is redone on these images alone: per-image backends give the same pixels
                            inpainted = agnosticism.compose(x[picked], ctx.binary[picked], "inpainted", inpaint=spec.inpaint)
                            stored = examples.map_columns(_np(maps[picked]), _np(ctx.binary[picked]), _np(inpainted))
                        result = [ctx, self._agnosticism(x, ctx.binary, labels, (mname, src), evaluated), stored]
                    except torch.cuda.OutOfMemoryError:
                        raise  # handled by evaluate_with_retry: split the batch
                    except Exception as exc:  # one method failing on one batch is an error row, not a crash
                        if os.environ.get("SALBENCH_DEBUG"):
                            traceback.print_exc()
                        result = exc
                    if independent:
                        shared[mname] = result
                if isinstance(result, Exception):
                    counts["errors"] += len(x)
                    loc.add(**row_base, binarize=spec.binarize, error=_one_line(result), source_correct=_np(source_correct).astype(bool))
                    continue
                ctx, per_eval, stored = result
                if sanity_sel and self.sanity.covers(mname):
                    kept[(mname, src)] = (ctx.maps[sanity_sel], targets[sanity_sel])
                if stored is not None:  # a shared result's examples are stored once, for every source
                    rows["example_maps"].add(image_index=ids["image_index"][picked], method=mname, source_model=None if independent else src, **stored)
                    result[2] = None
                try:
                    with self.clock("metrics", mname, src):
                        values = self._per_source(ctx, source_correct, targets, src, logits_clean, shared_forwards)
                except Exception as exc:  # a failing source-dependent metric: error rows for this pair
                    counts["errors"] += len(x)
                    loc.add(**row_base, binarize=spec.binarize, error=_one_line(exc), source_correct=_np(source_correct).astype(bool))
                    continue
                loc.add(**row_base, binarize=spec.binarize, target=_np(targets).astype(np.int64),
                        source_correct=_np(source_correct).astype(bool), error=None, **values)
                counts["maps"] += len(x)
                for ev, per_variant in per_eval.items():
                    s = scores_clean[ev]
                    agn.add(**row_base, eval_model=ev, variant="original", inpaint=spec.inpaint, error=None, **s)
                    for variant, scores in per_variant.items():
                        if isinstance(scores, Exception):
                            counts["errors"] += len(x)
                            agn.add(**row_base, eval_model=ev, variant=variant, inpaint=spec.inpaint, error=_one_line(scores))
                        else:
                            agn.add(**row_base, eval_model=ev, variant=variant, inpaint=spec.inpaint, error=None, **scores)
        if kept:  # seconds under "sanity/<method>/<source>" in the batch marker and run.json timing
            self._sanity(batch, sanity_sel, kept, rows["sanity"], counts)
        return {k: v.table(schema(k)) for k, v in rows.items()}, counts


def batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


SORT_KEYS = {
    "localization": ["source_model", "method", "image_index"],
    "agnosticism": ["source_model", "method", "eval_model", "variant", "image_index"],
    "example_images": ["image_index"],
    "example_maps": ["source_model", "method", "image_index"],
    "sanity": ["source_model", "method", "test", "depth", "image_index"],
}


def evaluate_with_retry(evaluator: Evaluator, batch, counts: dict[str, int]) -> dict[str, pa.Table]:
    """Evaluate a batch; on device out-of-memory split it in halves and retry (recorded in counts).

    Rows are sorted canonically, so a split batch writes exactly the rows of an unsplit one.
    """
    try:
        tables, c = evaluator.evaluate_batch(batch)
    except torch.cuda.OutOfMemoryError:
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        counts["oom_splits"] = counts.get("oom_splits", 0) + 1
        half = len(batch) // 2
        parts = [evaluate_with_retry(evaluator, batch.select(list(range(half))), counts),
                 evaluate_with_retry(evaluator, batch.select(list(range(half, len(batch)))), counts)]
        return {k: pa.concat_tables([p[k] for p in parts]).sort_by([(c, "ascending") for c in SORT_KEYS[k]]) for k in parts[0]}
    for k, v in c.items():
        counts[k] = counts.get(k, 0) + v
    return {k: t.sort_by([(c, "ascending") for c in SORT_KEYS[k]]) for k, t in tables.items()}


def _choose_run_dir(resolved: ResolvedRun, out: str | Path | None, resume: bool, root: Path) -> tuple[Path, dict[str, Any] | None]:
    if out is not None:
        run_dir = Path(out)
    elif resume:
        found = latest_run_dir(resolved, root)
        if found is None:
            raise UsageError(f"--resume: no earlier run of this spec (id {resolved.run_id}) under {str(root)!r}; pass --out DIR")
        run_dir = found
    else:
        run_dir = default_run_dir(resolved, root)
    previous: dict[str, Any] | None = None
    if run_dir.is_dir() and not is_empty_run_dir(run_dir):
        if not resume:
            raise UsageError(f"output directory {str(run_dir)!r} already exists; pass --resume to continue it or choose another --out")
        previous = read_run_json(run_dir)
        if previous.get("hash") != resolved.hash:
            raise UsageError(f"--resume: {str(run_dir)!r} holds run {previous.get('run_id')} with a different spec; not mixing results")
    elif run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output path {str(run_dir)!r} exists and is not a directory")
    return run_dir, previous


def run(spec: RunSpec, out: str | Path | None = None, *, resume: bool = False, progress: bool = True,
        results_root: str | Path = DEFAULT_RESULTS) -> Path:
    """Run a benchmark spec and return its run directory. Raises UsageError before writing anything.

    Writes the tables and run.json (the report is ``salbench.report.write_report``'s job). Under
    torchrun, each rank evaluates its share of the batches (see ``salbench.distributed``).
    """
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    resolved = resolve(spec)
    device = resolve_device(spec.device)
    shard = distributed.init_from_env(device.type)
    if not distributed.all_equal(resolved.hash, shard):  # e.g. a plugin file that differs between the ranks' machines
        distributed.shutdown(shard)
        raise UsageError(f"the torchrun ranks resolved different run specs (rank {shard.rank}: {resolved.run_id}); "
                         "every rank must load the same plugins, installed packages and files")
    if device.type == "cuda" and shard.world_size > 1:
        device = torch.device("cuda", shard.local_rank)
    choice: tuple[Any, ...]
    lock: RunLock | None = None
    if shard.is_main:
        try:
            choice = (*_choose_run_dir(resolved, out, resume, Path(results_root)), None)
            lock = RunLock(choice[0])
            lock.acquire()
        except UsageError as exc:
            choice, lock = (None, None, str(exc)), None
    else:
        choice = (None, None, None)
    run_dir, previous, error = distributed.broadcast(choice, shard)
    if error:
        distributed.shutdown(shard)
        raise UsageError(error)
    try:
        run_dir = Path(run_dir)
        if device.type == "cpu" and shard.world_size == 1:
            torch.set_num_threads(max(1, os.cpu_count() or 1))

        classifiers, methods = prepare(resolved, device, progress)
        evaluator = Evaluator(resolved, classifiers, methods, device, open_map_cache(spec))
        writer = RunWriter(run_dir)
        n = resolved.config["num_images"]
        all_batches = batches(n, spec.batch_size)
        meta: dict[str, Any] = {}
        if shard.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cleaned = writer.clean_partial()
            done = writer.completed()
            meta = {
                "run_id": resolved.run_id,
                "hash": resolved.hash,
                "spec": resolved.config,
                "dataset": resolved.dataset.describe(),
                "classifiers": {k: v.describe() for k, v in evaluator.classifiers.items()},
                "not_applicable": [{"method": m, "model": s, "reason": why} for (m, s), why in sorted(evaluator.not_applicable.items())],
                "versions": versions(),
                "plugins": resolved.config.get("plugins", []),
                "git_commit": git_commit(),
                "device": device_name(device),
                "world_size": shard.world_size,
                "command": " ".join(sys.argv),
                "status": "running",
                "started": (previous or {}).get("started", started.isoformat()),
                "resumed": ([*(previous or {}).get("resumed", []), {"at": started.isoformat(), "batches_done": len(done), "partial_files_removed": cleaned,
                                                                       "batches_repaired": {str(u): why for u, why in writer.repaired.items()}}] if previous else []),
                "num_batches": len(all_batches),
            }
            atomic_write_json(run_dir / "run.json", meta)
        distributed.barrier(shard)
        done = writer.completed()
        pending = [i for i in range(len(all_batches)) if i not in done and shard.owns(i)]

        counts: dict[str, int] = {"maps": 0, "errors": 0}
        loader = torch.utils.data.DataLoader(resolved.dataset, batch_sampler=[all_batches[i] for i in pending], collate_fn=collate, num_workers=spec.workers)
        desc = f"salbench run {resolved.run_id}" + (f" [rank {shard.rank}/{shard.world_size}]" if shard.world_size > 1 else "")
        plan = build_plan(resolved, methods, load_saved_speeds(resolved, device) or Speeds(), evaluator.not_applicable)
        if shard.is_main and plan.total_seconds is not None:
            meta["plan_estimate_s"] = round(plan.total_seconds, 1)
        bar = RunProgress(plan, sum(len(all_batches[i]) for i in pending), desc, disable=not progress)
        evaluator.on_step = bar.step
        for k, (unit, batch) in enumerate(zip(pending, loader), start=1):
            before = dict(counts)
            bar.start_batch(k, len(pending), len(batch))
            tables = evaluate_with_retry(evaluator, batch, counts)
            writer.write_unit(unit, tables, {"unit": unit, "images": len(batch), "rank": shard.rank, **{k: counts[k] - before.get(k, 0) for k in counts},
                                             "seconds": evaluator.clock.take()})
            bar.end_batch(counts["maps"], counts["errors"])
        bar.close()
        distributed.barrier(shard)
        failed = False
        if shard.is_main:
            totals: dict[str, int] = {}
            infos = progress_info(run_dir)
            for info in infos:
                for k, v in info.items():
                    if k not in ("unit", "rank", "seconds"):
                        totals[k] = totals.get(k, 0) + int(v)
            seconds = add_seconds(info.get("seconds", {}) for info in infos)
            meta["timing"] = {"stages": by_stage(seconds), "maps_by_method": by_method(seconds, "maps"), "seconds": seconds}
            # load errors listed in the dataset section; a run with no map at all failed
            failed = all_failed(totals)
            found = load_errors(run_dir)
            meta["dataset"] = {**meta["dataset"], "load_errors": found["counts"], "load_error_images": found["images"]}
            meta.update(status="failed" if failed else "complete", finished=_dt.datetime.now(_dt.timezone.utc).isoformat(), wall_time_s=round(time.perf_counter() - t0, 2), counts=totals)
            atomic_write_json(run_dir / "run.json", meta)
        distributed.shutdown(shard)
        if shard.is_main and failed:
            raise RunFailed(f"every row of run {resolved.run_id} is an error ({totals.get('errors', 0)} map errors, {totals.get('load_errors', 0)} load errors, 0 maps); see the error column in {run_dir}")
        return run_dir
    finally:
        if lock is not None:
            lock.release()
