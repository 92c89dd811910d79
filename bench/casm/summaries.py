"""Per-method summaries of a run for the CASM experiments, computed by the report's own code.

The numbers are the leaderboard's (``salbench.tables.leaderboard``: LE, F1, mask area and the
cross-classifier masked-in / masked-out / inpainted top-1, each with the same percentile-bootstrap
95% CI over images) and the report's paired bootstrap (``salbench.tables.paired_from_groups``), so
a CASM table never disagrees with the leaderboard of the same run. Cross-classifier means average
over the eval classifiers other than the source classifier (``eval_models`` narrows that set; the
source is never averaged in).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from salbench import tables
from salbench.store import atomic_write_bytes

SUMMARY_VARIANTS = ("masked_in", "masked_out", "inpainted")


def load_run(run_dir: str | os.PathLike, source_model: str | None = None,
             eval_models: Sequence[str] | None = None) -> tuple[tables.Group, str | None, list[str]]:
    """The run as the report reads it, its source classifier (default: the first in name order)
    and the eval classifiers averaged; the rows of other eval classifiers dropped."""
    group = tables.load_groups([run_dir])[0]
    loc = group.loc[group.loc["error"].isna()]
    sources = sorted(str(s) for s in loc["source_model"].unique())
    src = source_model or (sources[0] if sources else None)
    evals = sorted({str(e) for e in group.agn["eval_model"].unique()} - {src})
    if eval_models:
        evals = [e for e in eval_models if e != src]
        keep = group.agn["eval_model"].astype(str).isin([*evals, src])
        group = dataclasses.replace(group, agn=group.agn[keep], cache={})
    return group, src, evals


def summarize_run(
    run_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    *,
    source_model: str | None = None,
    eval_models: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per method (one source model): LE, F1, mean mask area, and the cross-classifier masked-in /
    masked-out / inpainted top-1, each with its 95% CI (values in %; ``<col>_ci`` = (lo, hi))."""
    group, src, evals = load_run(run_dir, source_model, eval_models)
    board = tables.leaderboard(group, n_boot=n_boot, seed=seed)
    if board.empty or src is None:
        return []
    board = board[(board["source_model"].astype(str) == src) & (board["images"] > 0)]
    by_method = {str(r["method"]): r for _, r in board.iterrows()}
    rows = []
    for method in methods or sorted(by_method):
        r = by_method.get(method)
        if r is None:
            continue
        row: dict[str, Any] = {"method": method, "source_model": src, "images": int(r["images"])}
        for col in ("le", "f1"):
            row[col], row[f"{col}_ci"] = float(r[col]), (float(r[f"{col}_lo"]), float(r[f"{col}_hi"]))
        row["area"] = float(r["area"])
        row["eval_models"] = evals
        for variant in SUMMARY_VARIANTS:
            name = f"{variant}_top1"
            row[variant] = float(r.get(name, math.nan))
            row[f"{variant}_ci"] = (float(r.get(f"{name}_lo", math.nan)), float(r.get(f"{name}_hi", math.nan)))
        rows.append(row)
    return rows


def paired_difference(run_dir: str | os.PathLike, a: str, b: str, variant: str, *, source_model: str | None = None,
                      eval_models: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean over images of (method a - method b) cross-classifier top-1 on ``variant`` (in points),
    with the report's paired bootstrap CI (the same images resampled for both)."""
    group, src, _ = load_run(run_dir, source_model, eval_models)
    df = tables.paired_from_groups([group], a, b, f"{variant}_top1", src, n_boot=n_boot, seed=seed)
    if df.empty:
        return math.nan, (math.nan, math.nan)
    r = df.iloc[0]
    return float(r["diff"]), (float(r["diff_lo"]), float(r["diff_hi"]))


def format_summary(rows: Sequence[Mapping[str, Any]], extra: Sequence[str] = ()) -> str:
    """A Markdown table of ``summarize_run`` rows (mean [95% CI])."""

    def ci(r, k):
        lo, hi = r[f"{k}_ci"]
        return f"{r[k]:.1f} [{lo:.1f}, {hi:.1f}]"

    head = ["method", *extra, "LE % ↓", "F1 % ↑", "area", "masked-in top-1 % ↑", "masked-out top-1 % ↓", "inpainted top-1 % ↓"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], *[str(r.get(e, "")) for e in extra], ci(r, "le"), ci(r, "f1"), f"{r['area']:.3f}", ci(r, "masked_in"), ci(r, "masked_out"), ci(r, "inpainted")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: str | os.PathLike, stem: str, rows: Sequence[Mapping[str, Any]], extra: Sequence[str], header: str = "") -> None:
    """``<stem>.md`` (``header`` + ``format_summary``) and ``<stem>.csv`` in the run directory."""
    atomic_write_bytes(pathlib.Path(run_dir) / f"{stem}.md", (header + format_summary(rows, extra)).encode())
    buf = io.StringIO()
    cols = ["method", *extra, "images", "le", "le_lo", "le_hi", "f1", "f1_lo", "f1_hi", "area",
            "masked_in", "masked_in_lo", "masked_in_hi", "masked_out", "masked_out_lo", "masked_out_hi", "inpainted", "inpainted_lo", "inpainted_hi"]
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        flat = dict(r)
        for k in ("le", "f1", *SUMMARY_VARIANTS):
            flat[f"{k}_lo"], flat[f"{k}_hi"] = r[f"{k}_ci"]
        w.writerow([(f"{flat[c]:.4f}" if isinstance(flat.get(c), float) else flat.get(c, "")) for c in cols])
    atomic_write_bytes(pathlib.Path(run_dir) / f"{stem}.csv", buf.getvalue().encode())


__all__ = ["format_summary", "load_run", "paired_difference", "summarize_run", "write_summary"]
