"""The paper's tables and figure data, as views of the leaderboard (CASM, Zolna et al.).

``table1`` (OM / LE / F1), ``mask_stats``, ``table2`` (CASM ablation: score, encoder sharing,
thinning, read from run.json method configs), ``table3`` (LE on seen vs unseen classes) and
``figure3_frame`` (top-1 per eval classifier and image variant).

Tables 1-3 are the CASM paper's, so their OM / LE / F1 are the official CASM scoring
(``casm_om`` / ``casm_le`` / ``casm_f1``, ``salbench.metrics.casm_protocol``) whenever the runs
hold those columns; runs recorded before they existed fall back to salbench's ``mean_area``
protocol (``om`` / ``le`` / ``f1``, what the leaderboard shows). The caption says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from salbench.render import Col, Table
from salbench.tables import Group, _loc_ok, _measured_rows, _scale, summarize
from salbench.util import parse_classes

def _blocks(boards: Sequence[tuple[Group, pd.DataFrame]], select) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for g, b in boards:
        rows = select(g, b)
        if rows is not None and len(rows):
            out.append((f"protocol {g.index}: {g.label}", rows.reset_index(drop=True)))
    return out


#: The official CASM scoring's column for each of salbench's ``mean_area`` columns.
CASM_COLUMNS = {"om": "casm_om", "le": "casm_le", "f1": "casm_f1"}
CASM_SCORING = ("scored as the official CASM code scores each image (casm_* columns: kth-value threshold with ties dropped, "
                "strict IoU > 0.5, GT box areas not clipped to the crop; README, Metrics); the leaderboard keeps salbench's mean_area protocol")
MEAN_AREA_SCORING = ("scored with salbench's mean_area protocol (le / om / f1 columns, as in the leaderboard), not the official CASM "
                     "scoring: these runs have no casm_* columns (recorded before they existed)")


def _casm_state(frames: Sequence[pd.DataFrame]) -> str:
    """'all' / 'some' / 'none': how many of the rows hold the official CASM scoring's values."""
    rows = [f for f in frames if len(f)]
    have = [f["casm_le"].notna().to_numpy() if "casm_le" in f.columns else np.zeros(len(f), dtype=bool) for f in rows]
    if not have or not any(h.any() for h in have):
        return "none"
    return "all" if all(h.all() for h in have) else "some"


def _scoring(state: str) -> tuple[dict[str, str], str]:
    """(metric name -> column to show, caption sentence) for the paper tables."""
    if state == "none":
        return {m: m for m in CASM_COLUMNS}, MEAN_AREA_SCORING
    note = "" if state == "all" else "; rows without values come from runs recorded before the casm_* columns existed"
    return dict(CASM_COLUMNS), CASM_SCORING + note


def table1(boards: Sequence[tuple[Group, pd.DataFrame]]) -> Table:
    blocks = _blocks(boards, lambda g, b: _measured_rows(b))
    use, scoring = _scoring(_casm_state([b for _, b in blocks]))
    cols = [Col("method", "Method", kind="text"), Col("source_model", "Source", kind="text"),
            Col(use["om"], "OM (%)", use["om"], ci=True), Col(use["le"], "LE (%)", use["le"], ci=True), Col(use["f1"], "F1 (%)", use["f1"], ci=True)]
    return Table("table1", "Table 1: localisation", "Official ImageNet metric (OM), localisation error (LE) and continuous F1, "
                 f"percent over images, {scoring}; controls: centre, full, random.", cols, blocks)


def mask_stats(boards: Sequence[tuple[Group, pd.DataFrame]]) -> Table:
    cols = [Col("method", "Method", kind="text"), Col("source_model", "Source", kind="text"), Col("area", "Area", "area", 3),
            Col("area_std", "Area std", "area_std", 3), Col("tv", "TV", "tv", 4), Col("entropy", "Entropy", "entropy", 4)]
    return Table("mask_stats", "Mask statistics", "Mean mask value (area), its std across images, total variation and mask entropy.",
                 cols, _blocks(boards, lambda g, b: _measured_rows(b)), mark_best=False)


CASM_FIELDS = ("score", "share_encoder", "thinning")


def _sharing(v: Any) -> str:
    if isinstance(v, bool):
        return "shared" if v else "separate"
    return "" if v is None else str(v)


