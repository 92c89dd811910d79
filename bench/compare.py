"""Compare two run directories and flag regressions (``salbench compare OLD NEW``).

What is compared:

* metrics, per (method, source classifier), from the Parquet tables: every registered metric
  column marked ``compare`` (LE, OM, F1, ...: means over images) and every agnosticism score
  marked ``compare`` per image variant, cross-classifier (eval classifiers other than the source,
  as in the leaderboard) and ``_self`` (the source classifier) separately; a value that moves by
  more than ``metric_tol`` percentage points *in either direction* is a regression (a refactor
  should not move numbers; an intended change is reviewed and the baseline replaced). Also a
  regression: more error rows than before, and a (method, source) pair that disappeared;
* throughput, per configuration (``throughput.CONFIG_KEY``: kind, method, model, device, dtype,
  batch size, image size, channels_last, compiled, eval models, inpainting) when both
  directories have ``throughput.parquet``: images/s dropping by more than ``throughput_drop``
  percent, or a configuration that measured before and fails now, is a regression.

Runs measured under different protocols (dataset, image count, binarisation, box rule,
inpainting backend, target) are refused: their numbers are not comparable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from salbench.errors import UsageError
from salbench.metrics import descriptors
from salbench.metrics.base import VARIANTS, localization_summaries, variant_scores
from salbench.reference import is_reference, reference_means
from salbench.tables import dataset_summaries, load_groups, metric_descriptor, per_image_agnosticism
from salbench.throughput_table import CONFIG_KEY, read_throughput

#: run.json spec keys that must agree for metrics to be comparable.
PROTOCOL_KEYS = ("protocol", "dataset", "num_images", "binarize", "binarize_params", "box", "inpaint", "target")


@dataclass
class Change:
    """One compared value."""

    table: str  # localization | agnosticism | errors | pairs | throughput
    key: str  # "method / source_model", or a throughput configuration
    metric: str
    old: float
    new: float
    change: float  # pp (metrics), % (throughput), count (errors)
    unit: str  # "pp" (percent metrics) | "abs" (unitless scores) | "%" (throughput) | ""
    limit: float
    regressed: bool
    verdict: str = ""  # worse | better | changed | missing | failing

    def cells(self) -> list[str]:
        digits = 4 if self.unit == "abs" else 2

        def num(v: float) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

        ch = "-" if math.isnan(self.change) else f"{self.change:+.{digits}f}{(' ' + self.unit) if self.unit in ('pp', '%') else ''}"
        lim = {"pp": f"±{self.limit:g} pp", "abs": f"±{self.limit:g}", "%": f"-{self.limit:g}%", "": f"+{self.limit:g}"}[self.unit]
        return [self.table, self.key, self.metric, num(self.old), num(self.new), ch, lim, self.verdict]


@dataclass
class Comparison:
    old: Path
    new: Path
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metric_tol: float = 0.5
    throughput_drop: float = 10.0
    ci_tol: float = 0.0

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regressed]

    @property
    def ok(self) -> bool:
        return not self.regressions


# --------------------------------------------------------------------------- loading
def _check_dir(path: str | Path) -> tuple[Path, dict[str, Any] | None, bool]:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{str(p)!r} does not exist")
    if not p.is_dir():
        raise UsageError(f"{str(p)!r} is not a directory")
    meta = None
    if (p / "run.json").is_file():
        try:
            meta = json.loads((p / "run.json").read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{str(p / 'run.json')!r} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise UsageError(f"{str(p / 'run.json')!r} is not a salbench run.json")
    has_tp = (p / "throughput.parquet").is_file()
    if meta is None and not has_tp:
        raise UsageError(f"{str(p)!r} is not a salbench run directory (no run.json and no throughput.parquet)")
    return p, meta, has_tp


def _protocol(meta: dict[str, Any]) -> dict[str, Any]:
    spec = meta.get("spec") or {}
    return {k: spec.get(k) for k in PROTOCOL_KEYS}


def check_protocol(old_meta: dict[str, Any], new_meta: dict[str, Any]) -> None:
    """Raise UsageError naming every protocol setting that differs between two runs."""
    a, b = _protocol(old_meta), _protocol(new_meta)
    diff = [k for k in PROTOCOL_KEYS if json.dumps(a[k], sort_keys=True, default=str) != json.dumps(b[k], sort_keys=True, default=str)]
    if diff:
        shown = "; ".join(f"{k}: {json.dumps(a[k], default=str)} vs {json.dumps(b[k], default=str)}" for k in diff)
        raise UsageError(f"runs use different protocols, their metrics are not comparable ({shown})")


def compared_columns() -> tuple[list[str], list[str]]:
    """(localization, agnosticism) column names ``compare`` checks, from the metric registry.

    Agnosticism values mean what the leaderboard columns of the same name mean: ``<variant>_<score>``
    is cross-classifier (per image, the mean over eval classifiers other than the source, then the
    mean over images) and ``<variant>_<score>_self`` the source classifier's own value.
    """
    loc = [c.name for c in localization_summaries() if c.compare and c.aggregate in ("mean", "dataset")]
    agn = [f"{v}_{c.name}{sfx}" for c in variant_scores() if c.compare for v in VARIANTS for sfx in ("", "_self")]
    return loc, agn


def metric_means(run_dir: str | Path) -> pd.DataFrame:
    """Per (method, source_model): the compared metrics' means (percent metrics x100) and error counts."""
    group = load_groups([run_dir])[0]
    keys = ["method", "source_model"]
    loc_names, agn_names = compared_columns()
    parts = []
    loc, agn = group.loc, group.agn
    if len(loc):
        ok = loc[loc["error"].isna()]
        means = ok.groupby(keys, observed=True)[[c for c in loc_names if metric_descriptor(c).aggregate == "mean"]].mean()
        dataset_level = [metric_descriptor(c) for c in loc_names if metric_descriptor(c).aggregate == "dataset"]
        if dataset_level and len(means):  # dataset-level summaries (MaxBoxAccV2, PxAP): reduced, not averaged
            whole = dataset_summaries(ok, keys, dataset_level, ci=False).astype({k: str for k in keys}).set_index(keys)
            means.index = pd.MultiIndex.from_tuples([(str(a), str(b)) for a, b in means.index], names=keys)
            means = means.join(whole[[c.name for c in dataset_level]])
        for c in loc_names:
            means[c] *= 100.0 if metric_descriptor(c).percent else 1.0
        parts.append(means)
        parts.append(loc.assign(errors=loc["error"].notna().astype(int)).groupby(keys, observed=True)[["errors"]].sum())
    for score in variant_scores():
        if not score.compare:
            continue
        per = per_image_agnosticism(group, score.column)
        if per.empty:
            continue
        scale = 100.0 if score.percent else 1.0
        m = per.groupby([*keys, "variant"], observed=True)[["cross", "self"]].mean().mul(scale).unstack("variant")
        m.columns = [f"{v}_{score.name}" + ("" if which == "cross" else "_self") for which, v in m.columns]
        parts.append(m)
    if len(agn):
        parts.append(agn.assign(agn_errors=agn["error"].notna().astype(int)).groupby(keys, observed=True)[["agn_errors"]].sum())
    if not parts:
        return pd.DataFrame(columns=[*loc_names, *agn_names, "errors"], index=pd.MultiIndex.from_tuples([], names=keys))
    df = pd.concat(parts, axis=1)
    df.index = pd.MultiIndex.from_tuples([(str(a), str(b)) for a, b in df.index], names=keys)
    errors = pd.Series(0.0, index=df.index)
    for col in ("errors", "agn_errors"):
        if col in df.columns:
            errors = errors + df.pop(col).fillna(0)
    df["errors"] = errors
    return df


