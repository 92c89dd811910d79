"""Guarded references: a run's leaderboard summary (means with their 95% intervals, no per-image
rows) committed to the repository, which ``salbench compare REFERENCE RUN`` checks a new run
against.

A reference directory holds ``leaderboard.json`` (the report's rows) and ``run.json`` (the run's
provenance with ``"reference": true``: spec, protocol, versions, classifiers' weights). Writing one
is ``salbench reference RUN_DIR OUT_DIR``: a maintainer who moves a number on purpose reruns the
reference spec, writes the reference again and commits the diff (docs/reference.md).

The zoo is retrained in a fresh ``$SALBENCH_HOME`` and is not bit-identical across CPUs, so a
reference value's tolerance is ``max(metric_tol, ci_tol x the half-width of its 95% interval)``:
``ci_tol`` scales the sampling spread that the reference itself measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from salbench.errors import UsageError

REFERENCE_KEYS = ("run_id", "hash", "spec", "dataset", "classifiers", "not_applicable", "versions", "git_commit", "device", "status")


def is_reference(path: str | Path) -> bool:
    p = Path(path)
    try:
        return bool(json.loads((p / "run.json").read_text()).get("reference")) and (p / "leaderboard.json").is_file()
    except (OSError, ValueError):
        return False


def write_reference(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the reference of a complete run (its report's leaderboard.json + provenance)."""
    from salbench.report import write_report
    from salbench.store import atomic_write_bytes

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    if meta.get("status") != "complete":
        raise UsageError(f"{str(run_dir)!r} is not a complete run (status {meta.get('status')!r}): a reference must be complete")
    board = run_dir / "leaderboard.json"
    if not board.is_file():
        write_report([run_dir], run_dir)
    rows = json.loads(board.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = {k: meta[k] for k in REFERENCE_KEYS if k in meta}
    kept["classifiers"] = {n: {k: v for k, v in c.items() if k in ("weights_sha256", "val_top1", "arch", "source")} for n, c in (kept.get("classifiers") or {}).items()}
    atomic_write_bytes(out_dir / "leaderboard.json", (json.dumps(rows, indent=1, sort_keys=True) + "\n").encode())
    atomic_write_bytes(out_dir / "run.json", (json.dumps({"reference": True, **kept}, indent=1, sort_keys=True, default=str) + "\n").encode())
    return out_dir


def reference_means(path: str | Path, columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(means, interval half-widths) per (method, source_model) from a reference's leaderboard;
    the half-widths carry the row's image count in ``images``."""
    rows = json.loads((Path(path) / "leaderboard.json").read_text())
    keys = ["method", "source_model"]
    means, halves = [], []
    for r in rows:
        if not r.get("images"):  # a not-applicable pair: a leaderboard row with its reason, no values
            continue
        means.append({**{k: r.get(k) for k in keys}, **{c: _num(r.get(c)) for c in columns}, "errors": _num(r.get("errors", 0))})
        halves.append({**{k: r.get(k) for k in keys}, **{c: (_num(r.get(f"{c}_hi")) - _num(r.get(f"{c}_lo"))) / 2 for c in columns},
                       "images": _num(r.get("images"))})
    return pd.DataFrame(means).set_index(keys), pd.DataFrame(halves).set_index(keys)


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
