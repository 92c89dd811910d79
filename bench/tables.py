"""Report computations from the Parquet tables alone: load and group runs, leaderboard, paper tables.

Everything here is a view of the long-format tables a run writes (``localization``,
``agnosticism``, optional ``throughput.parquet``) plus ``run.json``; nothing is typed by hand.

* ``load_groups(run_dirs)`` reads runs and groups them by *protocol* (dataset spec, image size,
  binarisation, box rule, inpainting, target, number of images, eval classifiers): runs with
  different protocols are never averaged together (``strict=True`` refuses them instead, with a
  ``UsageError`` naming the differing field).
* ``leaderboard(group)`` computes one row per (method, source classifier), vectorised with
  pandas group-bys; 95% confidence intervals are percentile bootstraps over images
  (``bootstrap_many``: one seeded resampling per image count, shared by every column, identical
  to ``salbench.metrics.bootstrap_ci`` on each column).
* the paper tables built from these views live in ``salbench.paper`` and render through
  ``salbench.render``.
* ``paired_difference(run_dirs, a, b, metric)``: the difference between two methods on the same
  images and its bootstrap interval, to tell whether a leaderboard gap is real.

Agnosticism columns are *cross-classifier*: per image, the mean over the eval classifiers other
than the source classifier, then the mean (and bootstrap) over images; the source's own value
(*self*) is reported beside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from salbench.errors import UsageError, close_matches
from salbench.metrics import METRICS, MetricInfo, descriptors
from salbench.metrics.base import VARIANTS, localization_summaries, sanity_summaries, variant_scores
from salbench.results import read_run_json, read_table

CONTROL_NAMES = ("centre", "full", "random")
THROUGHPUT_FILE = "throughput.parquet"
ID_LOC = ["image_index", "image_id", "label", "method", "source_model"]
ID_AGN = ["image_id", "method", "source_model", "eval_model", "variant"]

#: Descriptor for the throughput column (not a per-image metric, so not in the registry).
IMAGES_PER_S = MetricInfo("images_per_s", "higher", False, "images per second of the method on its source classifier")

#: Protocol fields: what must agree for two runs' numbers to be comparable.
PROTOCOL_FIELDS = ("dataset", "image_size", "binarize", "binarize_params", "box", "inpaint", "target", "num_images", "eval_models")


def loc_metrics() -> list[str]:
    """Localization-table columns summarised by their mean over images (from the metric registry)."""
    return [c.name for c in localization_summaries() if c.aggregate == "mean"]


def loc_columns() -> list[str]:
    """The localization columns reports read: ids, every summarised metric column, the error."""
    cols = [src for c in localization_summaries() for src in ((c.column,) if c.aggregate == "mean" else (c.source, *c.sources)) if src]
    return [*ID_LOC, *dict.fromkeys(cols), "error"]


def agn_columns() -> list[str]:
    """The agnosticism columns reports read: ids, every score summarised per variant, the error."""
    return [*ID_AGN, *(c.column for c in variant_scores()), "error"]


def metric_descriptor(name: str) -> MetricInfo:
    if name == "images_per_s":
        return IMAGES_PER_S
    known = descriptors()
    base = name.removesuffix("_self")
    if base in known:
        return known[base]
    raise UsageError(f"unknown metric {name!r}{close_matches(name, list(known))}; known: {', '.join(known)}")


def method_family(name: str) -> str:
    """The method's capabilities family from the registry ('control' for centre/full/random)."""
    try:
        from salbench.methods import METHODS

        return str(METHODS.get(name).capabilities.family)
    except Exception:  # not registered here (e.g. a trained masker from another install)
        if name in CONTROL_NAMES:
            return "control"
        return "casm" if name.startswith("casm") else ""


