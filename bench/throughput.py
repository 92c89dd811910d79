"""Throughput: images/s and peak memory of saliency methods, a baseline, and the whole pipeline.

``run_throughput(ThroughputConfig(...), out_dir)`` measures, for every method x classifier x
batch size x dtype x channels_last x compiled combination:

* ``kind="method"``: one call ``method(classifier, images, targets, seeds)`` (maps in [0,1] at
  the image size, what the runner caches);
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
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import hashlib
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from salbench.device import device_name, resolve_device, resolve_dtype, synchronize
from salbench.errors import NotApplicable, UsageError, close_matches
from salbench.registry import is_pattern, split_list
from salbench.store import versions  # noqa: F401  (throughput.versions: the store's provenance)

THROUGHPUT_FILE = "throughput.parquet"
KINDS = ("method", "pipeline", "forward_backward_baseline", "peer")

THROUGHPUT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),  # method | pipeline | forward_backward_baseline | peer
        ("method", pa.string()),
        ("model", pa.string()),
        ("device", pa.string()),  # device name (GPU model, or CPU and thread count)
        ("device_type", pa.string()),  # cpu | cuda | mps
        ("dtype", pa.string()),  # autocast dtype (float32 = no autocast)
        ("batch_size", pa.int64()),
        ("image_size", pa.int64()),
        ("channels_last", pa.bool_()),
        ("compiled", pa.bool_()),
        ("eval_models", pa.int64()),  # pipeline: number of eval classifiers; else 0
        ("inpaint", pa.string()),  # pipeline: inpainting backend; else null
        ("images_per_s", pa.float64()),
        ("ms_per_batch", pa.float64()),  # median over the timed iterations
        ("ms_per_batch_min", pa.float64()),
        ("ms_per_batch_max", pa.float64()),
        ("peak_mem_mb", pa.float64()),
        ("mem_kind", pa.string()),  # cuda_max_allocated | cpu_peak_rss_delta | unavailable
        ("warmup", pa.int64()),
        ("iters", pa.int64()),
        ("notes", pa.string()),
        ("error", pa.string()),  # null when measured; else why not (not applicable, OOM, ...)
        ("versions", pa.string()),  # JSON object: salbench, torch, timm, ... versions
        ("timestamp", pa.string()),
    ]
)

#: Columns that identify one measured configuration (``compare`` joins on them).
CONFIG_KEY = ("kind", "method", "model", "device", "dtype", "batch_size", "image_size", "channels_last", "compiled", "eval_models", "inpaint")


# --------------------------------------------------------------------------- configuration
@dataclass
class ThroughputConfig:
    methods: list[str] = field(default_factory=lambda: ["*"])
    models: list[str] = field(default_factory=lambda: ["resnet18"])
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    channels_last: list[bool] = field(default_factory=lambda: [False])
    compiled: list[bool] = field(default_factory=lambda: [False])
    image_size: int = 224
    iters: int = 10
    warmup: int = 3
    device: str = "auto"
    pipeline_eval_models: int = 0
    baseline: bool = True
    pretrained: bool = False
    inpaint: str = "telea"
    binarize: str = "mean_area"
    box: str = "largest"
    seed: int = 0
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # as RunSpec.model_overrides
    threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None: leave as is

    def __post_init__(self) -> None:
        for key in ("methods", "models", "dtypes"):
            v = getattr(self, key)
            if isinstance(v, str):
                setattr(self, key, split_list(v))
        if not self.models:
            raise UsageError("no models given: expected e.g. --models resnet18,vit_tiny_patch16_224")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes {self.batch_sizes}: expected positive integers")
        if self.image_size < 8:
            raise UsageError(f"image size {self.image_size}: expected at least 8 pixels")
        if self.iters < 1 or self.warmup < 0:
            raise UsageError(f"iters={self.iters}, warmup={self.warmup}: expected iters >= 1 and warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads={self.threads}: expected a positive number")
        if self.pipeline_eval_models < 0:
            raise UsageError(f"pipeline eval models {self.pipeline_eval_models}: expected N >= 0")
        for d in self.dtypes:
            resolve_dtype(d)


def model_spec(name: str, pretrained: bool = False) -> str:
    """Classifier spec for the throughput command: plain timm names mean random init."""
    if pretrained or name.startswith(("random:", "zoo:")) or "@" in name:
        return name
    return f"random:{name}"


def expand_models(names: Iterable[str], pretrained: bool = False) -> list[str]:
    """Expand wildcards (timm ``list_models``) and check every timm name before measuring."""
    import timm

    out: list[str] = []
    for item in names:
        if item.startswith("zoo:") or "@" in item or (pretrained and not item.startswith("random:")):
            from salbench.classifiers import expand_model_specs

            hits = expand_model_specs([item])
        else:
            arch = item.split(":", 1)[1] if item.startswith("random:") else item
            if is_pattern(arch):
                hits = [f"random:{a}" for a in timm.list_models(arch)]
                if not hits:
                    raise UsageError(f"model pattern {item!r} matches nothing")
            else:
                base = arch.split(".")[0]
                if not timm.is_model(base):
                    raise UsageError(f"unknown timm model {base!r}{close_matches(base, timm.list_models())}")
                hits = [f"random:{arch}"]
        out.extend(h for h in hits if h not in out)
    return out


def select_methods(spec: Iterable[str] | str | None) -> list[str]:
    """Method names; the default ``*`` leaves out methods that need a trained checkpoint."""
    from salbench.methods import METHODS

    names = split_list(spec) or ["*"]
    chosen = METHODS.select(names)
    if names == ["*"]:
        chosen = [m for m in chosen if not METHODS.get(m).capabilities.needs_training]
    return chosen


def method_params(name: str, image_size: int) -> dict[str, Any]:
    """The parameters a run at this image size would use (``SaliencyMethod.defaults_for``)."""
    from salbench.methods import METHODS

    cls = METHODS.get(name)
    defaults_for = getattr(cls, "defaults_for", None)
    return dict(defaults_for((image_size, image_size))) if defaults_for else {}


# --------------------------------------------------------------------------- timing and memory
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """Peak memory of a code region; see the module docstring for what is recorded."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "unavailable"
        self._base_kb = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
            return
        if self.device.type != "cpu":
            return
        _malloc_trim()  # tensors are freed by refcount; return their pages before the baseline
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        except OSError:
            return
        rss = _proc_status_kb("VmRSS")
        if rss is not None:
            self._base_kb = rss
            self.kind = "cpu_peak_rss_delta"

    def stop(self) -> float:
        if self.kind == "cuda_max_allocated":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "cpu_peak_rss_delta":
            hwm = _proc_status_kb("VmHWM")
            return math.nan if hwm is None else max(0, hwm - self._base_kb) / 1024
        return math.nan


