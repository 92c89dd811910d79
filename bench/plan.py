"""The cost plan of a run, before any work: classifier passes per stage and the expected wall time.

``salbench plan`` (and the run's progress bar) count, per (method, source classifier), the forward
and backward passes per image that the maps take (``SaliencyMethod.cost``), the eval classifiers'
forwards on the masked-in / masked-out / inpainted images, the passes metrics make
(``Metric.cost``), and the clean forwards; and price them with per-image seconds of each
classifier's forward and backward pass from a throughput table (``salbench throughput`` rows of
kind ``forward`` and ``forward_backward_baseline``, or a quick calibration on this machine that
``plan --calibrate`` measures and saves). The per-image cost of composing the masked images
(inpainting included) and of the localisation stage is calibrated the same way. Wall time is
the sum: a run spends it in these stages (see docs/performance.md for the measured split).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from salbench.errors import NotApplicable
from salbench.methods import SaliencyMethod
from salbench.metrics import metrics_for


@dataclass
class Speeds:
    """Per-image seconds: each classifier's forward and backward pass, composing the three masked
    variants, and the localisation stage (binarise, box, map metrics) of one (method, source) map."""

    forward: dict[str, float] = field(default_factory=dict)
    backward: dict[str, float] = field(default_factory=dict)
    compose: float | None = None
    localize: float | None = None
    metric: dict[str, float] = field(default_factory=dict)  # measured seconds per image of metrics that call classifiers
    source: str = "none"  # where the numbers come from (table path, "calibrated on <device>")

    def known(self, clf: str) -> bool:
        return clf in self.forward and clf in self.backward


@dataclass
class PlanRow:
    stage: str  # clean | maps | compose | eval | localize | metric | sanity
    method: str  # "-" for clean
    source: str  # the source classifier ("-" for clean; "*" for a classifier-independent method)
    classifier: str  # which classifier runs the passes ("-" when none)
    forwards: float  # per image
    backwards: float  # per image
    images: int
    seconds: float | None  # None when the speed of a classifier is unknown

    @property
    def total_forwards(self) -> float:
        return self.forwards * self.images

    @property
    def total_backwards(self) -> float:
        return self.backwards * self.images


@dataclass
class Plan:
    rows: list[PlanRow]
    images: int
    speeds: Speeds
    not_applicable: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float | None:
        secs = [r.seconds for r in self.rows]
        return None if any(s is None for s in secs) else float(sum(secs))  # type: ignore[arg-type]

    def pair_seconds(self) -> dict[tuple[str, str], float]:
        """Estimated seconds of each (method, source) pair over the whole run (unknown speeds: 0)."""
        out: dict[tuple[str, str], float] = {}
        for r in self.rows:
            if r.method != "-":
                out[(r.method, r.source)] = out.get((r.method, r.source), 0.0) + (r.seconds or 0.0)
        return out

    def pair_work(self) -> dict[tuple[str, str], float]:
        """Relative work of each pair in forward-equivalents (a backward counts two): the progress
        weights when speeds are unknown."""
        out: dict[tuple[str, str], float] = {}
        for r in self.rows:
            if r.method != "-":
                out[(r.method, r.source)] = out.get((r.method, r.source), 0.0) + r.total_forwards + 2 * r.total_backwards + 0.1 * r.images
        return out

    def table(self) -> pa.Table:
        return pa.Table.from_pylist([dict(stage=r.stage, method=r.method, source=r.source, classifier=r.classifier, forwards_per_image=r.forwards,
                                          backwards_per_image=r.backwards, images=r.images, forwards=r.total_forwards,
                                          backwards=r.total_backwards, seconds=r.seconds) for r in self.rows])


def method_cost(method: SaliencyMethod, image_size: tuple[int, int]) -> tuple[float, float]:
    """(forwards, backwards) per image; methods whose cost depends on the image size take it."""
    if "image_size" in inspect.signature(method.cost).parameters:
        return method.cost(image_size=tuple(image_size))
    return method.cost()


def metric_cost(metric: Any, n_eval_other: int) -> tuple[float, float, float]:
    """(source forwards, source backwards, forwards per eval classifier) per image and map; 0 for
    metrics that only read maps (``Metric.cost`` declares the others)."""
    cost = metric.cost()
    if cost is None:
        return (0.0, 0.0, 0.0)
    return tuple(float(v) for v in cost)  # type: ignore[return-value]


def build_plan(resolved, methods: dict[str, SaliencyMethod], speeds: Speeds, not_applicable: dict[tuple[str, str], str] | None = None) -> Plan:
    """The plan of ``resolved`` (a ``runner.ResolvedRun``) with its created ``methods``."""
    n = int(resolved.config["num_images"])
    size = tuple(resolved.dataset.image_size)
    na = dict(not_applicable or {})
    rows: list[PlanRow] = []

    def secs(clf: str, fwd: float, bwd: float, extra: float = 0.0) -> float | None:
        if fwd == 0 and bwd == 0:
            return extra * n
        if not speeds.known(clf):
            return None
        return n * (fwd * speeds.forward[clf] + bwd * speeds.backward[clf] + extra)

    for clf in dict.fromkeys(resolved.models + resolved.eval_models):
        rows.append(PlanRow("clean", "-", "-", clf, 1.0, 0.0, n, secs(clf, 1.0, 0.0)))
    metrics = metrics_for("localization", resolved.metrics) + metrics_for("agnosticism", resolved.metrics)
    compose = speeds.compose or 0.0
    localize = speeds.localize or 0.0
    shared_done: set[str] = set()
    for src in resolved.models:
        for name, method in methods.items():
            if (name, src) in na:
                continue
            independent = not method.capabilities.classifier_dependent
            if not independent or name not in shared_done:
                shared_done.add(name)
                label = "*" if independent else src
                fwd, bwd = method_cost(method, size)
                # maps of a trained masker run its own network, priced like the source's forward
                rows.append(PlanRow("maps", name, label, src, fwd, bwd, n, secs(src, fwd, bwd)))
                rows.append(PlanRow("localize", name, label, "-", 0.0, 0.0, n, n * localize))
                rows.append(PlanRow("compose", name, label, "-", 0.0, 0.0, n, n * compose))
                for ev in resolved.eval_models:
                    rows.append(PlanRow("eval", name, label, ev, 3.0, 0.0, n, secs(ev, 3.0, 0.0)))
            others = [e for e in resolved.eval_models if e != src]
            for metric in metrics:
                f_src, b_src, f_eval = metric_cost(metric, len(others))
                measured = speeds.metric.get(metric.name)  # calibrated: the passes and the CPU work around them
                if f_src or b_src:
                    rows.append(PlanRow("metric", name, src, src, f_src, b_src, n, n * measured if measured is not None else secs(src, f_src, b_src)))
                if f_eval:
                    for ev in others:
                        rows.append(PlanRow("metric", name, src, ev, f_eval, 0.0, n, n * measured if measured is not None else secs(ev, f_eval, 0.0)))
            rows.extend(_sanity_rows(resolved, name, method, src, size, secs))
    return Plan(rows, n, speeds, na)


def _sanity_rows(resolved, name: str, method: SaliencyMethod, src: str, size: tuple[int, int], secs) -> list[PlanRow]:
    """The sanity stage recomputes a classifier-dependent method's maps on its first ``images``
    images once per randomised depth (and for the random logit)."""
    sanity = (resolved.metrics or {}).get("sanity")
    if sanity is None or not method.capabilities.classifier_dependent or not sanity.covers(name):
        return []
    p = sanity.params
    images = min(p.images, int(resolved.config["num_images"]))
    if images <= 0:
        return []
    repeats = len(p.depths) + int(p.full) + int(p.random_logit)
    fwd, bwd = method_cost(method, size)
    s = secs(src, fwd * repeats, bwd * repeats)
    return [PlanRow("sanity", name, src, src, fwd * repeats, bwd * repeats, images, None if s is None else s * images / int(resolved.config["num_images"]))]


# ----------------------------------------------------------------------------- speeds
def _row_names(clf: str) -> list[str]:
    """The throughput-table model names that price ``clf``: itself, then (a timm classifier) the
    same architecture with random weights, as ``salbench throughput`` names plain timm models."""
    if clf.startswith(("zoo:", "random:")):
        return [clf]
    arch = clf.split("@", 1)[0]
    return list(dict.fromkeys([clf, f"random:{arch}", f"random:{arch.split('.')[0]}"]))


def speeds_from_throughput(table: pa.Table, classifiers: list[str], image_size: int, batch_size: int, source: str,
                           dtype: str = "float32") -> Speeds:
    """Per-image forward / backward seconds from throughput rows (``forward`` and
    ``forward_backward_baseline`` kinds) at ``image_size`` and ``dtype``, the batch size nearest the
    run's; a timm classifier is priced by its architecture's random-init rows when it has none."""
    rows = [r for r in table.to_pylist() if r.get("image_size") == image_size and r.get("error") is None and r.get("ms_per_batch") == r.get("ms_per_batch")
            and (r.get("dtype") or "float32") == dtype]
    sp = Speeds(source=source)

    def pick(kind: str, clf: str) -> float | None:
        for model in _row_names(clf):
            cands = [r for r in rows if r["kind"] == kind and r["model"] == model]
            if cands:
                best = min(cands, key=lambda r: abs(math.log(r["batch_size"] / batch_size)))
                return best["ms_per_batch"] / 1e3 / best["batch_size"]
        return None

    for clf in classifiers:
        f, fb = pick("forward", clf), pick("forward_backward_baseline", clf)
        if f is not None:
            sp.forward[clf] = f
            if fb is not None:
                sp.backward[clf] = max(fb - f, 0.0)
    for kind, attr in (("compose", "compose"), ("localize", "localize")):
        vals = [r["ms_per_batch"] / 1e3 / r["batch_size"] for r in rows if r["kind"] == kind]
        if vals:
            setattr(sp, attr, min(vals))
    first = set(_row_names(classifiers[0])) if classifiers else set()
    for r in sorted((r for r in rows if r["kind"] == "metric"), key=lambda r: r["model"] in first):  # the first source's rows win
        sp.metric[r["method"]] = r["ms_per_batch"] / 1e3 / r["batch_size"]
    return sp


def calibrate(resolved, classifiers: dict[str, Any], device: torch.device, batch_size: int | None = None, repeats: int = 3) -> tuple[Speeds, list[dict[str, Any]]]:
    """Measure, on this machine, each classifier's forward (no grad, batch of the eval stage: three
    variants stacked) and forward+backward pass, composing the masked variants and the
    localisation stage, on the run's own first images. Returns the speeds and throughput rows."""
    from salbench.datasets import collate
    from salbench.metrics import MapContext, agnosticism, binarize, boxes
    from salbench.timing import time_callable

    spec = resolved.spec
    bs = min(batch_size or spec.batch_size, int(resolved.config["num_images"]))
    batch = collate([resolved.dataset[i] for i in range(bs)]).to(device)
    x = batch.images
    targets = batch.labels
    sp = Speeds(source=f"calibrated on this machine ({bs} images of {resolved.dataset.spec})")
    rows: list[dict[str, Any]] = []

    def add(kind: str, model: str, ms: float, n_img: int) -> None:
        rows.append(dict(kind=kind, method="-", model=model, batch_size=n_img, image_size=int(x.shape[-1]), dtype=spec.dtype, ms_per_batch=ms,
                         images_per_s=n_img / (ms / 1e3), error=None))

    stacked = torch.cat([x, x, x])
    for name, clf in classifiers.items():
        with torch.no_grad():
            # three untimed calls: a frozen TorchScript scorer (CPU) profiles its first call and
            # optimises on the next ones, which a run amortises over thousands of calls
            t = time_callable(lambda: clf(stacked), device, iters=repeats, warmup=3, memory=False)
        add("forward", name, t.median_ms, len(stacked))
        sp.forward[name] = t.median_ms / 1e3 / len(stacked)

        def fb() -> None:
            with torch.enable_grad():
                xx = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(clf(xx).gather(1, targets.view(-1, 1)).sum(), xx)

        t = time_callable(fb, device, iters=repeats, warmup=1, memory=False)
        add("forward_backward_baseline", name, t.median_ms, bs)
        sp.backward[name] = max(t.median_ms / 1e3 / bs - sp.forward[name], 0.0)
    gen = torch.Generator().manual_seed(0)
    maps = torch.nn.functional.interpolate(torch.rand(bs, 1, 8, 8, generator=gen), size=x.shape[-2:], mode="bilinear")[:, 0].to(device)
    masked = [v for v in agnosticism.VARIANTS if v != "original"]

    def compose() -> None:
        b = binarize.binarize(maps, spec.binarize, **spec.binarize_params)
        torch.cat([agnosticism.compose(x, b, v, inpaint=spec.inpaint) for v in masked])

    t = time_callable(compose, device, iters=repeats, warmup=1, memory=False)
    add("compose", "-", t.median_ms, bs)
    sp.compose = t.median_ms / 1e3 / bs

    def localize() -> None:
        b = binarize.binarize(maps, spec.binarize, **spec.binarize_params)
        box, ok = boxes.box_from_mask(b, spec.box, saliency=maps, images=x)
        ctx = MapContext(maps=maps, binary=b, box=box, box_valid=ok, batch=batch, source_correct=torch.ones(bs, dtype=torch.bool, device=device),
                         targets=targets)
        for metric in metrics_for("localization", resolved.metrics):
            if metric.applies(ctx) and metric.cost() is None:
                ctx.values.update(metric.compute(ctx))

    t = time_callable(localize, device, iters=repeats, warmup=1, memory=False)
    add("localize", "-", t.median_ms, bs)
    sp.localize = t.median_ms / 1e3 / bs

    # metrics that call classifiers (deletion, insertion, ROAD): their passes and the CPU work
    # around them (the ROAD imputation's solve), timed on the first source classifier
    src = resolved.models[0]
    with torch.no_grad():  # as the runner's evaluate_batch: scoring forwards use the BN-folded scorer
        logits = {name: clf(x) for name, clf in classifiers.items()}
        for metric in metrics_for("localization", resolved.metrics):
            if metric.cost() is None or src not in classifiers:
                continue
            ctx = MapContext(maps=maps, binary=maps > 0.5, box=torch.zeros(bs, 4, device=device), box_valid=torch.ones(bs, dtype=torch.bool, device=device),
                             batch=batch, source_correct=torch.ones(bs, dtype=torch.bool, device=device), targets=targets, classifiers=classifiers,
                             source_model=src, eval_models=tuple(resolved.eval_models), logits_clean=logits, shared={})
            if not metric.applies(ctx):
                continue
            t = time_callable(lambda: metric.compute(ctx), device, iters=1, warmup=0, memory=False)
            rows.append(dict(kind="metric", method=metric.name, model=src, batch_size=bs, image_size=int(x.shape[-1]), dtype=spec.dtype,
                             ms_per_batch=t.median_ms, images_per_s=bs / (t.median_ms / 1e3), error=None))
            sp.metric[metric.name] = t.median_ms / 1e3 / bs
    return sp, rows


