"""Throughput: images/s and peak memory of saliency methods, a baseline, and the whole pipeline.

``run_throughput(ThroughputConfig(...), out_dir)`` measures, for every method x classifier x
batch size x dtype x channels_last x compiled combination:

* ``kind="method"``: one call ``method(classifier, images, targets, seeds)`` (maps in [0,1] at
  the image size, what the runner caches);
* ``kind="forward"``: a plain no-grad forward pass (what ``salbench plan`` prices passes with);
* ``kind="forward_backward_baseline"``: a plain forward pass and a backward pass to the input
  (the cost floor of a gradient method), so a method's overhead can be read off;
* ``kind="pipeline"`` (with ``pipeline_eval_models=N > 0``): ``runner.Evaluator.evaluate_batch``
  on one batch -- maps, binarisation, boxes, LE/OM/F1, mask statistics, the masked-in /
  masked-out / inpainted images, N eval classifiers on all four variants, and the Arrow rows --
  i.e. everything a run does per batch except reading images and writing Parquet.

Each configuration runs ``warmup`` untimed calls, then ``iters`` timed calls, each bracketed by
a device synchronisation; ``ms_per_batch`` is the median, ``images_per_s = batch / median``.

Peak memory (``peak_mem_mb`` with ``mem_kind`` saying what it is):

* CUDA, ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` over the timed calls
  (reset after warm-up), i.e. everything the caching allocator handed out, weights included;
* CPU on Linux, ``cpu_peak_rss_delta``: the process's peak resident set size during the timed
  calls minus its resident size just before them (the peak is reset through
  ``/proc/self/clear_refs``, freed heap is returned with ``malloc_trim`` first). It is the extra
  host memory one batch needs -- approximate, since the C allocator may keep pages;
* elsewhere ``unavailable`` and NaN.

Images are smooth random images at ``image_size`` (cost does not depend on content); each
classifier resizes them to its own input size as in a run. Plain timm names mean randomly
initialised weights (``random:<name>``): cost does not depend on the weights.

``peer_comparison`` times salbench against captum's ``Saliency`` and pytorch-grad-cam's
``GradCAM`` on the same model, batch and device, with the maps checked for agreement, and
``inpainting_comparison`` the on-device ``pushpull`` fill against OpenCV Telea.

This module runs the measurement; its parts live beside it and are re-exported here:
``timing`` (timed calls, memory probes), ``throughput_setup`` (configuration, classifiers,
inputs), ``pipeline_timing`` (the whole per-batch evaluation), ``throughput_table`` (the table
on disk), ``peers`` and ``inpainting_comparison``.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from salbench.device import device_name, resolve_device
from salbench.errors import NotApplicable, UsageError, one_line
from salbench.metrics.binarize import BINARIZERS
from salbench.metrics.boxes import BOX_RULES
from salbench.metrics.inpainting import INPAINTERS
from salbench.methods import create_method
from salbench.store import versions  # noqa: F401  (throughput.versions: the store's provenance)

# The measurement's parts, re-exported: ``salbench.throughput`` is the one import for users.
from salbench.inpainting_comparison import InpaintComparison, half_masks, inpainting_comparison
from salbench.peers import PEER_PACKAGES, PeerResult, PixelModel, feature_module, peer_comparison, peers_available
from salbench.pipeline_timing import make_pipeline_evaluator, measure_pipeline, pipeline_eval_names
from salbench.throughput_setup import (
    ThroughputConfig,
    compile_classifier,
    expand_models,
    forward_backward_baseline,
    forward_only,
    load_for_throughput,
    method_params,
    model_spec,
    select_methods,
    synthetic_inputs,
)
from salbench.throughput_table import CONFIG_KEY, KINDS, THROUGHPUT_FILE, THROUGHPUT_SCHEMA, format_table, read_throughput, write_throughput
from salbench.timing import MemoryProbe, Timing, interleaved_times, ratio_of_medians, time_callable




def _free(device: torch.device, collect: bool = False) -> None:
    if collect:  # a full collection costs ~0.5 s once torch._dynamo is imported: only between models
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# --------------------------------------------------------------------------- the measurement
def run_throughput(cfg: ThroughputConfig, out_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> pa.Table:
    """Measure every configuration of ``cfg``; write ``out_dir/throughput.parquet`` when given.

    Returns the table of this call's rows (also written after every model, so an interrupted
    run keeps what it measured). Configurations that cannot run (method not applicable, out of
    memory, compile failure) become rows with ``error`` set and NaN numbers.
    """
    log = log or (lambda _s: None)
    device = resolve_device(cfg.device)
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_throughput(cfg, device, out_dir, log)
    finally:
        torch.set_num_threads(threads_before)


def _run_throughput(cfg: ThroughputConfig, device: torch.device, out_dir, log) -> pa.Table:
    methods = select_methods(cfg.methods)
    models = expand_models(cfg.models, cfg.pretrained)
    if cfg.inpaint:
        INPAINTERS.get(cfg.inpaint)
        BINARIZERS.get(cfg.binarize)
        BOX_RULES.get(cfg.box)

    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    run_id = hashlib.sha256(json.dumps([asdict(cfg), started], default=str).encode()).hexdigest()[:12]
    vers = json.dumps(versions(), sort_keys=True)
    dev_name = device_name(device)
    rows: list[dict[str, Any]] = []

    def add(kind: str, method: str, model: str, dtype: str, bs: int, cl: bool, comp: bool, timing: Timing | None = None,
            error: str | None = None, eval_models: int = 0, inpaint: str | None = None, notes: str | None = None) -> None:
        row = dict(
            run_id=run_id, kind=kind, method=method, model=model, device=dev_name, device_type=device.type, dtype=dtype,
            batch_size=bs, image_size=cfg.image_size, channels_last=cl, compiled=comp, eval_models=eval_models, inpaint=inpaint,
            images_per_s=math.nan, ms_per_batch=math.nan, ms_per_batch_min=math.nan, ms_per_batch_max=math.nan,
            peak_mem_mb=math.nan, mem_kind="unavailable", warmup=cfg.warmup, iters=cfg.iters, notes=notes, error=error,
            versions=vers, timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        if timing is not None:
            row.update(images_per_s=bs / (timing.median_ms / 1e3), ms_per_batch=timing.median_ms, ms_per_batch_min=timing.min_ms,
                       ms_per_batch_max=timing.max_ms, peak_mem_mb=timing.peak_mem_mb, mem_kind=timing.mem_kind)
        rows.append(row)
        tag = f"{kind:<25} {method:<16} {model:<28} bs={bs:<4} {dtype:<8} cl={'y' if cl else 'n'} compiled={'y' if comp else 'n'}"
        if eval_models:
            tag += f" eval={eval_models} inpaint={inpaint}"
        if timing is not None:
            log(f"{tag}  {row['images_per_s']:9.1f} img/s  {row['ms_per_batch']:9.1f} ms/batch  peak {row['peak_mem_mb']:8.1f} MB")
        else:
            log(f"{tag}  -- {error}")

    def measure(fn: Callable[[], Any]) -> tuple[Timing | None, str | None]:
        try:
            return time_callable(fn, device, iters=cfg.iters, warmup=cfg.warmup), None
        except NotApplicable as exc:
            return None, f"not applicable: {exc}"
        except Exception as exc:  # OOM, unsupported dtype, compile failure: a row, not a crash
            if _is_oom(exc):
                _free(device)
            return None, one_line(exc)

    for dtype in cfg.dtypes:
        for cl in cfg.channels_last:
            for comp in cfg.compiled:
                loaded: dict[str, Any] = {}

                def get(spec: str):
                    if spec not in loaded:
                        loaded[spec] = load_for_throughput(spec, device, dtype, cl, comp, cfg.seed, cfg.model_overrides)
                    return loaded[spec]

                for model in models:
                    try:
                        clf = get(model)
                    except UsageError:
                        raise
                    except Exception as exc:
                        for bs in cfg.batch_sizes:
                            add("method", "*", model, dtype, bs, cl, comp, error=f"cannot load: {one_line(exc)}")
                        continue
                    for bs in cfg.batch_sizes:
                        x, t, boxes, valid = synthetic_inputs(bs, cfg.image_size, clf.num_classes, device, cfg.seed)
                        seeds = torch.arange(bs, device=device)
                        if cfg.baseline:  # the bare passes: what `salbench plan` prices a run's passes with
                            timing, err = measure(lambda: forward_only(clf, x))
                            add("forward", "-", model, dtype, bs, cl, comp, timing, err)
                            timing, err = measure(lambda: forward_backward_baseline(clf, x, t))
                            add("forward_backward_baseline", "-", model, dtype, bs, cl, comp, timing, err)
                        for name in methods:
                            params = method_params(name, cfg.image_size)
                            note = ("params: " + ", ".join(f"{k}={v}" for k, v in params.items())) if params else None
                            try:
                                method = create_method(name, **params)
                                if method.capabilities.needs_training:  # train or load before anything is timed
                                    method.prepare(device, progress=False)
                                method.check(clf)
                            except NotApplicable as exc:
                                add("method", name, model, dtype, bs, cl, comp, error=f"not applicable: {exc}", notes=note)
                                continue
                            except Exception as exc:
                                add("method", name, model, dtype, bs, cl, comp, error=one_line(exc), notes=note)
                                continue
                            timing, err = measure(lambda: method(clf, x, t, seeds))
                            add("method", name, model, dtype, bs, cl, comp, timing, err, notes=note)
                        if cfg.pipeline_eval_models > 0:
                            measure_pipeline(cfg, model, models, get, methods, dtype, cl, comp, bs, x, t, boxes, valid, device, add, measure)
                        del x, t, boxes, valid
                        _free(device)
                    if out_dir is not None:  # after every model: an interrupted run keeps what it measured
                        write_throughput(out_dir, pa.Table.from_pylist(rows, schema=THROUGHPUT_SCHEMA))
                loaded.clear()
                _free(device, collect=True)

    table = pa.Table.from_pylist(rows, schema=THROUGHPUT_SCHEMA)
    if out_dir is not None:
        write_throughput(out_dir, table)
    return table


def peer_rows(results: list[PeerResult], run_id: str = "peers") -> pa.Table:
    """Peer results as ``kind="peer"`` throughput rows (salbench and peer side by side)."""
    vers = json.dumps(versions(), sort_keys=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for r in results:
        for who, ms, mn in (("salbench:" + r.method, r.ours_ms, r.ours_min_ms), (r.peer, r.peer_ms, r.peer_min_ms)):
            rows.append(dict(
                run_id=run_id, kind="peer", method=who, model=r.model, device=r.device, device_type=r.device_type, dtype="float32",
                batch_size=r.batch_size, image_size=r.image_size, channels_last=False, compiled=False, eval_models=0, inpaint=None,
                images_per_s=r.batch_size / (ms / 1e3), ms_per_batch=ms, ms_per_batch_min=mn, ms_per_batch_max=math.nan,
                peak_mem_mb=math.nan, mem_kind="unavailable", warmup=1, iters=r.rounds,
                notes=f"speed-up x{r.speedup:.2f} vs {r.peer}; max |diff| {'n/a' if math.isnan(r.max_abs_diff) else format(r.max_abs_diff, '.1e')}; {r.notes}", error=None,
                versions=vers, timestamp=now,
            ))
    return pa.Table.from_pylist(rows, schema=THROUGHPUT_SCHEMA)


__all__ = [
    # measurement
    "run_throughput", "versions", "peer_rows",
    # timing
    "MemoryProbe", "Timing", "interleaved_times", "ratio_of_medians", "time_callable",
    # setup
    "ThroughputConfig", "compile_classifier", "expand_models", "forward_backward_baseline", "load_for_throughput",
    "method_params", "model_spec", "select_methods", "synthetic_inputs",
    # pipeline
    "make_pipeline_evaluator", "measure_pipeline", "pipeline_eval_names",
    # table
    "CONFIG_KEY", "KINDS", "THROUGHPUT_FILE", "THROUGHPUT_SCHEMA", "format_table", "read_throughput", "write_throughput",
    # comparisons
    "PEER_PACKAGES", "PeerResult", "PixelModel", "feature_module", "peer_comparison", "peers_available",
    "InpaintComparison", "half_masks", "inpainting_comparison",
]