@dataclass
class Timing:
    times_ms: list[float]
    peak_mem_mb: float = math.nan
    mem_kind: str = "unavailable"

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    @property
    def max_ms(self) -> float:
        return float(max(self.times_ms))


def time_callable(fn: Callable[[], Any], device: torch.device, *, iters: int = 10, warmup: int = 3, memory: bool = True) -> Timing:
    """``warmup`` untimed calls, then ``iters`` timed ones, each between device synchronisations."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    probe = MemoryProbe(device)
    if memory:
        probe.start()
    times = []
    for _ in range(iters):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = probe.stop() if memory else math.nan
    return Timing(times, peak, probe.kind if memory else "unavailable")


def interleaved_times(fns: dict[str, Callable[[], Any]], device: torch.device, *, rounds: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Time several callables round-robin (order reversed every other round), ms per call.

    Back-to-back in one process, so slow phases of a shared machine hit every callable alike;
    compare them with the median of per-round ratios.
    """
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            t0 = time.perf_counter()
            fns[k]()
            synchronize(device)
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


def ratio_of_medians(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[i] / den[i]`` (paired, robust to machine-wide slow phases)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))


# --------------------------------------------------------------------------- inputs and workloads
def synthetic_inputs(batch_size: int, image_size: int, num_classes: int, device: torch.device, seed: int = 0):
    """Smooth random images in [0,1], random targets and one random GT box per image."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 3, 7, 7, generator=g)
    x = F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (0.85 * x + 0.15 * torch.rand(batch_size, 3, image_size, image_size, generator=g)).clamp(0, 1)
    targets = torch.randint(0, num_classes, (batch_size,), generator=g)
    wh = torch.randint(image_size // 4, image_size // 2 + 1, (batch_size, 2), generator=g).float()
    xy = (torch.rand(batch_size, 2, generator=g) * (image_size - wh)).floor()
    boxes = torch.cat([xy, xy + wh], dim=1)[:, None, :]
    valid = torch.ones(batch_size, 1, dtype=torch.bool)
    return x.to(device), targets.to(device), boxes.to(device), valid.to(device)


def forward_backward_baseline(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One forward pass and one backward pass of the target scores to the pixel input."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        scores = classifier(x).gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(scores, x)
    return grad


def compile_classifier(classifier) -> None:
    """``torch.compile`` the timm model's ``forward_features`` and ``forward_head`` in place.

    Every salbench path goes through those two (``forward`` is rebound to call them), so both
    plain classification and ``forward_with_features`` use the compiled code.
    """
    model = classifier.model
    ff = torch.compile(model.forward_features)
    fh = torch.compile(model.forward_head)
    model.forward_features = ff
    model.forward_head = fh
    model.forward = lambda x: fh(ff(x))


def load_for_throughput(spec: str, device: torch.device, dtype: str, channels_last: bool, compiled: bool, seed: int = 0,
                        overrides: dict[str, dict[str, Any]] | None = None):
    from salbench.classifiers import ModelOptions, load_classifier

    torch.manual_seed(seed)  # random-init weights identical across configurations
    overrides = overrides or {}
    bare = spec.removeprefix("random:")
    mine = overrides.get(spec, overrides.get(bare))  # "resnet18" in a config means "random:resnet18" here
    options = ModelOptions(device=device, amp_dtype=resolve_dtype(dtype), channels_last=channels_last, overrides={spec: dict(mine)} if mine else {})
    clf = load_classifier(spec, options)
    if compiled:
        compile_classifier(clf)
    return clf


class _ShapeOnlyDataset:
    """What ``Evaluator`` needs of a dataset when batches are made up: a spec and a class count."""

    def __init__(self, num_classes: int, image_size: int):
        self.num_classes = num_classes
        self.image_size = (image_size, image_size)
        self.spec = f"throughput:noise?size={image_size}"


def make_pipeline_evaluator(source: str, classifiers: dict[str, Any], eval_names: list[str], methods: list[str], cfg: ThroughputConfig, dtype: str, channels_last: bool, device: torch.device):
    """A ``runner.Evaluator`` over already-loaded classifiers: ``classifiers`` maps every name in
    ``[source] + eval_names`` (aliases like ``resnet18#2`` allowed) to a Classifier."""
    from salbench.config import RunSpec
    from salbench.runner import Evaluator, ResolvedRun

    params = {m: method_params(m, cfg.image_size) for m in methods}
    extra = {"map_cache": None} if "map_cache" in RunSpec.__dataclass_fields__ else {}  # always compute the maps
    spec = RunSpec(
        dataset="throughput", methods=list(methods), models=[source], eval_models=list(eval_names),
        binarize=cfg.binarize, box=cfg.box, inpaint=cfg.inpaint, dtype=dtype, channels_last=channels_last,
        device=str(device), seed=cfg.seed, method_params=params, **extra,
    )
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    dataset = _ShapeOnlyDataset(classifiers[source].num_classes, cfg.image_size)
    configs = {m: {"name": m, "params": params[m]} for m in methods}
    # models/eval_models empty while constructing: Evaluator loads nothing, we hand it ours
    resolved = ResolvedRun(spec, list(methods), [], [], configs, dataset, digest)  # type: ignore[arg-type]
    ev = Evaluator(resolved, device, progress=False)
    ev.classifiers = {name: classifiers[name] for name in dict.fromkeys([source, *eval_names])}
    resolved.models = [source]
    resolved.eval_models = list(eval_names)
    ev.not_applicable = {}
    for name, method in ev.methods.items():
        try:
            method.check(ev.classifiers[source])
        except NotApplicable as exc:
            ev.not_applicable[(name, source)] = str(exc)
    return ev


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


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
        from salbench.metrics.binarize import BINARIZERS
        from salbench.metrics.boxes import BOX_RULES
        from salbench.metrics.inpainting import INPAINTERS

        INPAINTERS.get(cfg.inpaint)
        BINARIZERS.get(cfg.binarize)
        BOX_RULES.get(cfg.box)
    from salbench.methods import create_method

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
            return None, _one_line(exc)

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
                            add("method", "*", model, dtype, bs, cl, comp, error=f"cannot load: {_one_line(exc)}")
                        continue
                    for bs in cfg.batch_sizes:
                        x, t, boxes, valid = synthetic_inputs(bs, cfg.image_size, clf.num_classes, device, cfg.seed)
                        seeds = torch.arange(bs, device=device)
                        if cfg.baseline:
                            timing, err = measure(lambda: forward_backward_baseline(clf, x, t))
                            add("forward_backward_baseline", "-", model, dtype, bs, cl, comp, timing, err)
                        for name in methods:
                            params = method_params(name, cfg.image_size)
                            note = ("params: " + ", ".join(f"{k}={v}" for k, v in params.items())) if params else None
                            try:
                                method = create_method(name, **params)
                                method.check(clf)
                            except NotApplicable as exc:
                                add("method", name, model, dtype, bs, cl, comp, error=f"not applicable: {exc}", notes=note)
                                continue
                            except Exception as exc:
                                add("method", name, model, dtype, bs, cl, comp, error=_one_line(exc), notes=note)
                                continue
                            timing, err = measure(lambda: method(clf, x, t, seeds))
                            add("method", name, model, dtype, bs, cl, comp, timing, err, notes=note)
                        if cfg.pipeline_eval_models > 0:
                            _measure_pipeline(cfg, model, models, get, methods, dtype, cl, comp, bs, x, t, boxes, valid, device, add, measure)
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


def _measure_pipeline(cfg, model, models, get, methods, dtype, cl, comp, bs, x, t, boxes, valid, device, add, measure) -> None:
    from salbench.datasets.base import Batch

    src = get(model)
    names = pipeline_eval_names(model, models, cfg.pipeline_eval_models)
    classifiers: dict[str, Any] = {model: src}
    notes = []
    for name in names:
        base = name.split("#")[0]
        try:
            clf = get(base)
        except Exception as exc:
            notes.append(f"{base}: {_one_line(exc)}")
            continue
        if clf.num_classes != src.num_classes:
            notes.append(f"{base} skipped ({clf.num_classes} classes, source has {src.num_classes})")
            continue
        classifiers[name] = clf
    evals = [n for n in names if n in classifiers]
    ev = make_pipeline_evaluator(model, classifiers, evals, methods, cfg, dtype, cl, device)
    batch = Batch(index=torch.arange(bs, device=device), ids=[f"img{i}" for i in range(bs)], images=x, labels=t, boxes=boxes, box_valid=valid)
    all_methods = dict(ev.methods)
    note = "; ".join(notes) or None
    for name in methods:
        if (name, model) in ev.not_applicable:
            add("pipeline", name, model, dtype, bs, cl, comp, error=f"not applicable: {ev.not_applicable[(name, model)]}",
                eval_models=len(evals), inpaint=cfg.inpaint, notes=note)
            continue
        ev.methods = {name: all_methods[name]}
        failures: list[str] = []

        def step():
            tables, counts = ev.evaluate_batch(batch)
            if counts.get("errors"):
                errs = [e for tbl in tables.values() for e in tbl.column("error").to_pylist() if e]
                failures.append(errs[0] if errs else f"{counts['errors']} errors")
            return tables

        timing, err = measure(step)
        if err is None and failures:
            timing, err = None, f"pipeline error: {failures[0]}"
        add("pipeline", name, model, dtype, bs, cl, comp, timing, err, eval_models=len(evals), inpaint=cfg.inpaint, notes=note)
    ev.methods = all_methods


# --------------------------------------------------------------------------- the table on disk
def write_throughput(out_dir: str | Path, table: pa.Table) -> Path:
    """Write ``out_dir/throughput.parquet`` atomically, merging with an existing file: rows of
    this table replace earlier rows of the same configuration (``CONFIG_KEY``), others stay."""
    from salbench.results import atomic_write_table

    path = Path(out_dir) / THROUGHPUT_FILE
    table = table.cast(THROUGHPUT_SCHEMA)
    if path.exists():
        old = read_throughput(path.parent)
        new_keys = {tuple(r[k] for k in CONFIG_KEY) for r in table.select(list(CONFIG_KEY)).to_pylist()}
        keep = [i for i, r in enumerate(old.select(list(CONFIG_KEY)).to_pylist()) if tuple(r[k] for k in CONFIG_KEY) not in new_keys]
        table = pa.concat_tables([old.take(pa.array(keep, type=pa.int64())), table])
    atomic_write_table(path, table)
    return path


def read_throughput(run_dir: str | Path) -> pa.Table:
    """``throughput.parquet`` of a directory as an Arrow table with ``THROUGHPUT_SCHEMA``
    (columns missing from older files are filled with nulls)."""
    path = Path(run_dir) / THROUGHPUT_FILE
    t = pq.read_table(path)
    cols = []
    for f in THROUGHPUT_SCHEMA:
        cols.append(t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=THROUGHPUT_SCHEMA)


def format_table(table: pa.Table) -> str:
    """A plain-text summary, one line per row."""
    lines = [f"{'kind':<25} {'method':<16} {'model':<28} {'bs':>4} {'dtype':<8} {'cl':<2} {'cmp':<3} {'img/s':>9} {'ms/batch':>9} {'peak MB':>8}"]
    for r in table.to_pylist():
        kind = r["kind"] + (f"[{r['eval_models']} eval]" if r["kind"] == "pipeline" else "")
        head = f"{kind:<25} {r['method']:<16} {r['model']:<28} {r['batch_size']:>4} {r['dtype']:<8} {'y' if r['channels_last'] else 'n':<2} {'y' if r['compiled'] else 'n':<3}"
        if r["error"]:
            lines.append(f"{head} {'-':>9} {'-':>9} {'-':>8}  {r['error'][:80]}")
        else:
            lines.append(f"{head} {r['images_per_s']:>9.1f} {r['ms_per_batch']:>9.1f} {r['peak_mem_mb']:>8.1f}" + (f"  {r['notes']}" if r["notes"] else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- peers
PEER_PACKAGES = {"gradient": ("captum", "captum"), "gradcam": ("pytorch_grad_cam", "grad-cam")}


def peers_available() -> dict[str, bool]:
    import importlib.util

    return {m: importlib.util.find_spec(mod) is not None for m, (mod, _dist) in PEER_PACKAGES.items()}


@dataclass
class PeerResult:
    method: str  # salbench method name
    peer: str  # the peer implementation
    model: str
    batch_size: int
    image_size: int
    device: str
    ours_ms: float  # median ms per batch
    peer_ms: float
    ours_min_ms: float
    peer_min_ms: float
    speedup: float  # median over rounds of peer_ms / ours_ms: > 1 means salbench is faster
    max_abs_diff: float
    tolerance: float
    rounds: int
    notes: str = ""
    device_type: str = "cpu"

    @property
    def agree(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        return (f"{self.method:<9} vs {self.peer:<26} {self.model} bs={self.batch_size} {self.image_size}px: salbench {self.ours_ms:8.1f} ms "
                f"({self.batch_size / self.ours_ms * 1e3:6.1f} img/s), peer {self.peer_ms:8.1f} ms ({self.batch_size / self.peer_ms * 1e3:6.1f} img/s), "
                f"speed-up x{self.speedup:.2f} (min-time x{self.peer_min_ms / self.ours_min_ms:.2f}), "
                f"max |diff| {self.max_abs_diff:.1e} ({'agree' if self.agree else 'DISAGREE'})")


class PixelModel(nn.Module):
    """A peer's view of a salbench classifier: a deep copy of the timm model (weights trainable,
    as users load them) behind the same pixel-space normalisation."""

    def __init__(self, classifier):
        super().__init__()
        self.model = copy.deepcopy(classifier.model)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self._normalize = classifier.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._normalize(x))


def feature_module(model: nn.Module, classifier) -> nn.Module:
    """The module of ``model`` whose output is the classifier's CAM feature map (NCHW CNNs)."""
    spec = classifier.features_spec()
    if spec.kind != "nchw":
        raise NotApplicable(f"{classifier.name}: peer Grad-CAM comparison needs a CNN with an NCHW feature map (got {spec.kind})")
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
        raise NotApplicable(f"{classifier.name}: no module outputs the forward_features tensor")
    return model.get_submodule(min(hits, key=lambda n: n.count(".")))  # outermost (e.g. layer4)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - a.min(axis=(1, 2), keepdims=True)
    return a / (1e-7 + a.max(axis=(1, 2), keepdims=True))


def peer_comparison(model: str = "resnet18", batch_size: int = 32, image_size: int = 224, device: str | torch.device = "auto", *,
                    methods: Iterable[str] = ("gradcam", "gradient"), rounds: int = 5, warmup: int = 1, seed: int = 0,
                    tolerance: float = 1e-4, classifier=None) -> list[PeerResult]:
    """salbench vs captum ``Saliency`` (gradient) and pytorch-grad-cam ``GradCAM`` (gradcam).

    Same classifier weights, batch, device; float32. Targets are the predicted classes (the
    peers' default). Timings interleave the two implementations round by round.

    Agreement: gradient -- captum's ``|dS/dx|`` with salbench's channel max and max
    normalisation (the definition of the map) against salbench's map. Grad-CAM -- at the
    feature-map resolution, ReLU(sum_k mean(dS/dA_k) A_k) min-max normalised per image from
    both implementations' activations and gradients, and at the image resolution, salbench's
    feature-resolution map put through pytorch-grad-cam's own post-processing
    (``scale_cam_image``: min-max, ``cv2.resize``) against its output. The larger difference
    is reported.
    """
    from salbench.methods import create_method

    dev = resolve_device(device)
    spec = model_spec(model)
    clf = classifier if classifier is not None else load_for_throughput(spec, dev, "float32", False, False, seed)
    x, _, _, _ = synthetic_inputs(batch_size, image_size, clf.num_classes, dev, seed)
    with torch.no_grad():
        t = clf(x).argmax(1)
    avail = peers_available()
    results = []
    for name in methods:
        if name not in PEER_PACKAGES:
            raise UsageError(f"no peer implementation for {name!r}; peers exist for {', '.join(PEER_PACKAGES)}")
        if not avail[name]:
            mod, dist = PEER_PACKAGES[name]
            raise UsageError(f"peer comparison for {name} needs {dist!r}: pip install {dist}")
        method = create_method(name)
        method.check(clf)
        ours = lambda: method(clf, x, t)  # noqa: E731
        xp = x.detach().clone()
        notes = ""
        if name == "gradient":
            from captum.attr import Saliency

            from salbench.methods.base import normalize_maps

            sal = Saliency(clf)

            def peer():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return normalize_maps(sal.attribute(xp, target=t, abs=True).amax(1), "max")

            diff = float((ours() - peer()).abs().max())
            peer_name = "captum.attr.Saliency"
            notes = "captum timed with the same channel max + max normalisation"
        else:
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.image import scale_cam_image
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            from salbench.methods.cam import gradcam_maps

            pm = PixelModel(clf).to(dev)
            cam = GradCAM(model=pm, target_layers=[feature_module(pm.model, clf)])
            targets = [ClassifierOutputTarget(int(c)) for c in t.tolist()]

            def peer():
                return cam(input_tensor=xp, targets=targets)

            peer_out = peer()
            acts = cam.activations_and_grads.activations[0].float()
            grads = cam.activations_and_grads.gradients[0].float()
            peer_raw = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1).clamp_min(0).numpy()
            with torch.enable_grad():
                ours_raw = gradcam_maps(clf, x, t).detach().clamp_min(0).float().cpu().numpy()
            d_feat = float(np.abs(_minmax(ours_raw) - _minmax(peer_raw)).max())
            ours_full = scale_cam_image(np.maximum(scale_cam_image(ours_raw, (x.shape[-1], x.shape[-2])), 0))
            d_full = float(np.abs(ours_full - peer_out).max())
            diff = max(d_feat, d_full)
            peer_name = "pytorch_grad_cam.GradCAM"
            notes = f"feature-res diff {d_feat:.1e}, image-res diff {d_full:.1e}; target layer {type(cam.target_layers[0]).__name__}"
        times = interleaved_times({"ours": ours, "peer": peer}, dev, rounds=rounds, warmup=warmup)
        results.append(PeerResult(
            method=name, peer=peer_name, model=clf.name, batch_size=batch_size, image_size=image_size, device=device_name(dev),
            ours_ms=statistics.median(times["ours"]), peer_ms=statistics.median(times["peer"]),
            ours_min_ms=min(times["ours"]), peer_min_ms=min(times["peer"]),
            speedup=ratio_of_medians(times["peer"], times["ours"]), max_abs_diff=diff, tolerance=tolerance, rounds=rounds, notes=notes,
            device_type=dev.type,
        ))
        if name == "gradcam":
            cam.activations_and_grads.release()
    return results


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
                notes=f"speed-up x{r.speedup:.2f} vs {r.peer}; max |diff| {r.max_abs_diff:.1e}; {r.notes}", error=None,
                versions=vers, timestamp=now,
            ))
    return pa.Table.from_pylist(rows, schema=THROUGHPUT_SCHEMA)


