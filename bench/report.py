"""Reports computed from the Parquet tables alone (never typed by hand).

Entry points:

* ``write_report(run_dirs, out_dir, ...)``: the whole report (what ``salbench report`` runs)::

      <out>/leaderboard.md, leaderboard.html, leaderboard.json
      <out>/tables/table1.{md,tex,csv}      OM, LE, F1 per method
      <out>/tables/mask_stats.{md,tex,csv}  area, its std across images, TV, entropy
      <out>/tables/table2.{md,tex,csv}      CASM ablation (only when the runs hold CASM maskers)
      <out>/tables/table3.{md,tex,csv}      seen vs unseen classes (only with a trained class subset)
      <out>/tables/paired.{md,csv}          paired comparisons (with ``paired=``)
      <out>/figures/figure3.{png,pdf}       CASM Figure 3: top-1 per eval classifier and variant
      <out>/figures/curves.png              mean deletion / insertion curves per method (where stored)
      <out>/figures/qualitative.png         images, maps, masked-in/out, inpainted (stored by the run)

  Every file is written atomically. Runs with different protocols get one section (and a
  ``-p<k>`` figure suffix) each; ``strict=True`` refuses them instead.
* ``write_leaderboard(run_dirs, out_dir)``: the same without the qualitative figure. Returns
  leaderboard.md.
* ``leaderboard_frame(run_dirs)``: the leaderboard as a DataFrame.
* ``paired_difference(run_dirs, a, b, metric, source_model=None)``: see ``salbench.tables``.

Leaderboard: one row per (method, source classifier): LE, OM, F1 (percent over images), top-1
of the eval classifiers on masked-in / masked-out / inpainted images, cross-classifier (per
image, mean over the eval classifiers other than the source; then over images) with the
source's own value (self) beside, mask area, images/s when a throughput table exists. 95%
percentile-bootstrap intervals over images; arrows and best-marking from ``METRICS``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salbench import figures as F
from salbench.analysis_report import ANALYSIS_TABLES, Analysis, analysis_markdown, build_analysis, load_throughput
from salbench.errors import UsageError
from salbench.examples import EXAMPLE_COUNT
from salbench.html_report import Page, esc, table_html
from salbench.metrics.base import SHOWN_VARIANTS, localization_summaries, sanity_summaries, variant_scores, variant_summary
from salbench.paper import mask_stats, table1, table2, table3
from salbench.quality_cost import DEFAULT_COST_METRIC
from salbench.render import Col, Table, md_escape
from salbench.results import atomic_write_bytes
from salbench.tables import (
    Group,
    leaderboard,
    load_groups,
    paired_difference,  # noqa: F401  (re-exported: salbench.report.paired_difference)
    paired_from_groups,
)

DEFAULT_PAIRED_METRICS = ("le", "om", "f1", "masked_in_top1", "masked_out_top1", "inpainted_top1")
PAPER_TABLES = ("table1", "mask_stats", "table2", "table3")


def leaderboard_columns(board: pd.DataFrame) -> list[Col]:
    """The leaderboard's columns, from the metric registry: every localization summary marked
    ``leaderboard``, then per shown variant every agnosticism score marked ``leaderboard`` (with
    the source classifier's own value beside it), then images/s when measured."""
    cols = [Col("method", "method", kind="text"), Col("family", "family", kind="text"), Col("source_model", "source", kind="text"),
            Col("images", "images", digits=0)]
    for c in localization_summaries():
        if c.leaderboard:
            cols.append(Col(c.name, c.header or c.name, c.name, c.digits, ci=c.ci))
    for score in variant_scores():
        if score.leaderboard:
            for v in SHOWN_VARIANTS:
                info = variant_summary(score, v)
                cols += [Col(info.name, info.header, info.name, info.digits, ci=info.ci), Col(f"{info.name}_self", "self", None, info.digits)]
    for c in sanity_summaries():  # only when the runs hold sanity rows
        if c.leaderboard and c.name in board.columns and board[c.name].notna().any():
            cols.append(Col(c.name, c.header or c.name, c.name, c.digits, ci=c.ci))
    if "images_per_s" in board.columns and board["images_per_s"].notna().any():
        cols.append(Col("images_per_s", "images/s", "images_per_s", 1))
    cols.append(Col("note", "note", kind="text"))
    return cols


def leaderboard_table(group: Group, board: pd.DataFrame) -> Table:
    return Table("leaderboard", "Leaderboard", "", leaderboard_columns(board), [(group.label, board)])


def leaderboard_frame(run_dirs: Sequence[str | Path], *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, strict: bool = False) -> pd.DataFrame:
    """All groups' leaderboards in one DataFrame (column ``protocol`` numbers the group)."""
    groups = load_groups(run_dirs, strict=strict)
    boards = [leaderboard(g, n_boot=n_boot, alpha=alpha, seed=seed) for g in groups]
    return pd.concat(boards, ignore_index=True) if boards else pd.DataFrame()


def filter_methods(board: pd.DataFrame, patterns: Sequence[str] | None) -> pd.DataFrame:
    """Keep methods matching any pattern; control rows are always kept."""
    if not patterns or board.empty:
        return board
    keep = board["control"].astype(bool).to_numpy().copy()
    names = board["method"].astype(str).to_numpy()
    for p in patterns:
        keep |= np.array([fnmatch.fnmatchcase(n, p) for n in names])
    return board[keep].reset_index(drop=True)


@dataclass
class Report:
    groups: list[Group]
    boards: list[pd.DataFrame]
    tables: dict[str, Table] = field(default_factory=dict)
    paired: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    analysis: Analysis | None = None  # sanity, metric agreement, quality vs cost (salbench.analysis_report)


def build_report(run_dirs: Sequence[str | Path], *, methods: Sequence[str] | None = None, paired: Sequence[tuple[str, str]] = (),
                 paired_metrics: Sequence[str] = DEFAULT_PAIRED_METRICS, strict: bool = False, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0, cost_metric: str = DEFAULT_COST_METRIC, throughput: str | Path | None = None) -> Report:
    """Everything computed (no files written). ``throughput``: a throughput table whose images/s
    the leaderboard and the quality-vs-cost figure use in place of the runs' own."""
    t0 = time.perf_counter()
    groups = load_groups(run_dirs, strict=strict)
    if throughput is not None:
        measured = load_throughput(throughput)
        for g in groups:
            g.throughput = measured
    t1 = time.perf_counter()
    boards = [filter_methods(leaderboard(g, n_boot=n_boot, alpha=alpha, seed=seed), methods) for g in groups]
    t2 = time.perf_counter()
    rep = Report(groups, boards)
    pairs = list(zip(groups, boards))
    rep.tables = {"table1": table1(pairs), "mask_stats": mask_stats(pairs), "table2": table2(pairs),
                  "table3": table3(groups, n_boot=n_boot, alpha=alpha, seed=seed)}
    if paired:
        frames = [paired_from_groups(groups, a, b, m, n_boot=n_boot, alpha=alpha, seed=seed) for a, b in paired for m in paired_metrics]
        rep.paired = pd.concat(frames, ignore_index=True) if frames else None
    shown = [[c.metric for c in leaderboard_columns(b) if c.metric] for b in boards]
    rep.analysis = build_analysis(groups, boards, shown, cost_metric)
    rep.notes += rep.analysis.notes
    for g in groups:
        rep.notes += [f"protocol {g.index}: {n}" for n in g.notes] if len(groups) > 1 else list(g.notes)
    rep.timings = {"load_s": t1 - t0, "leaderboard_s": t2 - t1, "tables_s": time.perf_counter() - t2}
    return rep


# ----------------------------------------------------------------------------- Markdown
def _runs_line(group: Group) -> str:
    return ", ".join(f"{md_escape(r.run_id)} ({md_escape(r.path)})" for r in group.runs)


def _explain(n_boot: int, alpha: float) -> str:
    return (f"Percent over images; in parentheses the {100 * (1 - alpha):.0f}% bootstrap interval over images ({n_boot} resamples). "
            "Top-1 columns: mean over eval classifiers *other than* the source classifier (per image, then over images); "
            "*self*: the source classifier itself. ↓/↑: lower/higher is better; **bold**: best non-control method per source. "
            "Controls (family `control`): centre, full, random.")


def paired_markdown(df: pd.DataFrame, alpha: float = 0.05) -> str:
    lines = ["## Paired comparisons", "",
             f"Difference a − b on the same images, with its {100 * (1 - alpha):.0f}% bootstrap interval over images; "
             "*significant* when the interval excludes 0.", "",
             "| protocol | source | metric | a | b | images | mean a | mean b | a − b (interval) | verdict |",
             "|---:|---|---|---|---|---:|---:|---:|---:|---|"]
    for _, r in df.iterrows():
        verdict = f"{r['better']} better" if r["significant"] and r["better"] else ("significant" if r["significant"] else "not significant")
        lines.append(f"| {r['protocol']} | {r['source_model']} | {r['metric']} | {r['method_a']} | {r['method_b']} | {r['images']} | "
                     f"{r['a']:.2f} | {r['b']:.2f} | {r['diff']:+.2f} ({r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}) | {verdict} |")
    return "\n".join(lines) + "\n"


def leaderboard_markdown(rep: Report, *, n_boot: int = 1000, alpha: float = 0.05, files: dict[str, str] | None = None) -> str:
    out = ["# salbench leaderboard", "", _explain(n_boot, alpha), ""]
    for g, board in zip(rep.groups, rep.boards):
        if len(rep.groups) > 1:
            out += [f"## Protocol {g.index}", ""]
        out += [f"Protocol: {md_escape(g.label)}  ", f"Runs: {_runs_line(g)}", ""]
        if board.empty:
            out += ["(no rows)", ""]
            continue
        t = leaderboard_table(g, board)
        md = t.to_markdown()
        out += md.split("\n")[4:]  # drop the Table's own title/caption
    if rep.paired is not None and len(rep.paired):
        out += [paired_markdown(rep.paired, alpha)]
    if rep.analysis is not None:
        out += [analysis_markdown(rep.analysis)]
    if rep.notes:
        out += ["## Notes", ""] + [f"- {md_escape(n)}" for n in rep.notes] + [""]
    if files:
        out += ["## Files", ""] + [f"- [{k}]({v})" for k, v in files.items()] + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- HTML
def leaderboard_html(rep: Report, figures: dict[str, bytes], *, n_boot: int = 1000, alpha: float = 0.05, fig_notes: Sequence[str] = ()) -> str:
    page = Page("salbench leaderboard")
    page.h(1, "salbench leaderboard")
    page.p(_explain(n_boot, alpha).replace("*", "").replace("`", ""), "meta")

    def row_class(row) -> str:
        if isinstance(row.get("note"), str) and row.get("images", 0) == 0:
            return "na"
        return "control" if bool(row.get("control")) else ""

    for g, board in zip(rep.groups, rep.boards):
        page.h(2, f"Protocol {g.index}" if len(rep.groups) > 1 else "Leaderboard", f"protocol-{g.index}")
        page.p(f"Protocol: {g.label}", "meta")
        page.p("Runs: " + ", ".join(f"{r.run_id} ({r.path})" for r in g.runs), "meta")
        if board.empty:
            page.p("(no rows)")
        else:
            t = leaderboard_table(g, board)
            page.raw(table_html(t, board, row_class=row_class))
        for key, cap in ((f"figure3{_suffix(g, rep)}", "Figure 3: top-1 of each eval classifier on original, masked-in, masked-out and inpainted images, by method."),
                         (f"curves{_suffix(g, rep)}", "Deletion / insertion: mean target probability per step, by method (Petsiuk et al. 2018); in brackets the curves averaged."),
                         (f"qualitative{_suffix(g, rep)}", "Qualitative: seeded random images; per method the map, masked-in, masked-out and inpainted images.")):
            if key in figures:
                page.figure(figures[key], cap)
    if rep.paired is not None and len(rep.paired):
        page.h(2, "Paired comparisons", "paired")
        page.p(f"Difference a − b on the same images with its {100 * (1 - alpha):.0f}% bootstrap interval over images.")
        rows = ["<table class=\"sortable\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in ("protocol", "source", "metric", "a", "b", "images", "mean a", "mean b", "a − b", "interval", "verdict")) + "</tr></thead><tbody>"]
        for _, r in rep.paired.iterrows():
            sig = bool(r["significant"])
            verdict = f"{r['better']} better" if sig and r["better"] else ("significant" if sig else "not significant")
            cells = [(r["protocol"], r["protocol"]), (r["source_model"], r["source_model"]), (r["metric"], r["metric"]), (r["method_a"], r["method_a"]),
                     (r["method_b"], r["method_b"]), (r["images"], r["images"]), (r["a"], f"{r['a']:.2f}"), (r["b"], f"{r['b']:.2f}"),
                     (r["diff"], f"{r['diff']:+.2f}"), (r["diff_lo"], f"{r['diff_lo']:+.2f} … {r['diff_hi']:+.2f}")]
            rows.append("<tr>" + "".join(f'<td data-v="{esc(v)}">{esc(s)}</td>' for v, s in cells)
                        + f'<td data-v="{esc(verdict)}" class="{"sig" if sig else "nsig"}">{esc(verdict)}</td></tr>')
        rows.append("</tbody></table>")
        page.raw("".join(rows))
    an = rep.analysis
    if an is not None and any(not an.tables[n].empty() for n in ANALYSIS_TABLES):
        page.h(2, "Sanity checks, metric agreement, quality vs cost", "analysis")
        for name in ANALYSIS_TABLES:
            t = an.tables[name]
            if t.empty():
                continue
            page.h(3, t.title, f"table-{name}")
            page.p(t.caption)
            for label, df in t.blocks:
                if label:
                    page.p(label, "meta")
                page.raw(table_html(t, df, row_class=lambda r: "control" if bool(r.get("control")) else ""))
            for key, png in figures.items():
                if key == name or key.startswith(f"{name}-p"):
                    page.figure(png, an.captions.get(name, name))
    page.h(2, "Paper tables", "tables")
    for name in PAPER_TABLES:
        t = rep.tables.get(name)
        if t is None or t.empty():
            continue
        page.h(3, t.title, f"table-{name}")
        page.p(t.caption)
        for label, df in t.blocks:
            if len(t.blocks) > 1:
                page.p(label, "meta")
            page.raw(table_html(t, df, row_class=lambda r: "control" if bool(r.get("control")) else ""))
    notes = list(rep.notes) + list(fig_notes)
    if notes:
        page.h(2, "Notes", "notes")
        page.notes(notes)
    return page.render()


def _suffix(g: Group, rep: Report) -> str:
    return "" if g.index == 1 else f"-p{g.index}"


# ----------------------------------------------------------------------------- writing
def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


#: File name ``salbench visualize class-model --out RUN_DIR/class_models.png`` writes; the report links it.
CLASS_MODEL_PNG = "class_models.png"


def class_model_section(run_dirs: Sequence[str | Path], out: Path) -> str:
    """Markdown linking the class-model grids found in the run directories (nothing when none)."""
    found = [Path(d) / CLASS_MODEL_PNG for d in run_dirs if (Path(d) / CLASS_MODEL_PNG).is_file()]
    if not found:
        return ""
    rel = [os.path.relpath(p, out) for p in found]
    return "\n## Class-model visualisation\n\n" + "\n".join(f"![class models of {p.parent.name}]({r})" for p, r in zip(found, rel)) + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, qualitative: bool = True, qualitative_images: int = EXAMPLE_COUNT,
                 paired: Sequence[tuple[str, str]] = (), paired_metrics: Sequence[str] = DEFAULT_PAIRED_METRICS,
                 methods: Sequence[str] | None = None, strict: bool = False, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 figures: bool = True, cost_metric: str = DEFAULT_COST_METRIC, throughput: str | Path | None = None) -> dict[str, Any]:
    """Write the whole report under ``out_dir``; returns {"files": {name: Path}, "notes": [...], "timings": {...}}."""
    out = Path(out_dir)
    rep = build_report(run_dirs, methods=methods, paired=paired, paired_metrics=paired_metrics, strict=strict, n_boot=n_boot, alpha=alpha, seed=seed,
                       cost_metric=cost_metric, throughput=throughput)
    files: dict[str, Path] = {}
    t0 = time.perf_counter()
    # paper tables
    tdir = out / "tables"
    for name in PAPER_TABLES:
        t = rep.tables[name]
        if t.empty():
            if name in ("table2", "table3"):  # not held by these runs: drop stale files of an earlier report
                for ext in ("md", "tex", "csv"):
                    (tdir / f"{name}.{ext}").unlink(missing_ok=True)
            continue
        for ext, text in (("md", t.to_markdown(level=1)), ("tex", t.to_latex()), ("csv", t.to_csv())):
            _write_text(tdir / f"{name}.{ext}", text)
            files[f"tables/{name}.{ext}"] = tdir / f"{name}.{ext}"
    for name in ANALYSIS_TABLES:  # sanity, agreement, quality_cost: stale files of an earlier report dropped
        t = rep.analysis.tables[name]
        for ext, text in (("md", t.to_markdown(level=1)), ("tex", t.to_latex()), ("csv", t.to_csv())):
            if t.empty():
                (tdir / f"{name}.{ext}").unlink(missing_ok=True)
            else:
                _write_text(tdir / f"{name}.{ext}", text)
                files[f"tables/{name}.{ext}"] = tdir / f"{name}.{ext}"
    if rep.paired is not None and len(rep.paired):
        _write_text(tdir / "paired.md", paired_markdown(rep.paired, alpha))
        _write_text(tdir / "paired.csv", rep.paired.to_csv(index=False, float_format="%.6g"))
        files["tables/paired.md"], files["tables/paired.csv"] = tdir / "paired.md", tdir / "paired.csv"
    t1 = time.perf_counter()
    # figures
    figs: dict[str, bytes] = {}
    fig_notes: list[str] = []
    if figures:
        fdir = out / "figures"
        for g, board in zip(rep.groups, rep.boards):
            sfx = _suffix(g, rep)
            try:
                fig = F.figure3(g, board)
            except Exception as exc:  # a figure never takes the report (or the run that calls it) down
                fig, _ = None, fig_notes.append(f"figure 3 failed: {type(exc).__name__}: {exc}")
            if fig is not None:
                png, pdf = F.save_bytes(fig, "png"), F.save_bytes(fig, "pdf")
                F._plt().close(fig)
                atomic_write_bytes(fdir / f"figure3{sfx}.png", png)
                atomic_write_bytes(fdir / f"figure3{sfx}.pdf", pdf)
                files[f"figures/figure3{sfx}.png"], files[f"figures/figure3{sfx}.pdf"] = fdir / f"figure3{sfx}.png", fdir / f"figure3{sfx}.pdf"
                figs[f"figure3{sfx}"] = png
            try:  # deletion / insertion mean curves, where the run stored them
                fig = F.causal_curves(g, board)
            except Exception as exc:
                fig, _ = None, fig_notes.append(f"deletion/insertion curves failed: {type(exc).__name__}: {exc}")
            if fig is not None:
                png = F.save_bytes(fig, "png")
                F._plt().close(fig)
                atomic_write_bytes(fdir / f"curves{sfx}.png", png)
                files[f"figures/curves{sfx}.png"] = fdir / f"curves{sfx}.png"
                figs[f"curves{sfx}"] = png
            if qualitative:
                try:
                    png, notes = F.qualitative(g, board, n_images=qualitative_images)
                except Exception as exc:
                    png, notes = None, [f"qualitative figure failed: {type(exc).__name__}: {exc}"]
                fig_notes += notes
                if png is not None:
                    atomic_write_bytes(fdir / f"qualitative{sfx}.png", png)
                    files[f"figures/qualitative{sfx}.png"] = fdir / f"qualitative{sfx}.png"
                    figs[f"qualitative{sfx}"] = png
            else:
                fig_notes.append("qualitative figure not drawn: run `salbench report RUN_DIR` without --no-qualitative")
        for key, fig in rep.analysis.figures.items():  # sanity, agreement, quality_cost (per protocol)
            png, pdf = F.save_bytes(fig, "png"), F.save_bytes(fig, "pdf")
            F._plt().close(fig)
            for ext, data in (("png", png), ("pdf", pdf)):
                atomic_write_bytes(fdir / f"{key}.{ext}", data)
                files[f"figures/{key}.{ext}"] = fdir / f"{key}.{ext}"
            figs[key] = png
    t2 = time.perf_counter()
    links = {k: k for k in files}
    md = leaderboard_markdown(Report(rep.groups, rep.boards, rep.tables, rep.paired, rep.notes + fig_notes, analysis=rep.analysis), n_boot=n_boot, alpha=alpha, files=links)
    md += class_model_section(run_dirs, out)
    _write_text(out / "leaderboard.md", md)
    _write_text(out / "leaderboard.html", leaderboard_html(rep, figs, n_boot=n_boot, alpha=alpha, fig_notes=fig_notes))
    frame = pd.concat(rep.boards, ignore_index=True) if rep.boards else pd.DataFrame()
    records = json.loads(frame.to_json(orient="records", double_precision=10)) if len(frame) else []
    atomic_write_bytes(out / "leaderboard.json", (json.dumps(records, indent=1) + "\n").encode())
    files = {"leaderboard.md": out / "leaderboard.md", "leaderboard.html": out / "leaderboard.html", "leaderboard.json": out / "leaderboard.json", **files}
    rep.timings.update(write_tables_s=t1 - t0, figures_s=t2 - t1, write_pages_s=time.perf_counter() - t2)
    return {"files": files, "notes": rep.notes + fig_notes, "timings": rep.timings, "report": rep}


def write_leaderboard(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Leaderboard (md, html, json), paper tables and Figure 3; no qualitative figure. Returns leaderboard.md."""
    return write_report(run_dirs, out_dir, qualitative=False)["files"]["leaderboard.md"]


def parse_pairs(values: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for v in values:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if len(parts) != 2:
            raise UsageError(f"--paired {v!r}: expected two comma-separated method names, e.g. --paired gradcam,gradient")
        pairs.append((parts[0], parts[1]))
    return pairs
