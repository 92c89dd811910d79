"""Helpers (no tests): synthetic run directories for the report tests: real Parquet layout (RunWriter) + run.json.

Values are random but seeded; what matters is that the tests recompute report cells from the
same Parquet rows the report reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from salbench.examples import choose, image_columns, map_columns
from salbench.results import AGNOSTICISM_SCHEMA, EXAMPLE_IMAGES_SCHEMA, EXAMPLE_MAPS_SCHEMA, LOCALIZATION_SCHEMA, RunWriter, atomic_write_json, atomic_write_table

VARIANTS = ("original", "masked_in", "masked_out", "inpainted")
DATASET = "synthetic?split=val&n=500&seed=0&classes=10&size=64"


def _table(schema: pa.Schema, cols: dict[str, Any], n: int) -> pa.Table:
    arrays = []
    for f in schema:
        v = cols.get(f.name)
        if v is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(v, pa.Array):
            arrays.append(v)
        else:
            arrays.append(pa.array(v, type=f.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def _example_tables(idx: np.ndarray, pairs, *, methods_independent, image_size, rng, num_classes: int, chosen: list[int]) -> dict[str, pa.Table]:
    """Stored examples (``salbench.examples``) for the chosen images among ``idx``: random pixels
    and maps; classifier-independent methods once, with no source, as the runner stores them."""
    pick = np.array([i for i in idx if i in set(chosen)], dtype=np.int64)
    h, w = image_size
    k = len(pick)
    img = image_columns(pick, [f"val-{i:06d}" for i in pick], pick % num_classes, rng.random((k, 3, h, w)),
                        [[[2.0, 2.0, w / 2, h / 2]] for _ in pick], [f"class{c}" for c in range(num_classes)])
    cols: dict[str, list] = {}
    for m, s in pairs:
        if m in methods_independent and s != pairs[0][1]:
            continue
        maps = rng.random((k, h, w))
        data = map_columns(maps, maps > 0.5, rng.random((k, 3, h, w)))
        for key, v in {"image_index": list(pick), "method": [m] * k, "source_model": [None if m in methods_independent else s] * k, **data}.items():
            cols.setdefault(key, []).extend(v)
    maps_table = pa.Table.from_pydict(cols, schema=EXAMPLE_MAPS_SCHEMA) if k else EXAMPLE_MAPS_SCHEMA.empty_table()
    return {"example_images": pa.Table.from_pydict({c: list(v) for c, v in img.items()}, schema=EXAMPLE_IMAGES_SCHEMA), "example_maps": maps_table}


def _sanity_table(idx: np.ndarray, pairs, quality, rng, run_id: str, dataset: str, num_classes: int) -> pa.Table:
    """Sanity rows (MPRT at depths 1-3 of 3 groups, random-logit): controls at similarity 1,
    other methods falling with depth (a pair's level from its quality)."""
    from salbench.results import schema

    rows: dict[str, list] = {}
    for m, s in pairs:
        for test, depth in (("mprt", 1), ("mprt", 2), ("mprt", 3), ("random_logit", None)):
            k = len(idx)
            control = m in ("centre", "full", "random")
            level = 1.0 if control else (1 - quality[(m, s)]) * (1.0 if depth is None else 1.0 / depth)
            vals = np.ones(k) if control else np.clip(level + rng.normal(0, 0.05, k), -1, 1)
            for c, v in dict(run_id=[run_id] * k, dataset=[dataset] * k, image_index=list(idx), image_id=[f"val-{i:06d}" for i in idx],
                             label=list(idx % num_classes), method=[m] * k, source_model=[s] * k, test=[test] * k, depth=[depth] * k,
                             groups=[3 if depth else None] * k, layers=[{1: "fc", 2: "layer4", 3: "conv1"}.get(depth)] * k,
                             spearman=list(vals), ssim=list(vals), hog=list(vals), target=list(idx % num_classes), error=[None] * k).items():
                rows.setdefault(c, []).extend(v)
    return _table(schema("sanity"), rows, len(rows["run_id"]))


def make_run(
    run_dir: str | Path,
    *,
    methods=("gradcam", "gradient", "centre", "full", "random"),
    models=("zoo:cnn_a", "zoo:vit_b"),
    evals=None,
    n_images: int = 60,
    batch: int = 25,
    seed: int = 0,
    dataset: str = DATASET,
    image_size=(64, 64),
    inpaint: str = "telea",
    binarize: str = "mean_area",
    method_params: dict[str, dict[str, Any]] | None = None,
    not_applicable: dict[tuple[str, str], str] | None = None,
    error_pair: tuple[str, str] | None = None,
    n_errors: int = 0,
    throughput: list[dict[str, Any]] | None = None,
    run_id: str | None = None,
    num_classes: int = 10,
    examples: bool = False,
    sanity_images: int = 0,
    map_timing: dict[str, float] | None = None,
) -> Path:
    run_dir = Path(run_dir)
    evals = list(evals or models)
    methods, models = list(methods), list(models)
    method_params = method_params or {}
    na = dict(not_applicable or {})
    rng = np.random.default_rng(seed)
    run_id = run_id or f"fixture{seed:05d}"
    pairs = [(m, s) for s in models for m in methods if (m, s) not in na]
    # a per-pair quality so methods differ
    quality = {p: rng.uniform(0.2, 0.9) for p in pairs}
    writer = RunWriter(run_dir)
    for unit, start in enumerate(range(0, n_images, batch)):
        idx = np.arange(start, min(start + batch, n_images))
        b = len(idx)
        P = len(pairs)
        meth = np.repeat(np.array([p[0] for p in pairs], dtype=object), b)
        src = np.repeat(np.array([p[1] for p in pairs], dtype=object), b)
        q = np.repeat(np.array([quality[p] for p in pairs]), b)
        img = np.tile(idx, P)
        n = P * b
        le = (rng.random(n) > q).astype(np.float32)
        correct = rng.random(n) < 0.8
        om = np.maximum(le, (~correct).astype(np.float32))
        f1 = (rng.random(n) * q).astype(np.float32)
        area = rng.random(n).astype(np.float32)
        err = np.array([None] * n, dtype=object)
        if error_pair is not None and unit == 0 and n_errors:
            k = pairs.index(error_pair)
            bad = np.arange(k * b, k * b + n_errors)
            err[bad] = "RuntimeError: boom"
            for a in (le, om, f1, area):
                a[bad] = np.nan
        loc = _table(LOCALIZATION_SCHEMA, dict(
            run_id=[run_id] * n, dataset=[dataset] * n, image_index=img, image_id=[f"val-{i:06d}" for i in img], label=img % num_classes,
            method=meth, source_model=src, binarize=[binarize] * n, le=le, om=om, f1=f1, precision=f1, recall=f1, area=area,
            binary_area=area, tv=(area / 10).astype(np.float32), entropy=(area / 3).astype(np.float32), target=img % num_classes,
            source_correct=correct, error=err), n)
        # agnosticism: pairs x evals x variants x images (error pairs' failed images have no rows)
        ok_mask = np.array([e is None for e in err])
        reps = len(evals) * len(VARIANTS)
        a_meth = np.repeat(meth[ok_mask], reps)
        a_src = np.repeat(src[ok_mask], reps)
        a_img = np.repeat(img[ok_mask], reps)
        m_ok = int(ok_mask.sum())
        a_eval = np.tile(np.repeat(np.array(evals, dtype=object), len(VARIANTS)), m_ok)
        a_var = np.tile(np.array(VARIANTS, dtype=object), m_ok * len(evals))
        na_ = len(a_meth)
        p = np.where(a_var == "masked_out", 0.3, np.where(a_var == "inpainted", 0.4, 0.7))
        top1 = (rng.random(na_) < p).astype(np.float32)
        top5 = np.maximum(top1, (rng.random(na_) < 0.5).astype(np.float32))
        agn = _table(AGNOSTICISM_SCHEMA, dict(
            run_id=[run_id] * na_, dataset=[dataset] * na_, image_index=a_img, image_id=[f"val-{i:06d}" for i in a_img], label=a_img % num_classes,
            method=a_meth, source_model=a_src, eval_model=a_eval, variant=a_var, inpaint=[inpaint] * na_, top1=top1, top5=top5,
            ce=rng.random(na_).astype(np.float32), entropy=rng.random(na_).astype(np.float32), error=[None] * na_), na_)
        tables = {"localization": loc, "agnosticism": agn}
        if examples:
            tables.update(_example_tables(idx, pairs, methods_independent=("centre", "full", "random"), image_size=image_size, rng=rng,
                                          num_classes=num_classes, chosen=choose(n_images, 0)))
        if sanity_images and idx[0] < sanity_images:
            tables["sanity"] = _sanity_table(idx[idx < sanity_images], pairs, quality, rng, run_id, dataset, num_classes)
        writer.write_unit(unit, tables, {"unit": unit, "images": b})
    spec = {
        "dataset": dataset, "protocol": {"dataset": dataset, "image_size": list(image_size), "num_classes": num_classes},
        "binarize": binarize, "binarize_params": {}, "box": "largest", "inpaint": inpaint, "target": "label", "seed": 0,
        "num_images": n_images, "limit": n_images, "methods": methods, "models": models, "eval_models": evals,
        "method_configs": {m: {"name": m, "params": dict(method_params.get(m, {}))} for m in methods},
    }
    meta = {
        "run_id": run_id, "hash": run_id * 2, "spec": spec, "status": "complete",
        "not_applicable": [{"method": m, "model": s, "reason": r} for (m, s), r in na.items()],
        "classifiers": {m: {"name": m} for m in dict.fromkeys(models + evals)},
    }
    if map_timing:  # the runner's stage clock: seconds per "maps/<method>/<source>"
        meta["timing"] = {"seconds": map_timing}
        meta["counts"] = {"images": n_images}
    atomic_write_json(run_dir / "run.json", meta)
    if throughput:
        # the columns the throughput command writes (its full schema has more; the report needs these)
        cols = ("run_id", "kind", "method", "model", "device", "dtype", "batch_size", "images_per_s", "ms_per_batch", "peak_mem_mb", "error")
        rows = {c: [r.get(c, run_id if c == "run_id" else None) for r in throughput] for c in cols}
        atomic_write_table(run_dir / "throughput.parquet", pa.Table.from_pydict(rows))
    return run_dir