# --------------------------------------------------------------------------- inpainting
@dataclass
class InpaintComparison:
    backend: str
    reference: str
    batch_size: int
    image_size: int
    removed_fraction: float
    backend_ms: float
    reference_ms: float
    speedup: float  # median over rounds of reference_ms / backend_ms
    mean_abs_diff: float  # on removed pixels, [0,1] scale
    top1_agreement: dict[str, float]  # eval classifier -> fraction of images with the same top-1
    masked_out_agreement: dict[str, float]  # same, reference vs no inpainting at all (a floor)

    def line(self) -> str:
        agree = ", ".join(f"{k}: {100 * v:.0f}% (masked-out {100 * self.masked_out_agreement[k]:.0f}%)" for k, v in self.top1_agreement.items())
        return (f"{self.backend} vs {self.reference}, {self.batch_size}x{self.image_size}px, {100 * self.removed_fraction:.0f}% removed: "
                f"{self.backend_ms:.1f} ms vs {self.reference_ms:.1f} ms (x{self.speedup:.2f}); mean |diff| on removed pixels "
                f"{self.mean_abs_diff:.3f}; top-1 agreement {agree}")


def half_masks(batch_size: int, image_size: int, seed: int = 0, device: torch.device | str = "cpu", fraction: float = 0.5) -> torch.Tensor:
    """Smooth random blob masks removing ``fraction`` of each image's pixels (B x H x W bool)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 1, 6, 6, generator=g)
    m = F.interpolate(low, size=(image_size, image_size), mode="bicubic", align_corners=False)[:, 0]
    m = m + 1e-6 * torch.rand(m.shape, generator=g)  # break ties
    k = int(round(fraction * image_size * image_size))
    thr = m.flatten(1).kthvalue(image_size * image_size - k, dim=1).values
    return (m > thr[:, None, None]).to(device)


def inpainting_comparison(images: torch.Tensor, remove: torch.Tensor, classifiers: dict[str, Any], backend: str = "pushpull",
                          reference: str = "telea", rounds: int = 5) -> InpaintComparison:
    """Speed and agreement of two inpainting backends on masked-out images."""
    from salbench.metrics.inpainting import inpaint

    dev = images.device
    masked = images * (~remove)[:, None].to(images.dtype)
    times = interleaved_times({"b": lambda: inpaint(masked, remove, backend), "r": lambda: inpaint(masked, remove, reference)}, dev, rounds=rounds, warmup=1)
    a = inpaint(masked, remove, backend)
    r = inpaint(masked, remove, reference)
    diff = float((a - r).abs().mean(1)[remove].mean()) if bool(remove.any()) else 0.0
    agree, floor = {}, {}
    with torch.no_grad():
        for name, clf in classifiers.items():
            pa_, pr, pm = clf(a).argmax(1), clf(r).argmax(1), clf(masked).argmax(1)
            agree[name] = float((pa_ == pr).float().mean())
            floor[name] = float((pm == pr).float().mean())
    return InpaintComparison(
        backend=backend, reference=reference, batch_size=images.shape[0], image_size=images.shape[-1],
        removed_fraction=float(remove.float().mean()), backend_ms=statistics.median(times["b"]), reference_ms=statistics.median(times["r"]),
        speedup=ratio_of_medians(times["r"], times["b"]), mean_abs_diff=diff, top1_agreement=agree, masked_out_agreement=floor,
    )