# ----------------------------------------------------------------------------- bootstrap
def bootstrap_many(vectors: Sequence[np.ndarray], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CIs of the mean for many per-image vectors at once.

    For each vector this equals ``salbench.metrics.bootstrap_ci(v, n_boot, alpha, seed)`` (same
    NumPy generator, same draws): NaNs dropped, images resampled with replacement. Vectors with
    the same number of images share one (n_boot x n) resampling, applied to all of them as one
    matrix product of the stacked values with the resample-count matrix.
    """
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    lo = np.full(len(vectors), np.nan)
    hi = np.full(len(vectors), np.nan)
    by_n: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for k, v in enumerate(vectors):
        v = np.asarray(v, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if v.size:
            by_n[v.size].append((k, v))
    for n, items in by_n.items():
        values = np.stack([v for _, v in items])  # G x n
        means = np.concatenate([values @ counts.T / n for counts in _resample_counts(n, n_boot, seed)], axis=1)
        q = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=1)
        keys = [k for k, _ in items]
        lo[keys], hi[keys] = q[0], q[1]
    return lo, hi


def _resample_counts(n: int, n_boot: int, seed: int) -> Iterable[np.ndarray]:
    """Chunks of bootstrap image multiplicities (rows: resamples, columns: the n images), drawn
    exactly as ``bootstrap_many`` draws them, so every interval of a leaderboard resamples alike."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # the same chunking as bootstrap_ci: same draws
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        flat = (idx + (np.arange(stop - start) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=(stop - start) * n).reshape(stop - start, n).astype(np.float64)


def dataset_value(info: MetricInfo, stats: list[np.ndarray], *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                  ci: bool = True) -> tuple[float, float, float]:
    """A dataset-level summary (``aggregate="dataset"``) from per-image statistics (one n x k array
    per ``info.sources``): its value and, with ``ci``, the percentile-bootstrap interval (images
    resampled, ``info.reduce`` applied to each resample); NaNs where there are no images."""
    n = len(stats[0]) if stats else 0
    if n == 0:
        return math.nan, math.nan, math.nan
    value = float(info.reduce(stats, np.ones((1, n)))[0])
    if not ci:
        return value, math.nan, math.nan
    boots = np.concatenate([info.reduce(stats, w) for w in _resample_counts(n, n_boot, seed)])
    boots = boots[np.isfinite(boots)]
    if not boots.size:
        return value, math.nan, math.nan
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)


def dataset_summaries(df: pd.DataFrame, keys: list[str], infos: Sequence[MetricInfo], *, n_boot: int = 1000, alpha: float = 0.05,
                      seed: int = 0, ci: bool = True) -> pd.DataFrame:
    """Per group (``keys``) every dataset-level summary in ``infos`` with ``<name>_lo/_hi`` bounds
    (for ``ci`` ones); images whose statistics are null (metric not applicable) are left out."""
    out = pd.DataFrame(columns=keys)
    if df.empty or not infos:
        return out
    if "image_id" in df.columns:  # resample in image order: intervals never depend on file order
        df = df.sort_values("image_id", kind="stable")
    rows = []
    for key, part in df.groupby(keys, observed=True, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        for info in infos:
            ok = np.ones(len(part), dtype=bool)
            for src in info.sources:
                ok &= part[src].notna().to_numpy()
            stats = [np.stack(part[src].to_numpy()[ok]).astype(np.float64) if ok.any() else np.zeros((0, 0)) for src in info.sources]
            v, lo, hi = dataset_value(info, stats, n_boot=n_boot, alpha=alpha, seed=seed, ci=ci and info.ci)
            row[info.name] = v
            if info.ci:
                row[f"{info.name}_lo"], row[f"{info.name}_hi"] = lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- loading
@dataclass
class RunInfo:
    path: Path
    meta: dict[str, Any]
    protocol: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", self.path.name))


@dataclass
class Group:
    """Runs that share one protocol, their rows merged (a later run wins a duplicated pair)."""

    index: int
    protocol: dict[str, Any]
    runs: list[RunInfo]
    loc: pd.DataFrame
    agn: pd.DataFrame
    throughput: pd.DataFrame | None
    not_applicable: list[dict[str, str]]
    method_runs: dict[str, RunInfo]  # which run each method's rows come from (its config, spec)
    models: list[str]
    notes: list[str] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    sanity: pd.DataFrame | None = None  # the sanity table's rows (metrics/sanity.py); None: no run has one

    @property
    def label(self) -> str:
        return protocol_label(self.protocol)

    def method_family(self, method: str) -> str:
        """The family the run recorded (plugins, peer adapters: ``"captum 0.9.0"``), else the registry's."""
        run = self.method_runs.get(method)
        cfg = run.meta.get("spec", {}).get("method_configs", {}).get(method, {}) if run is not None else {}
        family = cfg.get("family") if isinstance(cfg, dict) else None
        return str(family) if family else method_family(method)

    def method_params(self, method: str) -> dict[str, Any]:
        run = self.method_runs.get(method)
        if run is None:
            return {}
        cfg = run.meta.get("spec", {}).get("method_configs", {}).get(method, {})
        params = cfg.get("params", {}) if isinstance(cfg, dict) else {}
        return dict(params) if isinstance(params, dict) else {}


def run_protocol(meta: dict[str, Any]) -> dict[str, Any]:
    spec = meta.get("spec", {})
    proto = spec.get("protocol", {}) or {}
    size = proto.get("image_size") or meta.get("dataset", {}).get("image_size")
    return {
        "dataset": spec.get("dataset", proto.get("dataset")),
        "image_size": list(size) if size is not None else None,
        "binarize": spec.get("binarize"),
        "binarize_params": spec.get("binarize_params") or {},
        "box": spec.get("box"),
        "inpaint": spec.get("inpaint"),
        "target": spec.get("target"),
        "num_images": spec.get("num_images"),
        "eval_models": sorted(spec.get("eval_models") or []),
    }


def protocol_label(p: dict[str, Any]) -> str:
    size = "x".join(str(s) for s in p.get("image_size") or []) or "?"
    bp = p.get("binarize_params") or {}
    binar = str(p.get("binarize")) + (f"({', '.join(f'{k}={v}' for k, v in sorted(bp.items()))})" if bp else "")
    return (f"{p.get('dataset')} · {size} · {p.get('num_images')} images · binarize {binar} · box {p.get('box')} · "
            f"inpaint {p.get('inpaint')} · target {p.get('target')} · eval {', '.join(p.get('eval_models') or [])}")


def _differing_field(a: dict[str, Any], b: dict[str, Any]) -> str:
    for k in PROTOCOL_FIELDS:
        if a.get(k) != b.get(k):
            return k
    return "?"


def _read_throughput(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / THROUGHPUT_FILE
    if not path.exists():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception:
        return None
    return df if len(df) else None


def _categorical(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    for c in cols:
        if c in df.columns and not isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype("category")
    return df


def load_groups(run_dirs: Sequence[str | Path], strict: bool = False) -> list[Group]:
    """Read run directories and group them by protocol (``strict``: refuse mixed protocols)."""
    if not run_dirs:
        raise UsageError("no run directories given")
    runs = []
    for d in run_dirs:
        d = Path(d)
        meta = read_run_json(d)
        runs.append(RunInfo(d, meta, run_protocol(meta)))
    buckets: list[list[RunInfo]] = []
    for r in runs:
        for b in buckets:
            if b[0].protocol == r.protocol:
                b.append(r)
                break
        else:
            if strict and buckets:
                first = buckets[0][0]
                f = _differing_field(first.protocol, r.protocol)
                raise UsageError(
                    f"runs {str(first.path)!r} and {str(r.path)!r} have different protocols ({f}: "
                    f"{first.protocol.get(f)!r} vs {r.protocol.get(f)!r}); their numbers cannot be averaged together. "
                    "Report them separately or drop --strict-protocol to get one section per protocol."
                )
            buckets.append([r])
    return [_build_group(i, b) for i, b in enumerate(buckets, start=1)]


def _build_group(index: int, runs: list[RunInfo]) -> Group:
    locs, agns, tps, na, notes = [], [], [], [], []
    pair_run: dict[tuple[str, str], int] = {}
    method_runs: dict[str, RunInfo] = {}
    models: list[str] = []
    per_run_loc: list[pd.DataFrame] = []
    for k, r in enumerate(runs):
        loc = read_table(r.path, "localization", columns=loc_columns())
        per_run_loc.append(loc)
        if r.meta.get("status") not in (None, "complete"):
            notes.append(f"run {r.run_id} ({r.path}) has status {r.meta.get('status')!r}: partial results")
        for m in r.meta.get("spec", {}).get("models", []):
            if m not in models:
                models.append(m)
        pairs = set(map(tuple, loc[["method", "source_model"]].drop_duplicates().to_numpy().tolist())) if len(loc) else set()
        for p in pairs:
            if p in pair_run:
                notes.append(f"{p[0]} on {p[1]}: rows in runs {runs[pair_run[p]].run_id} and {r.run_id}; using the later ({r.run_id})")
            pair_run[p] = k
        for item in r.meta.get("not_applicable", []):
            na.append({"method": item.get("method"), "source_model": item.get("model"), "reason": item.get("reason", ""), "run": k})
    for k, r in enumerate(runs):
        mine = {p for p, kk in pair_run.items() if kk == k}
        if not mine:
            continue
        for m, _ in mine:
            method_runs[m] = r
        loc = per_run_loc[k]
        agn = read_table(r.path, "agnosticism", columns=agn_columns())
        if len(mine) < len(set(map(tuple, loc[["method", "source_model"]].drop_duplicates().to_numpy().tolist()))):
            keep = pd.MultiIndex.from_tuples(sorted(mine))
            loc = loc[pd.MultiIndex.from_frame(loc[["method", "source_model"]]).isin(keep)]
            agn = agn[pd.MultiIndex.from_frame(agn[["method", "source_model"]]).isin(keep)]
        locs.append(loc)
        agns.append(agn)
        tp = _read_throughput(r.path)
        if tp is not None:
            tps.append(tp)
    loc = pd.concat(locs, ignore_index=True) if locs else per_run_loc[0].iloc[:0]
    agn = pd.concat(agns, ignore_index=True) if agns else read_table(runs[0].path, "agnosticism", columns=agn_columns())
    _categorical(loc, ["image_id", "method", "source_model"])
    _categorical(agn, ["image_id", "method", "source_model", "eval_model", "variant"])
    # not-applicable pairs: keep those no run produced rows for
    seen_na, na_rows = set(), []
    for item in na:
        key = (item["method"], item["source_model"])
        if key in pair_run or key in seen_na:
            continue
        seen_na.add(key)
        na_rows.append({k: v for k, v in item.items() if k != "run"})
        method_runs.setdefault(item["method"], runs[item["run"]])
    throughput = pd.concat(tps, ignore_index=True) if tps else None
    group = Group(index, runs[0].protocol, runs, loc, agn, throughput, na_rows, method_runs, models, notes)
    group.sanity = _read_sanity(runs, pair_run)
    return group


def _read_sanity(runs: list[RunInfo], pair_run: dict[tuple[str, str], int]) -> pd.DataFrame | None:
    """Sanity rows of each (method, source) pair from the run its leaderboard rows come from."""
    frames = []
    for k, r in enumerate(runs):
        if not (r.path / "sanity").is_dir():
            continue
        df = read_table(r.path, "sanity")
        if len(df):
            mine = pd.MultiIndex.from_tuples(sorted(p for p, kk in pair_run.items() if kk == k) or [("", "")])
            frames.append(df[pd.MultiIndex.from_frame(df[["method", "source_model"]]).isin(mine)])
    return pd.concat(frames, ignore_index=True) if frames else None


# ----------------------------------------------------------------------------- per-image views
def _loc_ok(group: Group) -> pd.DataFrame:
    return group.loc[group.loc["error"].isna()]


def per_image_agnosticism(group: Group, score: str = "top1") -> pd.DataFrame:
    """Per (method, source, variant, image): ``cross`` (mean over eval classifiers other than the
    source) and ``self`` (the source classifier's own score), in [0, 1]. Cached per group."""
    key = ("per_image_agnosticism", score)
    if key not in group.cache:
        group.cache[key] = _per_image_agnosticism(group, score)
    return group.cache[key]


def _per_image_agnosticism(group: Group, score: str) -> pd.DataFrame:
    a = group.agn
    a = a.loc[a["error"].isna(), ["image_id", "method", "source_model", "eval_model", "variant", score]]
    if a.empty:
        return pd.DataFrame(columns=["method", "source_model", "variant", "image_id", "cross", "self"])
    a = a.assign(is_self=same_model(a["eval_model"], a["source_model"]))
    per = a.groupby(["method", "source_model", "variant", "image_id", "is_self"], observed=True, sort=False)[score].mean()
    wide = per.unstack("is_self")
    wide = wide.rename(columns={False: "cross", True: "self"})
    for c in ("cross", "self"):
        if c not in wide.columns:
            wide[c] = np.nan
    return wide[["cross", "self"]].reset_index()


def same_model(x: pd.Series, y: pd.Series) -> np.ndarray:
    """Elementwise ``x == y`` for two string/categorical columns, on category codes when possible."""
    if isinstance(x.dtype, pd.CategoricalDtype) and isinstance(y.dtype, pd.CategoricalDtype):
        where = {str(c): i for i, c in enumerate(x.cat.categories)}
        y_in_x = np.array([where.get(str(c), -2) for c in y.cat.categories] + [-3], dtype=np.int64)
        ycodes = y.cat.codes.to_numpy()
        return x.cat.codes.to_numpy() == y_in_x[np.where(ycodes < 0, -1, ycodes)]
    return x.astype(str).to_numpy() == y.astype(str).to_numpy()


def _vectors(df: pd.DataFrame, keys: list[str], cols: Sequence[str]) -> tuple[list[tuple], dict[str, list[np.ndarray]]]:
    """Group ``df`` by ``keys``; per group the values of every column in ``cols`` (one numpy array each)."""
    if df.empty:
        return [], {c: [] for c in cols}
    g = df.groupby(keys, observed=True, sort=False)
    indices = g.indices
    group_keys = list(indices)
    arrays = {c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in cols}
    out = {c: [arrays[c][indices[k]] for k in group_keys] for c in cols}
    return [k if isinstance(k, tuple) else (k,) for k in group_keys], out


def _mean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def summarize(df: pd.DataFrame, keys: list[str], cols: Sequence[str], *, n_boot: int, alpha: float, seed: int, ci: Sequence[str] = ()) -> pd.DataFrame:
    """Mean of each column per group (``keys``), with ``<col>_lo``/``<col>_hi`` bootstrap bounds for ``ci`` columns."""
    if "image_id" in df.columns and len(df):  # per-image vectors in image order: CIs never depend on file order
        df = df.sort_values("image_id", kind="stable")
    group_keys, vecs = _vectors(df, keys, cols)
    out = pd.DataFrame(group_keys, columns=keys)
    for c in cols:
        out[c] = [_mean(v) for v in vecs[c]]
        out[f"{c}_n"] = [int((~np.isnan(v)).sum()) for v in vecs[c]]
    for c in ci:
        lo, hi = bootstrap_many(vecs[c], n_boot=n_boot, alpha=alpha, seed=seed)
        out[f"{c}_lo"], out[f"{c}_hi"] = lo, hi
    return out


def _scale(df: pd.DataFrame, name: str, percent: bool) -> None:
    if not percent:
        return
    for suffix in ("", "_lo", "_hi"):
        if name + suffix in df.columns:
            df[name + suffix] = df[name + suffix] * 100.0


# ----------------------------------------------------------------------------- leaderboard
def throughput_columns(group: Group) -> pd.DataFrame | None:
    """images/s per (method, source_model) from ``throughput.parquet`` (kind 'method', no error).

    Where several configurations were measured, the most common dtype (float32 preferred) and,
    within it, the fastest batch size are shown; the device and batch size go with the value.
    """
    tp = group.throughput
    if tp is None or "images_per_s" not in tp.columns:
        return None
    t = tp
    if "kind" in t.columns:
        t = t[t["kind"].fillna("method") == "method"]
    if "error" in t.columns:
        t = t[t["error"].isna()]
    t = t[np.isfinite(t["images_per_s"].to_numpy(dtype=np.float64))]
    if t.empty:
        return None
    if "dtype" in t.columns:
        dtypes = t["dtype"].value_counts()
        chosen = "float32" if "float32" in dtypes.index else dtypes.index[0]
        t = t[t["dtype"] == chosen]
    t = t.sort_values("images_per_s", ascending=False).drop_duplicates(["method", "model"])
    out = pd.DataFrame({
        "method": t["method"].astype(str).to_numpy(),
        "source_model": t["model"].astype(str).to_numpy(),
        "images_per_s": t["images_per_s"].to_numpy(dtype=np.float64),
        "throughput_device": t["device"].astype(str).to_numpy() if "device" in t.columns else "",
        "throughput_batch": t["batch_size"].to_numpy() if "batch_size" in t.columns else np.nan,
        "throughput_dtype": t["dtype"].astype(str).to_numpy() if "dtype" in t.columns else "",
    })
    return out


def sanity_columns(group: Group, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame | None:
    """The sanity summaries per (method, source classifier) with bootstrap CIs over images: each
    summary averages the rows its metric names in ``SUMMARY_ROWS`` (test; only the full
    randomisation), e.g. ``mprt_spearman`` over the MPRT rows where every layer group is random."""
    df = group.sanity
    if df is None or df.empty:
        return None
    from salbench.metrics import METRIC_REGISTRY

    df = df[df["error"].isna()]
    out: pd.DataFrame | None = None
    for info in sanity_summaries():
        owner = next(m for m in METRIC_REGISTRY._entries.values() if info in m.summaries)
        test, full_only = owner.SUMMARY_ROWS[info.name]
        rows = df[df["test"] == test]
        if full_only:
            rows = rows[rows["depth"] == rows["groups"]]
        if rows.empty:
            continue
        s = summarize(rows, ["method", "source_model"], [info.source], n_boot=n_boot, alpha=alpha, seed=seed, ci=[info.source] if info.ci else [])
        s = s.rename(columns={info.source: info.name, f"{info.source}_lo": f"{info.name}_lo", f"{info.source}_hi": f"{info.name}_hi"})
        s = s.drop(columns=[f"{info.source}_n"]).astype({"method": str, "source_model": str})
        _scale(s, info.name, info.percent)
        out = s if out is None else _merge(out, s, how="outer")
    return out


def leaderboard(group: Group, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """One row per (method, source classifier); percent metrics x100; ``<col>_lo/_hi`` 95% CIs."""
    loc_all = group.loc
    loc = _loc_ok(group)
    summaries = localization_summaries()
    cols = [c.name for c in summaries if c.aggregate == "mean"]
    board = summarize(loc, ["method", "source_model"], cols, n_boot=n_boot, alpha=alpha, seed=seed,
                      ci=[c.name for c in summaries if c.aggregate == "mean" and c.ci])
    board = board.drop(columns=[f"{c}_n" for c in cols])
    if len(board):
        keys = loc.groupby(["method", "source_model"], observed=True, sort=False)
        board = _merge(board, keys.size().rename("images").reset_index())
        for c in summaries:
            if c.aggregate == "std":
                board = _merge(board, keys[c.source].std(ddof=0).rename(c.name).reset_index())
        dataset_level = [c for c in summaries if c.aggregate == "dataset"]
        if dataset_level:
            board = _merge(board, dataset_summaries(loc, ["method", "source_model"], dataset_level, n_boot=n_boot, alpha=alpha, seed=seed))
    else:
        board["images"] = pd.Series(dtype=np.int64)
    for c in summaries:
        _scale(board, c.name, c.percent)
    # errors per pair
    err = loc_all[loc_all["error"].notna()]
    if len(err):
        e = err.groupby(["method", "source_model"], observed=True, sort=False)["error"].agg(["size", "first"]).reset_index()
        e = e.rename(columns={"size": "errors", "first": "first_error"})
        board = _merge(board, e, how="outer")
    # agnosticism: per variant, cross-classifier (eval classifiers other than the source) and self
    per = pd.DataFrame()
    for score in variant_scores():
        if not (score.leaderboard or score.compare):
            continue
        per = per_image_agnosticism(group, score.column)
        if per.empty:
            continue
        s = summarize(per, ["method", "source_model", "variant"], ("cross", "self"), n_boot=n_boot, alpha=alpha, seed=seed,
                      ci=("cross", "self") if score.ci else ())
        for v in VARIANTS:
            sv = s[s["variant"] == v]
            if sv.empty:
                continue
            name = f"{v}_{score.name}"
            cols_v = {"method": sv["method"].astype(str).to_numpy(), "source_model": sv["source_model"].astype(str).to_numpy(),
                      name: sv["cross"].to_numpy(), f"{name}_self": sv["self"].to_numpy(), f"{name}_n": sv["cross_n"].to_numpy()}
            if score.ci:
                cols_v.update({f"{name}_lo": sv["cross_lo"].to_numpy(), f"{name}_hi": sv["cross_hi"].to_numpy(),
                               f"{name}_self_lo": sv["self_lo"].to_numpy(), f"{name}_self_hi": sv["self_hi"].to_numpy()})
            part = pd.DataFrame(cols_v)
            for c in (name, f"{name}_self"):
                _scale(part, c, score.percent)
            board = _merge(board, part, how="outer")
    if len(per) and per["cross"].isna().all() and per["self"].notna().any():
        note = "no eval classifier other than the source classifier: cross-classifier columns are empty (see self)"
        if note not in group.notes:
            group.notes.append(note)
    _pointing_chance_note(group, loc)
    tp = throughput_columns(group)
    if tp is not None and len(board):
        board = _merge(board, tp, how="left")
    sanity = sanity_columns(group, n_boot=n_boot, alpha=alpha, seed=seed)
    if sanity is not None and len(board):
        board = _merge(board, sanity, how="left")
    # not-applicable pairs and pairs without rows
    extra = []
    present = set(zip(board["method"].astype(str), board["source_model"].astype(str))) if len(board) else set()
    for item in group.not_applicable:
        if (item["method"], item["source_model"]) not in present:
            extra.append({"method": item["method"], "source_model": item["source_model"], "images": 0, "note": f"n/a: {item['reason']}"})
    for r in group.runs:
        spec = r.meta.get("spec", {})
        for m in spec.get("methods", []):
            for s in spec.get("models", []):
                if (m, s) not in present and not any(e["method"] == m and e["source_model"] == s for e in extra) and not any(
                    (i["method"], i["source_model"]) == (m, s) for i in group.not_applicable
                ):
                    extra.append({"method": m, "source_model": s, "images": 0, "note": "no completed rows in this run"})
                    present.add((m, s))
    if extra:
        board = pd.concat([board, pd.DataFrame(extra)], ignore_index=True)
    if board.empty:
        return board
    if "note" not in board.columns:
        board["note"] = None
    if "errors" not in board.columns:
        board["errors"] = 0
    board["errors"] = board["errors"].fillna(0).astype(int)
    board["images"] = board["images"].fillna(0).astype(int)
    if "first_error" in board.columns:
        failed = board["note"].isna() & (board["images"] == 0) & board["first_error"].notna()
        board.loc[failed, "note"] = "failed: " + board.loc[failed, "first_error"].astype(str)
        partial = board["note"].isna() & (board["errors"] > 0)
        board.loc[partial, "note"] = board.loc[partial, "errors"].astype(str) + " failed images: " + board.loc[partial, "first_error"].astype(str)
    board["family"] = [group.method_family(m) for m in board["method"]]
    board["control"] = board["family"] == "control"
    board["protocol"] = group.index
    return sort_board(board, group.models)


def _pointing_chance_note(group: Group, loc: pd.DataFrame) -> None:
    """The pointing game's centre-point control (method-independent) as a report note: the chance
    level a map pointing at the image centre would score."""
    if "pointing_centre" not in loc.columns or loc["pointing_centre"].isna().all():
        return
    per_image = loc.dropna(subset=["pointing_centre"]).drop_duplicates("image_id")["pointing_centre"].to_numpy(dtype=np.float64)
    lo, hi = bootstrap_many([per_image])
    note = (f"pointing game chance level: the image-centre point hits {100 * per_image.mean():.1f}% of the images "
            f"(95% CI {100 * lo[0]:.1f}-{100 * hi[0]:.1f}; column pointing_centre)")
    if note not in group.notes:
        group.notes.append(note)


def _merge(a: pd.DataFrame, b: pd.DataFrame, how: str = "left") -> pd.DataFrame:
    a = a.astype({"method": str, "source_model": str})
    b = b.astype({"method": str, "source_model": str})
    return a.merge(b, on=["method", "source_model"], how=how)


def sort_board(board: pd.DataFrame, models: Sequence[str], key: str = "le") -> pd.DataFrame:
    """Source classifiers in run order; within one, best ``key`` first (direction from METRICS);
    rows without values (not applicable, failed) last."""
    order = {m: i for i, m in enumerate(models)}
    asc = METRICS[key].direction != "higher"
    b = board.copy()
    b["_src"] = [order.get(s, len(order)) for s in b["source_model"]]
    b["_na"] = b[key].isna() if key in b.columns else True
    b["_k"] = b[key] if key in b.columns else np.nan
    b = b.sort_values(["_src", "source_model", "_na", "_k", "method"], ascending=[True, True, True, asc, True], na_position="last", kind="mergesort")
    return b.drop(columns=["_src", "_na", "_k"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- paired comparison
def _agn_metric(metric: str) -> tuple[str, str, bool] | None:
    """``<variant>_<score>[_self]`` -> (variant, table column, self) for agnosticism summaries."""
    for score in variant_scores():
        for v in VARIANTS:
            for is_self in (False, True):
                if metric == f"{v}_{score.name}" + ("_self" if is_self else ""):
                    return v, score.column, is_self
    return None


def _per_image_metric(group: Group, method: str, metric: str, source: str) -> pd.Series:
    """Per-image values (index image_id, [0,1] units) of ``metric`` for ``method`` on ``source``."""
    agn = _agn_metric(metric)
    if agn:
        variant, score, is_self = agn
        per = per_image_agnosticism(group, score)
        per = per[(per["method"] == method) & (per["source_model"] == source) & (per["variant"] == variant)]
        return per.set_index("image_id")["self" if is_self else "cross"].dropna()
    if metric in loc_metrics():
        loc = _loc_ok(group)
        loc = loc[(loc["method"] == method) & (loc["source_model"] == source)]
        return loc.groupby("image_id", observed=True)[metric].mean()
    known = [*loc_metrics(), *(f"{v}_{c.name}" for c in variant_scores() for v in VARIANTS)]
    raise UsageError(f"unknown metric {metric!r}{close_matches(metric, known)}; known: {', '.join(known)}")


def paired_from_groups(groups: Sequence[Group], method_a: str, method_b: str, metric: str, source_model: str | None = None, *,
                       n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    info = metric_descriptor(metric)
    scale = 100.0 if info.percent else 1.0
    all_methods = sorted({str(m) for g in groups for m in g.loc["method"].unique()})
    for name in (method_a, method_b):
        if name not in all_methods:
            raise UsageError(f"method {name!r} has no rows in these runs{close_matches(name, all_methods)}; methods: {', '.join(all_methods)}")
    rows, vecs = [], []
    for g in groups:
        have = {str(x) for x in g.loc["source_model"].unique()}
        sources = [s for s in g.models if s in have] or sorted(have)
        if source_model is not None:
            sources = [s for s in sources if s == source_model]
        for src in sources:
            a = _per_image_metric(g, method_a, metric, src)
            b = _per_image_metric(g, method_b, metric, src)
            joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
            joined = joined.set_axis(joined.index.astype(str)).sort_index()
            if joined.empty:
                continue
            d = (joined["a"] - joined["b"]).to_numpy(dtype=np.float64) * scale
            vecs.append(d)
            better = None
            if info.direction is not None and d.mean() != 0:
                a_better = (d.mean() < 0) if info.direction == "lower" else (d.mean() > 0)
                better = method_a if a_better else method_b
            rows.append({"protocol": g.index, "source_model": src, "metric": metric, "method_a": method_a, "method_b": method_b,
                         "images": len(d), "a": joined["a"].mean() * scale, "b": joined["b"].mean() * scale, "diff": float(d.mean()),
                         "direction": info.direction or "", "better": better})
    if source_model is not None and not rows:
        srcs = sorted({str(s) for g in groups for s in g.loc["source_model"].unique()})
        raise UsageError(f"no images where both {method_a!r} and {method_b!r} have {metric!r} on source {source_model!r}{close_matches(source_model, srcs)}")
    out = pd.DataFrame(rows, columns=["protocol", "source_model", "metric", "method_a", "method_b", "images", "a", "b", "diff", "direction", "better"])
    lo, hi = bootstrap_many(vecs, n_boot=n_boot, alpha=alpha, seed=seed)
    out["diff_lo"], out["diff_hi"] = lo, hi
    out["significant"] = (out["diff_lo"] > 0) | (out["diff_hi"] < 0)
    out.loc[~out["significant"], "better"] = None
    return out


def paired_difference(run_dirs: Sequence[str | Path], method_a: str, method_b: str, metric: str, source_model: str | None = None, *,
                      n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, strict: bool = False) -> pd.DataFrame:
    """``method_a − method_b`` on the same images, per source classifier (and protocol group).

    ``metric``: a localisation column (``le``, ``om``, ``f1``, ``precision``, ``recall``, ``area``,
    ``tv``, ``entropy``) or an agnosticism one, ``<variant>_top1``/``<variant>_top5`` (cross-
    classifier, per image averaged over the eval classifiers other than the source) with an
    optional ``_self`` suffix. Percent metrics are x100. Columns: ``a``, ``b`` (means over the
    shared images), ``diff`` and its ``diff_lo``/``diff_hi`` percentile-bootstrap interval over
    images, ``significant`` (the interval excludes 0) and ``better`` (by the metric's direction,
    only when significant).
    """
    metric_descriptor(metric)
    groups = load_groups(run_dirs, strict=strict)
    return paired_from_groups(groups, method_a, method_b, metric, source_model, n_boot=n_boot, alpha=alpha, seed=seed)


def _measured_rows(b: pd.DataFrame) -> pd.DataFrame:
    """Leaderboard rows that have values (not the not-applicable / failed placeholders)."""
    return b[b["images"] > 0] if len(b) else b