def check_pairs(methods: dict[str, SaliencyMethod], classifiers: dict[str, Any], models: list[str]) -> dict[tuple[str, str], str]:
    """The (method, source) pairs a method refuses (as the Evaluator will), with why."""
    out = {}
    for src in models:
        for name, method in methods.items():
            try:
                method.check(classifiers[src])
            except NotApplicable as exc:
                out[(name, src)] = str(exc)
    return out


# ----------------------------------------------------------------------------- saved speeds
def calibration_path(device_label: str) -> Path:
    """Where ``salbench plan`` keeps the speeds it measured on a device: ``$SALBENCH_HOME/plan/``."""
    from salbench.store import home

    from salbench.classifiers import FREEZE_ON_CPU

    # speeds measured before the scoring forwards ran frozen graphs (or with them turned off) are
    # not this run's: the file is per device, calibration version and scoring path
    tag = hashlib.sha256(f"{device_label}|calibration 2|frozen scorer {FREEZE_ON_CPU}".encode()).hexdigest()[:12]
    return home() / "plan" / f"speeds-{tag}.parquet"


def load_saved_speeds(resolved, device) -> Speeds | None:
    """Speeds a previous ``salbench plan`` measured on this device for these classifiers, or None
    (the run's progress bar then shows an ETA from its first step)."""
    from salbench.device import device_name

    path = calibration_path(device_name(device))
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception:
        return None
    names = list(dict.fromkeys(resolved.models + resolved.eval_models))
    sp = speeds_from_throughput(table, names, int(resolved.dataset.image_size[-1]), resolved.spec.batch_size, f"saved calibration {path}",
                                resolved.spec.dtype)
    return sp if all(sp.known(n) for n in names) else None