def table2(boards: Sequence[tuple[Group, pd.DataFrame]]) -> Table:
    """CASM ablation: score function, encoder sharing, thinning (from run.json method configs)."""

    def select(g: Group, b: pd.DataFrame):
        b = _measured_rows(b)
        keep = []
        for i, row in b.iterrows():
            p = g.method_params(row["method"])
            if any(k in p for k in CASM_FIELDS):
                keep.append((i, p))
        if not keep:
            return None
        rows = b.loc[[i for i, _ in keep]].copy()
        rows["score"] = [str(p.get("score", "")) for _, p in keep]
        rows["sharing"] = [_sharing(p.get("share_encoder")) for _, p in keep]
        rows["thinning"] = [str(p.get("thinning", "")) for _, p in keep]
        return rows

    blocks = _blocks(boards, select)
    use, scoring = _scoring(_casm_state([b for _, b in blocks]))
    cols = [Col("method", "Masker", kind="text"), Col("score", "Score", kind="text"), Col("sharing", "Encoder", kind="text"),
            Col("thinning", "Thinning", kind="text"), Col("source_model", "Source", kind="text"),
            Col(use["om"], "OM (%)", use["om"], ci=True), Col(use["le"], "LE (%)", use["le"], ci=True), Col(use["f1"], "F1 (%)", use["f1"], ci=True)]
    return Table("table2", "Table 2: CASM ablation", "CASM maskers by score function (entropy / classification), encoder sharing "
                 f"and classifier-pool thinning (F, L, FL, L100, L1000); OM, LE and F1 {scoring}.", cols, blocks)


def table3_frame(group: Group, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 metrics: tuple[str, str] = ("le", "om")) -> pd.DataFrame:
    """LE/OM on images whose label is in the masker's training classes (seen) vs not (unseen).

    ``metrics``: the (LE, OM) columns, ``("le", "om")`` (mean_area) or ``("casm_le", "casm_om")``;
    the frame's value columns are ``<metric>_seen`` / ``<metric>_unseen`` (with ``_lo``/``_hi``).
    """
    loc = _loc_ok(group)
    parts = []
    for method in sorted({str(m) for m in loc["method"].unique()}):
        classes = parse_classes(group.method_params(method).get("train_classes"))
        if not classes:
            continue
        sub = loc[loc["method"] == method]
        seen = np.isin(sub["label"].to_numpy(), sorted(classes))
        parts.append(sub.assign(split=np.where(seen, "seen", "unseen"), n_train_classes=len(classes)))
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    df["method"] = df["method"].astype(str)
    df["source_model"] = df["source_model"].astype(str)
    metrics = tuple(metrics)
    s = summarize(df, ["method", "source_model", "n_train_classes", "split"], metrics, n_boot=n_boot, alpha=alpha, seed=seed, ci=metrics)
    for m in metrics:
        _scale(s, m, True)
    rows = []
    for (method, src, ncls), part in s.groupby(["method", "source_model", "n_train_classes"], sort=False):
        row: dict[str, Any] = {"method": method, "source_model": src, "train_classes": int(ncls), "control": False}
        for _, r in part.iterrows():
            sp = r["split"]
            row[f"images_{sp}"] = int(r[f"{metrics[0]}_n"])
            for m in metrics:
                row[f"{m}_{sp}"], row[f"{m}_{sp}_lo"], row[f"{m}_{sp}_hi"] = r[m], r[f"{m}_lo"], r[f"{m}_hi"]
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(group.models)}
    out["_o"] = [order.get(s, len(order)) for s in out["source_model"]]
    return out.sort_values(["_o", "method"]).drop(columns="_o").reset_index(drop=True)


def table3(groups: Sequence[Group], *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> Table:
    use, scoring = _scoring(_casm_state([_loc_ok(g) for g in groups]))
    le, om = use["le"], use["om"]
    blocks = []
    for g in groups:
        f = table3_frame(g, n_boot=n_boot, alpha=alpha, seed=seed, metrics=(le, om))
        if len(f):
            blocks.append((f"protocol {g.index}: {g.label}", f))
    cols = [Col("method", "Masker", kind="text"), Col("source_model", "Source", kind="text"), Col("train_classes", "Train classes", digits=0),
            Col(f"{le}_seen", "LE seen (%)", le, ci=True), Col("images_seen", "n seen", digits=0),
            Col(f"{le}_unseen", "LE unseen (%)", le, ci=True), Col("images_unseen", "n unseen", digits=0),
            Col(f"{om}_seen", "OM seen (%)", om), Col(f"{om}_unseen", "OM unseen (%)", om)]
    return Table("table3", "Table 3: seen vs unseen classes", "Localisation error on images whose label is among the masker's "
                 f"training classes (seen) and on the others (unseen), {scoring}.", cols, blocks, mark_best=False)


def figure3_frame(group: Group) -> pd.DataFrame:
    """Top-1 (%) of each eval classifier on each variant, per method, over masks from source
    classifiers other than the eval classifier (all sources when it is the only one)."""
    a = group.agn
    a = a[a["error"].isna()]
    if a.empty:
        return pd.DataFrame(columns=["eval_model", "method", "variant", "top1", "cross"])
    m = a.groupby(["eval_model", "method", "source_model", "variant"], observed=True)["top1"].mean().reset_index()
    for c in ("eval_model", "method", "source_model", "variant"):
        m[c] = m[c].astype(str)
    m["is_cross"] = m["eval_model"] != m["source_model"]
    has_cross = m.groupby(["eval_model", "method"])["is_cross"].transform("any")
    m = m[m["is_cross"] | ~has_cross]
    f = m.groupby(["eval_model", "method", "variant"], sort=False).agg(top1=("top1", "mean"), cross=("is_cross", "all")).reset_index()
    f["top1"] *= 100
    return f
