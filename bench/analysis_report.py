"""The report's sanity, metric-agreement and quality-vs-cost sections (tables, figures, text).

Built from the groups and leaderboards ``salbench.report`` computed (reports only read files):

* ``sanity``: mean similarity per (source, method, test, depth) (``salbench.sanity_report``) and a
  figure of similarity against randomised depth;
* ``agreement``: per source classifier, the Kendall tau matrix of the method rankings of every
  pair of ranked leaderboard metrics (``salbench.agreement``), as tables and a heat map;
* ``quality_cost``: each method's score on ``cost_metric`` against its images/s, Pareto front
  marked (``salbench.quality_cost``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from salbench import figures as F
from salbench.agreement import agreement_matrix, metric_agreement, ranked_metrics
from salbench.errors import UsageError
from salbench.quality_cost import DEFAULT_COST_METRIC, quality_cost_frame
from salbench.render import Col, Table
from salbench.sanity_report import sanity_by_depth
from salbench.tables import Group, metric_descriptor

ANALYSIS_TABLES = ("sanity", "agreement", "quality_cost")


@dataclass
class Analysis:
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)  # name -> matplotlib figure
    captions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_throughput(path: str | Path) -> pd.DataFrame:
    """A ``throughput.parquet`` file, or a folder holding one (``salbench report --throughput``)."""
    from salbench.throughput_table import THROUGHPUT_FILE, read_throughput

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if not (folder / THROUGHPUT_FILE).is_file() or (not p.is_dir() and p.name != THROUGHPUT_FILE):
        raise UsageError(f"--throughput {str(path)!r}: expected a {THROUGHPUT_FILE} file (or a folder holding one) written by `salbench throughput`")
    return read_throughput(folder).to_pandas()


def build_analysis(groups: Sequence[Group], boards: Sequence[pd.DataFrame], shown: Sequence[Sequence[str]],
                   cost_metric: str = DEFAULT_COST_METRIC) -> Analysis:
    """``shown``: per board, the metrics its leaderboard shows (the agreement compares those that rank)."""
    info = metric_descriptor(cost_metric)
    out = Analysis()
    san_blocks, agr_blocks, qc_blocks = [], [], []
    metrics_seen: list[str] = []
    speed_from = set()
    for g, board, names in zip(groups, boards, shown):
        sfx = "" if g.index == 1 else f"-p{g.index}"
        label = g.label if len(groups) > 1 else ""
        san = sanity_by_depth(g)
        if len(board) and "method" in board.columns:
            san = san[san["method"].isin(set(board["method"].astype(str)))]
        if len(san):
            san_blocks.append((label, san))
            out.figures[f"sanity{sfx}"] = F.sanity_figure(san)
        if len(board):
            metrics = ranked_metrics(board, [n for n in dict.fromkeys(names) if n != "images_per_s"])
            agr = metric_agreement(board, metrics)
            if len(agr) and agr["tau"].notna().any():
                for src in dict.fromkeys(agr["source_model"]):
                    mat = agreement_matrix(agr, src, metrics)
                    df = pd.DataFrame(mat, columns=metrics)
                    df.insert(0, "metric", metrics)
                    agr_blocks.append(((label + " · " if label else "") + f"source {src}", df))
                metrics_seen += [m for m in metrics if m not in metrics_seen]
                out.figures[f"agreement{sfx}"] = F.agreement_figure(agr, metrics, agreement_matrix)
            qc, where = quality_cost_frame(g, board, cost_metric)
            if len(qc):
                qc_blocks.append((label, qc.assign(pareto=qc["pareto"].map({True: "yes", False: ""}))))
                speed_from.add(where)
                out.figures[f"quality_cost{sfx}"] = F.quality_cost_figure(qc, cost_metric, f"{info.header or cost_metric} {info.arrow}", where)
            elif cost_metric not in board.columns:
                out.notes.append(f"quality-vs-cost figure not drawn: the leaderboard has no {cost_metric!r} column (report option --cost-metric)")
    sims = [Col(c, c, c, 2) for c in ("spearman", "ssim", "hog")]
    out.tables["sanity"] = Table(
        "sanity", "Sanity checks (Adebayo et al. 2018)",
        "Mean similarity of each recomputed map to the original, over the sanity images: MPRT with the top *depth* layer groups of the "
        "source classifier re-initialised (cascading from the head; *layers*: the deepest group randomised; depth = groups: the whole "
        "network), and random-logit (the map of a random other class). Spearman of |map|, SSIM, Pearson correlation of HOG features. "
        "Lower = the map depends on the model / class = passes; controls and trained maskers do not read the classifier and stay at 1.",
        [Col("source_model", "source", kind="text"), Col("method", "method", kind="text"), Col("test", "test", kind="text"),
         Col("depth", "depth", digits=0), Col("groups", "groups", digits=0), Col("layers", "layers", kind="text"), *sims, Col("images", "images", digits=0)],
        san_blocks, group_by=None, mark_best=False)
    out.tables["agreement"] = Table(
        "agreement", "Metric agreement (Kendall τ of method rankings)",
        "Per source classifier, Kendall's τ-b between the rankings of the non-control methods by each pair of leaderboard metrics, "
        "direction-aware (1: same order best to worst, −1: reversed; – where fewer than 3 methods have both).",
        [Col("metric", "metric", kind="text"), *(Col(m, m, None, 2) for m in metrics_seen)], agr_blocks, group_by=None, mark_best=False)
    where = " and ".join(sorted(speed_from)) or "none"
    out.tables["quality_cost"] = Table(
        "quality_cost", f"Quality vs cost: {cost_metric} against images/s",
        f"Score on {cost_metric} ({info.direction or 'no direction'} is better) against images/s of computing the maps (from the {where}); "
        "*pareto*: no other non-control method on the same source is both at least as fast and at least as good.",
        [Col("source_model", "source", kind="text"), Col("method", "method", kind="text"), Col("score", cost_metric, cost_metric, info.digits),
         Col("images_per_s", "images/s", "images_per_s", 1), Col("pareto", "pareto", kind="text")], qc_blocks, group_by=None, mark_best=False)
    out.captions = {
        "sanity": "Sanity checks (MPRT): similarity of each map to the original as the source classifier is randomised from the top layer group down; lower passes.",
        "agreement": "Metric agreement: Kendall τ between the method rankings of each pair of leaderboard metrics, per source classifier.",
        "quality_cost": f"Quality vs cost: {cost_metric} against images/s (from the {where}); red: Pareto front of the non-control methods; grey squares: controls.",
    }
    out.figures = {k: v for k, v in out.figures.items() if v is not None}
    return out


def analysis_markdown(an: Analysis) -> str:
    """The agreement matrices and where the sanity / quality-vs-cost tables are (leaderboard.md)."""
    parts = []
    t = an.tables.get("agreement")
    if t is not None and not t.empty():
        parts.append(t.to_markdown(level=2))
    for name in ("sanity", "quality_cost"):
        t = an.tables.get(name)
        if t is not None and not t.empty():
            parts.append(f"## {t.title}\n\n{t.caption}\n\nSee [tables/{name}.md](tables/{name}.md).\n")
    return "\n".join(parts)
