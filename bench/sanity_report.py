"""The sanity checks' view for the report: mean similarity per (source, method, test, depth).

Read from the ``sanity`` table alone (``Group.sanity``). MPRT rows go from the top layer group
(depth 1) to the whole network (depth = groups); random-logit rows have no depth.
"""

from __future__ import annotations

import pandas as pd

from salbench.metrics.base import metric_columns
from salbench.tables import Group, method_family

KEYS = ["source_model", "method", "test", "depth", "groups", "layers"]


def sanity_by_depth(group: Group) -> pd.DataFrame:
    """One row per (source, method, test, depth): mean of each sanity column over images, ``images``."""
    df = group.sanity
    cols = [c.column for c in metric_columns("sanity")]
    if df is None or df.empty:
        return pd.DataFrame(columns=[*KEYS, *cols, "images", "family", "control"])
    df = df[df["error"].isna()].copy()
    df["depth"] = df["depth"].fillna(-1).astype(int)
    df["groups"] = df["groups"].fillna(-1).astype(int)
    df["layers"] = df["layers"].fillna("")
    g = df.groupby(KEYS, observed=True, sort=False)
    out = g[cols].mean().join(g.size().rename("images")).reset_index()
    out["depth"] = out["depth"].astype(float).where(out["depth"] >= 0)
    out["groups"] = out["groups"].astype(float).where(out["groups"] >= 0)
    order = {m: i for i, m in enumerate(group.models)}
    out["_s"] = out["source_model"].map(lambda s: order.get(s, len(order)))
    out["_t"] = (out["test"] != "mprt").astype(int)
    out = out.sort_values(["_s", "method", "_t", "depth"], na_position="last").drop(columns=["_s", "_t"]).reset_index(drop=True)
    out["family"] = [method_family(m) for m in out["method"]]
    out["control"] = out["family"] == "control"
    return out
