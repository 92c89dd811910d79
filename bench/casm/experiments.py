"""The CASM experiments: Table 2 (ablation), Table 3 (unseen classes) and the twin-copy test.

These sit above the runner: each trains maskers (``salbench.casm.train``), registers them as
methods, evaluates them with ``salbench.runner.run`` and tabulates the run with
``salbench.casm.summaries``. Nothing below this module imports it (or the runner).
``salbench train ablation|unseen|twin`` wrap these functions.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import torch

from salbench.casm.checkpoints import read_meta
from salbench.casm.data import synthetic_config
from salbench.casm.spec import SCORES, THINNINGS, CasmSpec, method_name
from salbench.casm.summaries import summarize_run, write_summary
from salbench.casm.train import train
from salbench.classifiers import load_classifier
from salbench.config import RunSpec
from salbench.datasets import build_dataset, collate
from salbench.errors import UsageError
from salbench.methods import create_method
from salbench.methods.casm import register_cached_maskers
from salbench.metrics import binarize as binarize_mod
from salbench.metrics import bootstrap_ci
from salbench.metrics.localization import box_sums
from salbench.results import read_table
from salbench.rng import image_seeds
from salbench.runner import run
from salbench.store import atomic_write_bytes
from salbench.tables import bootstrap_many


def twin_coverage(
    methods: Sequence[str],
    *,
    n: int = 500,
    source_model: str = "zoo:resnet",
    binarize: str = "mean_area",
    min_cover: float = 0.5,
    batch_size: int = 100,
    dataset: str = "synthetic?variant=twin",
    n_boot: int = 1000,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """On the twin variant: how often the binary mask covers both copies (each copy's box hit by
    the binary mask on at least ``min_cover`` of its area), one copy, or none; ``both_pixels``: the
    same test on each copy's object pixels instead of its box (objects fill only part of a box).
    Each method is prepared first (a CASM masker that is not cached is trained then, on the CPU).
    No ``torch.no_grad`` around it all: loading a zoo classifier may train it, and methods set
    their own grad mode (maps come back detached)."""
    spec = dataset if "n=" in dataset else f"{dataset}{'&' if '?' in dataset else '?'}n={n}"
    ds = build_dataset(spec)
    clf = load_classifier(source_model)
    out = []
    for name in methods:
        method = create_method(name)
        method.prepare(torch.device("cpu"), progress=progress)
        both, one, cover, area, both_px = [], [], [], [], []
        for s in range(0, len(ds), batch_size):
            batch = collate([ds[i] for i in range(s, min(len(ds), s + batch_size))])
            maps = method(clf, batch.images, batch.labels, image_seeds(0, batch.index, 0))
            b = binarize_mod.binarize(maps, binarize).float()
            area.append(maps.flatten(1).mean(1))
            inside, count = box_sums(b, batch.boxes)
            frac = torch.where(batch.box_valid.bool(), inside / count.clamp_min(1), torch.zeros_like(inside))
            hit = (frac >= min_cover) & batch.box_valid.bool()
            both.append(hit.sum(1) >= 2)
            if batch.gt_masks is not None:  # the same test on each copy's object pixels (the box's share of the object mask)
                gt = batch.gt_masks.float()
                obj_in, _ = box_sums(gt, batch.boxes)
                hit_in, _ = box_sums(b * gt, batch.boxes)
                px = torch.where(obj_in > 0, hit_in / obj_in.clamp_min(1), torch.zeros_like(obj_in))
                both_px.append(((px >= min_cover) & batch.box_valid.bool()).sum(1) >= 2)
            one.append(hit.sum(1) == 1)
            cover.append(frac[:, :2].float())
        both_t, one_t = torch.cat(both).float(), torch.cat(one).float()
        fr = torch.cat(cover)
        lo, hi = bootstrap_ci(both_t, n_boot=n_boot)
        out.append({
            "method": name, "images": len(both_t), "both": 100 * both_t.mean().item(), "both_ci": (100 * lo, 100 * hi),
            "one": 100 * one_t.mean().item(), "none": 100 * (1 - both_t - one_t).mean().item(),
            "mean_box_cover": fr.mean().item(), "min_copy_cover": fr.min(1).values.mean().item(), "area": torch.cat(area).mean().item(),
            "both_pixels": 100 * torch.cat(both_px).float().mean().item() if both_px else math.nan,
        })
    return out


ABLATION_DEFAULT = (
    # (score, share_encoder, thinning): the paper's Table 2 axes, thinning swept at (E, shared)
    ("entropy", True, "F"),
    ("entropy", True, "L"),
    ("entropy", True, "FL"),
    ("entropy", True, "L100"),
    ("entropy", True, "L1000"),
    ("classification", True, "L100"),
    ("entropy", False, "L100"),
)


def ablation_settings(full: bool = False, scores: Sequence[str] | None = None, share: Sequence[bool] | None = None,
                      thinnings: Sequence[str] | None = None) -> list[tuple[str, bool, str]]:
    if not full and scores is None and share is None and thinnings is None:
        return list(ABLATION_DEFAULT)
    scores = list(scores or SCORES)
    share = list(share if share is not None else (True, False))
    thinnings = list(thinnings or THINNINGS)
    return [(s, sh, t) for s in scores for sh in share for t in thinnings]


def ablation_name(score: str, share: bool, thinning: str, steps: int) -> str:
    return f"abl-{score[0].upper()}-{'shr' if share else 'sep'}-{thinning}-s{steps}"


def run_ablation(
    *,
    steps: int = 150,
    settings: Sequence[tuple[str, bool, str]] | None = None,
    base: CasmSpec | None = None,
    limit: int = 200,
    models: str = "zoo:resnet",
    eval_models: str = "zoo:*",
    out: str | os.PathLike | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> tuple[pathlib.Path, list[dict[str, Any]]]:
    """Train one masker per (score, sharing, thinning) setting, evaluate all in one run, and write
    ``ablation.md`` / ``ablation.csv`` (LE, F1, mean inpainted top-1 over the eval classifiers other
    than the source, each with a bootstrap CI) into the run directory."""
    base = base or CasmSpec()
    settings = list(settings or ABLATION_DEFAULT)
    names, info = [], {}
    for score, share, thinning in settings:
        spec = base.replace(name=ablation_name(score, share, thinning, steps), score=score, share_encoder=share, thinning=thinning, steps=steps, lambda_r=base.lambda_r)
        t0 = time.perf_counter()
        d = train(spec, progress=progress)
        meta = read_meta(d)
        register_cached_maskers()
        names.append(method_name(spec.name))
        info[method_name(spec.name)] = {"S": "E" if score == "entropy" else "C", "SHR": "yes" if share else "no", "THIN": thinning,
                                        "pool": len(meta.get("pool_versions", [])), "train_s": round(meta.get("train_time_s", time.perf_counter() - t0))}
    run_spec = RunSpec(methods=names, models=[models], eval_models=[eval_models], limit=limit, batch_size=batch_size, name="casm-ablation")
    run_dir = run(run_spec, out, progress=progress)
    rows = summarize_run(run_dir, names)
    for r in rows:
        r.update(info[r["method"]])
    evs = ", ".join(rows[0]["eval_models"]) if rows else ""
    header = (
        f"CASM ablation (Table 2): {steps} training steps per setting, source {models}, {limit} validation images. "
        f"S: score (E entropy, C classification); SHR: encoder shared with the classifier; THIN: thinning; pool: classifiers in "
        f"F^(k) at the end (L<N> snapshots only f^(0) when N > {steps} steps, so L1000 equals FL below 1000 steps); "
        f"train_s: training seconds. Top-1 columns: mean over the eval classifiers other than the source ({evs}); "
        "[95% bootstrap CI over images].\n\n"
    )
    write_summary(run_dir, "ablation", rows, ["S", "SHR", "THIN", "pool", "train_s"], header=header)
    return run_dir, rows


def run_unseen(
    *,
    seen: Sequence[int] = (8, 5, 2),
    steps: int = 300,
    base: CasmSpec | None = None,
    limit: int = 500,
    models: str = "zoo:resnet",
    out: str | os.PathLike | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> tuple[pathlib.Path, list[dict[str, Any]]]:
    """The Table 3 experiment: for each k in ``seen``, train a masker (thinning L, like the paper)
    on classes 0..k-1 only, evaluate on the full validation set and report LE separately on seen
    and unseen classes (bootstrap CIs). Writes ``unseen.md`` / ``unseen.csv`` in the run dir."""
    base = base or CasmSpec(thinning="L")
    cfg = synthetic_config(base.dataset)
    names, classes = [], {}
    for k in seen:
        if not 1 <= k < cfg.num_classes:
            raise UsageError(f"seen={k}: expected 1..{cfg.num_classes - 1} seen classes")
        spec = base.replace(name=f"unseen-{k}of{cfg.num_classes}-{base.thinning}-s{steps}", train_classes=tuple(range(k)), steps=steps)
        train(spec, progress=progress)
        register_cached_maskers()
        names.append(method_name(spec.name))
        classes[method_name(spec.name)] = set(range(k))
    run_spec = RunSpec(dataset=base.dataset, methods=names, models=[models], eval_models=[models], limit=limit, batch_size=batch_size, name="casm-unseen")
    run_dir = run(run_spec, out, progress=progress)
    loc = read_table(run_dir, "localization")
    loc = loc[loc["error"].isna()]
    rows, vectors = [], []
    for name in names:
        lm = loc[loc["method"] == name]
        seen_mask = lm["label"].isin(classes[name])
        row: dict[str, Any] = {"method": name, "seen_classes": len(classes[name]), "train_share": f"{100 * len(classes[name]) / cfg.num_classes:.0f}%"}
        for part, sel in (("seen", seen_mask), ("unseen", ~seen_mask)):
            v = lm.loc[sel, "le"].to_numpy(dtype=float)
            vectors.append(v)
            row[f"le_{part}"], row[f"n_{part}"] = 100 * v.mean() if v.size else math.nan, int(v.size)
        rows.append(row)
    lo, hi = bootstrap_many(vectors)  # the report's bootstrap: one resampling per image count for every vector
    for k, row in enumerate(rows):
        for j, part in enumerate(("seen", "unseen")):
            row[f"le_{part}_ci"] = (100 * lo[2 * k + j], 100 * hi[2 * k + j])
    lines = ["| method | trained on | LE seen % ↓ | LE unseen % ↓ | images seen / unseen |", "|---|---|---|---|---|"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "seen_classes", "le_seen", "le_seen_lo", "le_seen_hi", "le_unseen", "le_unseen_lo", "le_unseen_hi", "n_seen", "n_unseen"])
    for r in rows:
        (a, b), (c, d) = r["le_seen_ci"], r["le_unseen_ci"]
        lines.append(f"| {r['method']} | {r['seen_classes']} classes ({r['train_share']}) | {r['le_seen']:.1f} [{a:.1f}, {b:.1f}] | {r['le_unseen']:.1f} [{c:.1f}, {d:.1f}] | {r['n_seen']} / {r['n_unseen']} |")
        w.writerow([r["method"], r["seen_classes"], f"{r['le_seen']:.4f}", f"{a:.4f}", f"{b:.4f}", f"{r['le_unseen']:.4f}", f"{c:.4f}", f"{d:.4f}", r["n_seen"], r["n_unseen"]])
    atomic_write_bytes(pathlib.Path(run_dir) / "unseen.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(pathlib.Path(run_dir) / "unseen.csv", buf.getvalue().encode())
    return run_dir, rows


__all__ = ["ABLATION_DEFAULT", "ablation_name", "ablation_settings", "run_ablation", "run_unseen", "twin_coverage"]