def _is_percent(metric: str) -> bool:
    info = descriptors().get(metric.removesuffix("_self"))
    return info is None or info.percent


def _direction(metric: str, change: float) -> str:
    if change == 0:
        return ""
    info = descriptors().get(metric.removesuffix("_self"))
    if info is None or info.direction is None:
        return "changed"
    better = (change > 0) == (info.direction == "higher")
    return "better" if better else "worse"


# --------------------------------------------------------------------------- comparing
def _means(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A directory's compared means, and the half-widths of their 95% intervals for a reference."""
    if is_reference(path):
        loc_names, agn_names = compared_columns()
        return reference_means(path, [*loc_names, *agn_names])
    return metric_means(path), None


def degenerate_half_width(images: float) -> float:
    """The half-width, in pp, given to a reference's 0% / 100% value whose bootstrap interval has
    zero width (every scored image agreed, so resampling cannot move it): the rule of three's 95%
    bound 3/n on the unseen rate, halved (150/n pp for n images). Without it one image flipping
    on another CPU's zoo (1/48 of a ROAD accuracy: 2.1 pp) fails a gate that lets 6 pp move
    elsewhere. NaN images: no floor."""
    return 150.0 / images if images and not math.isnan(images) else 0.0


def compare_metrics(old: Path, new: Path, tol: float, out: Comparison, ci_tol: float = 0.0) -> None:
    """Every compared value of OLD against NEW. Against a reference (OLD with interval
    half-widths), a value's limit is ``max(tol, ci_tol x half-width)``; a 0% / 100% value with a
    zero-width interval has ``degenerate_half_width``."""
    (a, half), (b, _) = _means(old), _means(new)
    loc_names, agn_names = compared_columns()
    cols = [c for c in (*loc_names, *agn_names) if c in a.columns or c in b.columns]
    for idx in a.index:
        key = " / ".join(idx)
        if idx not in b.index:
            out.changes.append(Change("pairs", key, "(all)", math.nan, math.nan, math.nan, "", 0, True, "missing in NEW"))
            continue
        for col in cols:
            va = float(a.at[idx, col]) if col in a.columns else math.nan
            vb = float(b.at[idx, col]) if col in b.columns else math.nan
            table = "localization" if col in loc_names else "agnosticism"
            if math.isnan(va) and math.isnan(vb):
                continue
            if math.isnan(va) or math.isnan(vb):
                # a value that disappeared is a regression; a metric the baseline did not measure yet is not
                out.changes.append(Change(table, key, col, va, vb, math.nan, "pp", tol, math.isnan(vb), "missing in NEW" if math.isnan(vb) else "new metric"))
                continue
            d = vb - va
            # percent metrics move in percentage points; unitless scores in [0, 1] or [-1, 1] (AUCs,
            # the ROAD gap) by the same share of their range: tol pp = tol / 100 of them
            percent = _is_percent(col)
            unit, limit = ("pp", tol) if percent else ("abs", tol / 100)
            if half is not None and ci_tol > 0 and col in half.columns and idx in half.index and not math.isnan(float(half.at[idx, col])):
                h = float(half.at[idx, col])
                if percent and h == 0 and va in (0.0, 100.0):
                    h = degenerate_half_width(float(half.at[idx, "images"]))
                limit = max(limit, ci_tol * h)
            out.changes.append(Change(table, key, col, va, vb, d, unit, round(limit, 2 if percent else 4), abs(d) > limit + 1e-9, _direction(col, d)))
        ea = float(a.at[idx, "errors"]) if "errors" in a.columns and not pd.isna(a.at[idx, "errors"]) else 0.0
        eb = float(b.at[idx, "errors"]) if "errors" in b.columns and not pd.isna(b.at[idx, "errors"]) else 0.0
        out.changes.append(Change("errors", key, "error rows", ea, eb, eb - ea, "", 0, eb > ea, "worse" if eb > ea else ("better" if eb < ea else "")))
    extra = [" / ".join(i) for i in b.index if i not in a.index]
    if extra:
        out.notes.append(f"only in NEW (not compared): {', '.join(extra)}")


def _config_label(r: dict[str, Any]) -> str:
    s = f"{r['kind']} {r['method']} {r['model']} bs={r['batch_size']} {r['dtype']} {r['image_size']}px"
    if r["channels_last"]:
        s += " channels_last"
    if r["compiled"]:
        s += " compiled"
    if r["kind"] == "pipeline":
        s += f" eval={r['eval_models']} {r['inpaint']}"
    return s


def compare_throughput(old: Path, new: Path, drop: float, out: Comparison) -> None:
    def rows(p: Path) -> dict[tuple, dict[str, Any]]:
        t = read_throughput(p).to_pylist()
        t.sort(key=lambda r: r["timestamp"] or "")
        return {tuple(r[k] for k in CONFIG_KEY): r for r in t}  # latest row per configuration wins

    a, b = rows(old), rows(new)
    common = [k for k in a if k in b]
    if a and b and not common:
        devs = lambda d: ", ".join(sorted({r["device"] for r in d.values()}))  # noqa: E731
        out.notes.append(f"throughput: no configuration measured in both (OLD on {devs(a)}; NEW on {devs(b)})")
        return
    for k in common:
        ra, rb = a[k], b[k]
        label = _config_label(ra)
        if ra["error"]:
            continue  # nothing to regress from
        if rb["error"]:
            out.changes.append(Change("throughput", label, "images_per_s", ra["images_per_s"], math.nan, math.nan, "%", drop, True, f"failing: {rb['error'][:60]}"))
            continue
        va, vb = float(ra["images_per_s"]), float(rb["images_per_s"])
        pct = (vb - va) / va * 100 if va > 0 else math.nan
        regressed = not math.isnan(pct) and -pct > drop + 1e-9
        out.changes.append(Change("throughput", label, "images_per_s", va, vb, pct, "%", drop, regressed, "worse" if pct < 0 else ("better" if pct > 0 else "")))
    missing = [k for k in a if k not in b and not a[k]["error"]]
    if missing:
        out.notes.append(f"throughput: {len(missing)} configuration(s) of OLD not measured in NEW (not compared)")


def compare_runs(old: str | Path, new: str | Path, metric_tol: float = 0.5, throughput_drop: float = 10.0, ci_tol: float = 0.0) -> Comparison:
    """Compare two run (or throughput-only, or reference) directories; raises UsageError for bad input."""
    if metric_tol < 0 or throughput_drop < 0 or ci_tol < 0:
        raise UsageError(f"tolerances must be non-negative (metric-tol {metric_tol}, throughput-drop {throughput_drop}, ci-tol {ci_tol})")
    old_p, old_meta, old_tp = _check_dir(old)
    new_p, new_meta, new_tp = _check_dir(new)
    out = Comparison(old_p, new_p, metric_tol=metric_tol, throughput_drop=throughput_drop, ci_tol=ci_tol)
    if (old_meta is None) != (new_meta is None):
        which, other = (old_p, new_p) if old_meta is None else (new_p, old_p)
        raise UsageError(f"{str(which)!r} holds only throughput results but {str(other)!r} is an evaluation run; nothing comparable on the metrics side")
    if old_meta is not None and new_meta is not None:
        check_protocol(old_meta, new_meta)
        if old_meta.get("status") not in (None, "complete"):
            raise UsageError(f"OLD run {str(old_p)!r} is not complete (status {old_meta.get('status')!r}): not a baseline; finish it with --resume")
        if new_meta.get("status") not in (None, "complete"):  # a crashed run must not pass the gate
            out.changes.append(Change("run", str(new_p), "status", math.nan, math.nan, math.nan, "", 0, True,
                                      f"incomplete: status {new_meta.get('status')!r}"))
        cfg_a = (old_meta.get("spec") or {}).get("method_configs") or {}
        cfg_b = (new_meta.get("spec") or {}).get("method_configs") or {}
        changed = sorted(m for m in set(cfg_a) & set(cfg_b) if cfg_a[m] != cfg_b[m])
        if changed:
            out.notes.append(f"method parameters differ for: {', '.join(changed)}")
        if ci_tol > 0 and not is_reference(old_p):
            out.notes.append("--ci-tol applies to a reference baseline only (a run directory has no stored intervals): ignored")
        compare_metrics(old_p, new_p, metric_tol, out, ci_tol)
    if old_tp and new_tp:
        compare_throughput(old_p, new_p, throughput_drop, out)
    elif old_tp or new_tp:
        out.notes.append(f"throughput: only {'OLD' if old_tp else 'NEW'} has throughput.parquet (not compared)")
    if not out.changes:  # a gate that compared nothing must not pass silently
        raise UsageError("nothing to compare between the two directories" + (f" ({'; '.join(out.notes)})" if out.notes else ""))
    return out


# --------------------------------------------------------------------------- output
HEADER = ["table", "what", "metric", "old", "new", "change", "limit", ""]


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    right = {3, 4, 5}
    lines = []
    for r in [HEADER, *rows]:
        lines.append("  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def format_comparison(cmp: Comparison, show_all: bool = False) -> str:
    ci = f", or ±{cmp.ci_tol:g}x the reference's 95% half-width where larger" if cmp.ci_tol else ""
    parts = [f"compare {cmp.old} -> {cmp.new}  (metric tolerance ±{cmp.metric_tol:g} pp{ci}, throughput drop limit {cmp.throughput_drop:g}%)"]
    shown = cmp.changes if show_all else cmp.regressions
    n_metric = sum(c.table != "throughput" for c in cmp.changes)
    n_tp = sum(c.table == "throughput" for c in cmp.changes)
    if shown:
        parts.append(_render([c.cells() for c in shown]))
    for n in cmp.notes:
        parts.append(f"note: {n}")
    if cmp.regressions:
        parts.append(f"REGRESSED: {len(cmp.regressions)} of {len(cmp.changes)} compared values ({n_metric} metric, {n_tp} throughput)")
    else:
        parts.append(f"OK: {n_metric} metric values and {n_tp} throughput configurations within tolerance")
    return "\n".join(parts)
