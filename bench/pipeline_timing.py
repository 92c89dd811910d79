"""The whole per-batch evaluation as one timed workload (``kind="pipeline"`` throughput rows).

``runner.Evaluator.evaluate_batch`` on one batch of synthetic images: maps, binarisation, boxes,
LE/OM/F1, mask statistics, the masked-in / masked-out / inpainted images, N eval classifiers on
all four variants, and the Arrow rows; i.e. everything a run does per batch except reading
images and writing Parquet. The Evaluator is built through its public constructor from
classifiers and methods made here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch

from salbench.config import RunSpec
from salbench.datasets.base import Batch
from salbench.errors import one_line
from salbench.methods import SaliencyMethod, create_method
from salbench.runner import Evaluator, ResolvedRun
from salbench.throughput_setup import ThroughputConfig, method_params
from salbench.timing import Timing


class _ShapeOnlyDataset:
    """What ``Evaluator`` needs of a dataset when batches are made up: a spec and a class count."""

    def __init__(self, num_classes: int, image_size: int):
        self.num_classes = num_classes
        self.image_size = (image_size, image_size)
        self.spec = f"throughput:noise?size={image_size}"


def make_pipeline_evaluator(source: str, classifiers: dict[str, Any], eval_names: list[str], methods: list[str], cfg: ThroughputConfig,
                            dtype: str, channels_last: bool, device: torch.device) -> Evaluator:
    """A ``runner.Evaluator`` of ``methods`` over already-loaded classifiers: ``classifiers`` maps
    every name in ``[source] + eval_names`` (aliases like ``resnet18#2`` allowed) to a Classifier.
    Methods that need training are prepared here, before anything is timed."""
    params = {m: method_params(m, cfg.image_size) for m in methods}
    spec = RunSpec(
        dataset="throughput", methods=list(methods), models=[source], eval_models=list(eval_names),
        binarize=cfg.binarize, box=cfg.box, inpaint=cfg.inpaint, dtype=dtype, channels_last=channels_last,
        device=str(device), seed=cfg.seed, method_params=params,
    )
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    dataset = _ShapeOnlyDataset(classifiers[source].num_classes, cfg.image_size)
    configs = {m: {"name": m, "params": params[m]} for m in methods}
    resolved = ResolvedRun(spec, list(methods), [source], list(eval_names), configs, dataset, digest)  # type: ignore[arg-type]
    created: dict[str, SaliencyMethod] = {}
    for name in methods:
        method = create_method(name, **params[name])
        method.seed = cfg.seed
        if method.capabilities.needs_training:
            method.prepare(device, progress=False)
        created[name] = method
    used = {name: classifiers[name] for name in dict.fromkeys([source, *eval_names])}
    return Evaluator(resolved, used, created, device)  # no map cache: the maps are always computed


def pipeline_eval_names(source: str, models: list[str], n: int) -> list[str]:
    """``n`` eval classifiers: the source first, then the other models, cycled; repeats get
    ``#k`` aliases (the same loaded classifier evaluated again costs the same)."""
    pool = [source] + [m for m in models if m != source]
    names, seen = [], {}
    for i in range(n):
        base = pool[i % len(pool)]
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def measure_pipeline(cfg: ThroughputConfig, model: str, models: list[str], get: Callable[[str], Any], methods: list[str], dtype: str, cl: bool,
                     comp: bool, bs: int, x: torch.Tensor, t: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, device: torch.device,
                     add: Callable[..., None], measure: Callable[[Callable[[], Any]], tuple[Timing | None, str | None]]) -> None:
    """Time one batch through the pipeline per method, with source ``model`` and
    ``cfg.pipeline_eval_models`` eval classifiers (loaded by ``get``); rows go to ``add``."""
    src = get(model)
    names = pipeline_eval_names(model, models, cfg.pipeline_eval_models)
    classifiers: dict[str, Any] = {model: src}
    notes = []
    for name in names:
        base = name.split("#")[0]
        try:
            clf = get(base)
        except Exception as exc:
            notes.append(f"{base}: {one_line(exc)}")
            continue
        if clf.num_classes != src.num_classes:
            notes.append(f"{base} skipped ({clf.num_classes} classes, source has {src.num_classes})")
            continue
        classifiers[name] = clf
    evals = [n for n in names if n in classifiers]
    batch = Batch(index=torch.arange(bs, device=device), ids=[f"img{i}" for i in range(bs)], images=x, labels=t, boxes=boxes, box_valid=valid)
    note = "; ".join(notes) or None
    for name in methods:
        ev = make_pipeline_evaluator(model, classifiers, evals, [name], cfg, dtype, cl, device)
        if (name, model) in ev.not_applicable:
            add("pipeline", name, model, dtype, bs, cl, comp, error=f"not applicable: {ev.not_applicable[(name, model)]}",
                eval_models=len(evals), inpaint=cfg.inpaint, notes=note)
            continue
        failures: list[str] = []

        def step():
            tables, counts = ev.evaluate_batch(batch)
            if counts.get("errors"):
                errs = [e for tbl in tables.values() if "error" in tbl.column_names for e in tbl.column("error").to_pylist() if e]
                failures.append(errs[0] if errs else f"{counts['errors']} errors")
            return tables

        timing, err = measure(step)
        if err is None and failures:
            timing, err = None, f"pipeline error: {failures[0]}"
        add("pipeline", name, model, dtype, bs, cl, comp, timing, err, eval_models=len(evals), inpaint=cfg.inpaint, notes=note)
