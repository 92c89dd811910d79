"""Leaderboard computed from the Parquet tables alone (never typed by hand).

One row per (method, source classifier): LE, OM, F1 (percent over images), and top-1 of the eval
classifiers on masked-in / masked-out / inpainted images. Agnosticism columns average over the
eval classifiers *other than* the source (cross-classifier), with the source's own value (self)
beside them. Arrows come from the metric descriptors in ``salbench.metrics.METRICS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from salbench.metrics import METRICS
from salbench.results import atomic_write_bytes, read_run_json, read_table


def _arrow(metric: str) -> str:
    d = METRICS[metric].direction
    return {"lower": " ↓", "higher": " ↑"}.get(d or "", "")


def leaderboard_frame(run_dirs: list[Path]) -> pd.DataFrame:
    """The leaderboard as a DataFrame (values in percent where the metric is a percentage)."""
    rows = []
    for run_dir in run_dirs:
        meta = read_run_json(run_dir)
        loc = read_table(run_dir, "localization")
        agn = read_table(run_dir, "agnosticism")
        ok_loc = loc[loc["error"].isna()]
        ok_agn = agn[agn["error"].isna()]
        for (method, src), g in ok_loc.groupby(["method", "source_model"], sort=False):
            row = {
                "method": method,
                "source_model": src,
                "images": len(g),
                "le": 100 * g["le"].mean(),
                "om": 100 * g["om"].mean(),
                "f1": 100 * g["f1"].mean(),
                "area": g["area"].mean(),
                "errors": int(loc[(loc["method"] == method) & (loc["source_model"] == src)]["error"].notna().sum()),
            }
            a = ok_agn[(ok_agn["method"] == method) & (ok_agn["source_model"] == src)]
            per_eval = a.groupby(["variant", "eval_model"])["top1"].mean().mul(100)
            for variant in ("original", "masked_in", "masked_out", "inpainted"):
                if variant not in per_eval.index.get_level_values(0):
                    continue
                v = per_eval.loc[variant]
                cross = v[v.index != src]
                row[f"{variant}_top1"] = cross.mean() if len(cross) else np.nan
                row[f"{variant}_top1_self"] = v.get(src, np.nan)
            row["run_id"] = meta["run_id"]
            rows.append(row)
        for na in meta.get("not_applicable", []):
            rows.append({"method": na["method"], "source_model": na["model"], "images": 0, "note": f"n/a: {na['reason']}", "run_id": meta["run_id"]})
    return pd.DataFrame(rows)


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def leaderboard_markdown(df: pd.DataFrame, title: str = "salbench leaderboard") -> str:
    cols = [
        ("method", "method", None),
        ("source_model", "source", None),
        ("le", "LE %", "le"),
        ("om", "OM %", "om"),
        ("f1", "F1 %", "f1"),
        ("masked_in_top1", "masked-in top-1 %", "masked_in_top1"),
        ("masked_in_top1_self", "(self)", None),
        ("masked_out_top1", "masked-out top-1 %", "masked_out_top1"),
        ("masked_out_top1_self", "(self)", None),
        ("inpainted_top1", "inpainted top-1 %", "inpainted_top1"),
        ("inpainted_top1_self", "(self)", None),
        ("area", "area", None),
        ("images", "images", None),
    ]
    lines = [f"# {title}", "", "Agnosticism columns: mean over eval classifiers other than the source (self: the source itself).", ""]
    lines.append("| " + " | ".join(h + (_arrow(m) if m else "") for _, h, m in cols) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|")
    if not df.empty:
        df = df.sort_values(["source_model", "le"], na_position="last")
        for _, row in df.iterrows():
            if isinstance(row.get("note"), str):
                cells = [row["method"], row["source_model"], row["note"]] + [""] * (len(cols) - 3)
            else:
                cells = [row[k] if k in ("method", "source_model") else _fmt(row.get(k), 3 if k == "area" else 1) for k, _, _ in cols]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(run_dirs: list[Path], out_dir: Path) -> Path:
    df = leaderboard_frame([Path(d) for d in run_dirs])
    out = Path(out_dir) / "leaderboard.md"
    atomic_write_bytes(out, leaderboard_markdown(df).encode())
    atomic_write_bytes(Path(out_dir) / "leaderboard.json", json.dumps(df.replace({np.nan: None}).to_dict(orient="records"), indent=1).encode())
    return out
