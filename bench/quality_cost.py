"""Quality against cost: each method's score on one metric against its images/s, Pareto front marked.

Images/s come from a throughput table (``salbench throughput`` writes ``throughput.parquet``: in
the run directory, or passed to ``salbench report --throughput PATH``) when it measured the
method on that classifier; otherwise from the run's own stage clock (``run.json`` ``timing``: the
seconds spent on each (method, source) pair's maps, map-cache loads included, over the run's
images), which includes no warm-up and shares the machine with the rest of the run: the figure
says which.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from salbench.tables import Group, metric_descriptor

DEFAULT_COST_METRIC = "f1"


def run_map_speed(group: Group) -> pd.DataFrame:
    """images/s per (method, source_model) from the runs' stage clock (``run.json`` ``timing``:
    seconds under ``maps/<method>/<source>``) and their image count; later runs win."""
    speed: dict[tuple[str, str], float] = {}
    for r in group.runs:
        n = int((r.meta.get("counts") or {}).get("images", 0))
        for key, sec in ((r.meta.get("timing") or {}).get("seconds") or {}).items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "maps" and float(sec) > 0 and n > 0:
                speed[(parts[1], parts[2])] = n / float(sec)
    return pd.DataFrame([{"method": m, "source_model": s, "images_per_s": v} for (m, s), v in speed.items()],
                        columns=["method", "source_model", "images_per_s"])


def pareto_front(score: np.ndarray, speed: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Bool mask of the points no other point beats on both score and speed (ties on both kept)."""
    s = np.asarray(score, dtype=np.float64) * (1.0 if higher_is_better else -1.0)
    v = np.asarray(speed, dtype=np.float64)
    front = np.zeros(len(s), dtype=bool)
    for i in range(len(s)):
        if np.isnan(s[i]) or np.isnan(v[i]):
            continue
        dominated = (s >= s[i]) & (v >= v[i]) & ((s > s[i]) | (v > v[i]))
        front[i] = not dominated.any()
    return front


def quality_cost_frame(group: Group, board: pd.DataFrame, metric: str = DEFAULT_COST_METRIC) -> tuple[pd.DataFrame, str]:
    """(rows: method, source_model, family, control, score, images_per_s, pareto; the speed's source).

    The throughput table's images/s where the board has them for a pair, else the run's map timing.
    """
    info = metric_descriptor(metric)
    cols = ["method", "source_model", "family", "control", "score", "images_per_s", "pareto"]
    b = board[board["images"] > 0] if "images" in board.columns else board
    if metric not in b.columns or b.empty:
        return pd.DataFrame(columns=cols), "none"
    f = pd.DataFrame({"method": b["method"].astype(str), "source_model": b["source_model"].astype(str),
                      "family": b.get("family", ""), "control": b.get("control", False), "score": b[metric].astype(float)})
    measured = "images_per_s" in b.columns and b["images_per_s"].notna().any()
    if measured:
        f["images_per_s"] = b["images_per_s"].astype(float).to_numpy()
        where = "throughput table"
    else:
        f = f.merge(run_map_speed(group), on=["method", "source_model"], how="left")
        # a classifier-independent method's maps are computed once, timed under one source only
        per_method = f.groupby("method")["images_per_s"].transform("max")
        f["images_per_s"] = f["images_per_s"].where(f["images_per_s"].notna() | ~f["method"].map(_independent), per_method)
        where = "run map timing"
    f = f[np.isfinite(f["images_per_s"].to_numpy(dtype=np.float64)) & f["score"].notna()].reset_index(drop=True)
    f["pareto"] = False
    candidates = f[~f["control"].fillna(False).astype(bool)]  # controls are reference points, not candidates
    for _, idx in candidates.groupby("source_model", sort=False).groups.items():
        f.loc[idx, "pareto"] = pareto_front(f.loc[idx, "score"].to_numpy(), f.loc[idx, "images_per_s"].to_numpy(), info.direction != "lower")
    return f[cols], where


def _independent(method: str) -> bool:
    try:
        from salbench.methods import METHODS

        return not METHODS.get(method).capabilities.classifier_dependent
    except Exception:  # not registered in this install: never borrow another source's timing
        return False