def save_speeds(rows: list[dict[str, Any]], device) -> Path:
    """Merge calibration rows into the device's saved speeds (atomically)."""
    import pyarrow.parquet as pq

    from salbench.device import device_name
    from salbench.store import atomic_write_bytes

    path = calibration_path(device_name(device))
    old = pq.read_table(path).to_pylist() if path.is_file() else []
    def key(r: dict[str, Any]) -> tuple:
        return r["kind"], r["model"], r["image_size"], r.get("dtype") or "float32", r.get("method", "-")

    fresh = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in fresh] + rows
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(merged), sink)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path



# ----------------------------------------------------------------------------- text
def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 600:
        return f"{s:.1f}"
    if s < 3 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h" if s < 3 * 86400 else f"{s / 86400:.1f} d"


def format_plan(plan: Plan, *, detail: bool = True) -> str:
    """The plan as text: per (method, source) pair, per stage, and the total."""
    lines = [f"Plan: {plan.images} images · speeds: {plan.speeds.source}", ""]
    pairs: dict[tuple[str, str], dict[str, float]] = {}
    for r in plan.rows:
        if r.method == "-":
            continue
        d = pairs.setdefault((r.method, r.source), {"fwd": 0.0, "bwd": 0.0, "eval": 0.0, "metric": 0.0, "s": 0.0, "unknown": 0.0})
        if r.stage == "eval":
            d["eval"] += r.total_forwards
        elif r.stage == "metric":
            d["metric"] += r.total_forwards + r.total_backwards
        else:
            d["fwd"] += r.total_forwards
            d["bwd"] += r.total_backwards
        d["s"] += r.seconds or 0.0
        d["unknown"] += r.seconds is None
    if detail:
        lines.append(f"{'method':<18} {'source':<20} {'map fwd':>10} {'map bwd':>10} {'eval fwd':>10} {'metric passes':>14} {'est. s':>9}")
        for (m, s), d in pairs.items():
            est = "?" if d["unknown"] else _fmt_s(d["s"])
            lines.append(f"{m:<18} {s:<20} {d['fwd']:>10.0f} {d['bwd']:>10.0f} {d['eval']:>10.0f} {d['metric']:>14.0f} {est:>9}")
        lines.append("")
    stages: dict[str, list[float | None]] = {}
    for r in plan.rows:
        stages.setdefault(r.stage, []).append(r.seconds)
    lines.append(f"{'stage':<10} {'forwards':>12} {'backwards':>12} {'est. s':>9}")
    for st, secs in stages.items():
        f = sum(r.total_forwards for r in plan.rows if r.stage == st)
        b = sum(r.total_backwards for r in plan.rows if r.stage == st)
        total = None if any(s is None for s in secs) else sum(s for s in secs if s is not None)
        lines.append(f"{st:<10} {f:>12.0f} {b:>12.0f} {_fmt_s(total):>9}")
    tot_f = sum(r.total_forwards for r in plan.rows)
    tot_b = sum(r.total_backwards for r in plan.rows)
    lines.append(f"{'total':<10} {tot_f:>12.0f} {tot_b:>12.0f} {_fmt_s(plan.total_seconds):>9}")
    if plan.not_applicable:
        lines.append("")
        lines.append(f"not applicable (skipped): {', '.join(f'{m} on {s}' for m, s in sorted(plan.not_applicable))}")
    if plan.total_seconds is None:
        missing = sorted({r.classifier for r in plan.rows if r.seconds is None})
        lines.append(f"no speed known for {', '.join(missing)}: pass --throughput or --calibrate")
    return "\n".join(lines)
