"""Metric agreement (LATEC, Klein et al. 2024: saliency metrics often disagree): per source
classifier, Kendall's tau between the method rankings each pair of leaderboard metrics gives.

Computed from a leaderboard alone (reports only read). Rankings are direction-aware: a metric
where lower is better is negated first, so tau = 1 means "the two metrics order the methods the
same way, best to worst", -1 the reverse. Controls are left out (they are baselines, not
candidates, and would inflate agreement by being bad on almost everything); a pair needs three
methods with values for both, else tau is NaN. ``scipy.stats.kendalltau`` (tau-b: ties allowed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from salbench.tables import metric_descriptor

MIN_METHODS = 3


def ranked_metrics(board: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """The ``candidates`` that rank (have a direction) and have values in ``board``."""
    out = []
    for name in candidates:
        if name in board.columns and board[name].notna().any() and metric_descriptor(name).direction is not None:
            out.append(name)
    return out


def metric_agreement(board: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Long table: source_model, metric_a, metric_b (a before b in ``metrics``), tau, p_value, methods."""
    rows = []
    b = board[board["images"] > 0] if "images" in board.columns else board
    if "control" in b.columns:
        b = b[~b["control"].fillna(False).astype(bool)]
    for src, part in b.groupby("source_model", sort=False):
        signed = {m: part[m].to_numpy(dtype=np.float64) * (-1.0 if metric_descriptor(m).direction == "lower" else 1.0) for m in metrics}
        for i, ma in enumerate(metrics):
            for mb in metrics[i + 1:]:
                ok = ~np.isnan(signed[ma]) & ~np.isnan(signed[mb])
                tau = p = math.nan
                if ok.sum() >= MIN_METHODS:
                    res = kendalltau(signed[ma][ok], signed[mb][ok])
                    tau, p = float(res.statistic), float(res.pvalue)
                rows.append({"source_model": str(src), "metric_a": ma, "metric_b": mb, "tau": tau, "p_value": p, "methods": int(ok.sum())})
    return pd.DataFrame(rows, columns=["source_model", "metric_a", "metric_b", "tau", "p_value", "methods"])


def agreement_matrix(agreement: pd.DataFrame, source_model: str, metrics: Sequence[str]) -> np.ndarray:
    """Symmetric tau matrix of one source classifier (1 on the diagonal), in ``metrics`` order."""
    k = {m: i for i, m in enumerate(metrics)}
    mat = np.full((len(metrics), len(metrics)), np.nan)
    np.fill_diagonal(mat, 1.0)
    for r in agreement[agreement["source_model"] == source_model].itertuples():
        if r.metric_a in k and r.metric_b in k:
            mat[k[r.metric_a], k[r.metric_b]] = mat[k[r.metric_b], k[r.metric_a]] = r.tau
    return mat
