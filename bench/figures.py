"""Report figures (matplotlib, Agg backend): CASM Figure 3 and a qualitative figure.

* ``figure3(group)``: for each eval classifier, top-1 on original, masked-in, masked-out and
  inpainted images, bars grouped by method (from the agnosticism table alone).
* ``qualitative(group)``: for the few seeded example images a run stores (``salbench.examples``),
  the original, and per method the map and the masked-in, masked-out and inpainted images. Read
  from the run's files alone: no classifier, dataset or method is loaded. Returns ``(png, notes)``;
  ``png`` is None with a note when the run stores no examples.
"""

from __future__ import annotations

import io

import numpy as np

from salbench.examples import EXAMPLE_COUNT, decode_image, decode_maps, read_examples
from salbench.paper import figure3_frame
from salbench.tables import VARIANTS, Group

VARIANT_LABELS = {"original": "original", "masked_in": "masked-in", "masked_out": "masked-out", "inpainted": "inpainted"}
VARIANT_COLORS = {"original": "#9e9e9e", "masked_in": "#2b8cbe", "masked_out": "#e34a33", "inpainted": "#fdbb84"}


def _plt():
    # matplotlib is imported here, not at the top: its backend must be set before pyplot loads,
    # and only the report draws.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_bytes(fig, fmt: str, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    meta = {"Software": None} if fmt == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


def method_order(names, board=None) -> list[str]:
    """Methods in leaderboard order (best LE first), controls last."""
    names = list(dict.fromkeys(names))
    if board is not None and len(board):
        b = board.dropna(subset=["le"]) if "le" in board.columns else board
        mean_le = b.groupby("method")["le"].mean() if "le" in b.columns else None
        ctrl = set(board.loc[board["control"].astype(bool), "method"]) if "control" in board.columns else set()
        key = lambda m: (m in ctrl, float(mean_le.get(m, np.inf)) if mean_le is not None else 0.0, m)  # noqa: E731
        return sorted(names, key=key)
    return sorted(names)


def figure3(group: Group, board=None):
    """The matplotlib figure, or None when the group has no agnosticism rows."""
    f = figure3_frame(group)
    if board is not None and len(board) and "method" in board.columns:  # the methods the leaderboard shows
        f = f[f["method"].isin(set(board["method"].astype(str)))]
    if f.empty:
        return None
    plt = _plt()
    evals = [e for e in group.protocol.get("eval_models") or [] if e in set(f["eval_model"])] or sorted(set(f["eval_model"]))
    methods = method_order(f["method"].unique(), board)
    ncols = min(2, len(evals))
    nrows = -(-len(evals) // ncols)
    width = max(6.0, 0.55 * len(methods) * 1.0 + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.2 * nrows), squeeze=False)
    x = np.arange(len(methods))
    w = 0.2
    for k, ev in enumerate(evals):
        ax = axes[k // ncols][k % ncols]
        fe = f[f["eval_model"] == ev]
        for j, v in enumerate(VARIANTS):
            fv = fe[fe["variant"] == v].set_index("method")["top1"]
            vals = [fv.get(m, np.nan) for m in methods]
            ax.bar(x + (j - 1.5) * w, vals, w, label=VARIANT_LABELS[v], color=VARIANT_COLORS[v], edgecolor="none")
        cross = bool(fe["cross"].all())
        ax.set_title(f"eval: {ev}" + ("" if cross else "  (masks from itself)"), fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for k in range(len(evals), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 1.02))
    fig.suptitle("Top-1 of each eval classifier on images masked by maps from the other source classifiers", y=1.07, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- qualitative
def qualitative(group: Group, board=None, *, n_images: int = EXAMPLE_COUNT, max_methods: int = 10) -> tuple[bytes | None, list[str]]:
    """PNG bytes of the qualitative figure (or None) and notes on what was left out.

    Drawn from the example images the run stored (``salbench.examples``), for the first source
    classifier with rows: per image the original with its boxes, then per method the map,
    the masked-in (b·x), masked-out ((1−b)·x) and inpainted images.
    """
    run = group.runs[0]
    image_rows, map_rows = read_examples(run.path)
    if not image_rows or not map_rows:
        return None, [f"qualitative figure skipped: run {run.run_id} stores no example images (runs written before salbench stored them: rerun)"]
    loc = group.loc[group.loc["error"].isna()]
    have = {str(x) for x in loc["source_model"].unique()}
    sources = [s for s in group.models if s in have]
    if not sources:
        return None, ["qualitative figure skipped: no source classifier with rows"]
    source = sources[0]
    notes: list[str] = []
    if n_images > len(image_rows):
        notes.append(f"qualitative figure: {n_images} images asked, the run stores {len(image_rows)}")
    images = sorted(image_rows, key=lambda r: r["image_index"])[:n_images]
    stored: dict[tuple[str, int], dict] = {}
    for r in map_rows:  # a classifier-independent method's maps are stored once, with no source
        if r["source_model"] == source or (not isinstance(r["source_model"], str) and (r["method"], r["image_index"]) not in stored):
            stored[(str(r["method"]), int(r["image_index"]))] = r
    methods = [str(m) for m in loc.loc[loc["source_model"] == source, "method"].unique() if any(k[0] == m for k in stored)]
    if board is not None and len(board) and "method" in board.columns:
        methods = [m for m in methods if m in set(board["method"].astype(str))]
    methods = method_order(methods, board)[:max_methods]
    if not methods:
        return None, notes + [f"qualitative figure skipped: no stored maps of the methods shown for {source}"]
    spec = run.meta.get("spec", {})
    plt = _plt()
    row_kinds = ("map", "masked_in", "masked_out", "inpainted")
    nrows, ncols = len(images) * len(row_kinds), 1 + len(methods)
    cell = 1.25
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    for i, img_row in enumerate(images):
        image = decode_image(img_row)
        for r, kind in enumerate(row_kinds):
            row = i * len(row_kinds) + r
            ax0 = axes[row][0]
            if r == 0:
                ax0.imshow(image)
                cname = img_row["class_name"] or str(img_row["label"])
                ax0.set_title(f"{img_row['image_id']}\n{cname}", fontsize=6)
                for bx in img_row["boxes"]:
                    ax0.add_patch(plt.Rectangle((bx[0] - 0.5, bx[1] - 0.5), bx[2] - bx[0], bx[3] - bx[1], fill=False, ec="#00e000", lw=0.8))
                ax0.set_ylabel("map", fontsize=7)
            else:
                ax0.text(0.5, 0.5, VARIANT_LABELS[kind], ha="center", va="center", fontsize=8, transform=ax0.transAxes)
                for sp in ax0.spines.values():
                    sp.set_visible(False)
            for c, name in enumerate(methods, start=1):
                ax = axes[row][c]
                if kind == "map" and i == 0:
                    ax.set_title(name, fontsize=8)
                got = stored.get((name, int(img_row["image_index"])))
                if got is None:  # the pair failed on this image: an empty cell
                    continue
                drawn = decode_maps(got, image)
                if kind == "map":
                    ax.imshow(image)
                    ax.imshow(drawn["map"], cmap="jet", alpha=0.5, vmin=0, vmax=1)
                else:
                    ax.imshow(drawn[kind])
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Maps of source classifier {source}; binarise {spec.get('binarize', 'mean_area')}, inpaint {spec.get('inpaint', 'telea')}", fontsize=9)
    fig.tight_layout()
    png = save_bytes(fig, "png", dpi=100)
    plt.close(fig)
    return png, notes


#: Curve columns drawn by ``causal_curves`` (panel title, column); absent columns are skipped.
CURVE_PANELS = (("deletion (source) ↓", "deletion_curve"), ("insertion (source) ↑", "insertion_curve"),
                ("deletion (cross) ↓", "deletion_cross_curve"), ("insertion (cross) ↑", "insertion_cross_curve"))


def causal_curves(group: Group, board=None):
    """Mean deletion / insertion curves per method (over images and source classifiers), read
    from the localization table's curve columns; None when no run of the group stored curves."""
    import pandas as pd

    from salbench.results import read_table

    frames = []
    for run in group.runs:
        try:
            f = read_table(run.path, "localization", columns=["method", "error", *(c for _, c in CURVE_PANELS)])
        except Exception:  # a run from before the curves existed: nothing to draw from it
            continue
        frames.append(f[f["error"].isna()])
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    panels = [(t, c) for t, c in CURVE_PANELS if c in df.columns and df[c].notna().any()]
    if not panels:
        return None
    methods = method_order(df["method"].astype(str).unique(), board)
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (title, col) in zip(axes[0], panels):
        for m in methods:
            rows = [np.asarray(v, dtype=np.float64) for v in df.loc[df["method"].astype(str) == m, col] if v is not None]
            if not rows or len({len(r) for r in rows}) != 1:
                continue
            mean = np.mean(np.stack(rows), axis=0)
            ax.plot(np.linspace(0, 1, len(mean)), mean, label=f"{m} ({len(rows)})", lw=1.4,
                    ls="--" if method_family_is_control(m, board) else "-")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of pixels", fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("target probability", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))


# ----------------------------------------------------------------------------- sanity, agreement, cost
def sanity_figure(frame):
    """Similarity of each randomised map to the original against the randomised depth (MPRT),
    one column per source classifier, one row per similarity; None without MPRT rows."""
    f = frame[frame["test"] == "mprt"] if len(frame) else frame
    if f.empty:
        return None
    plt = _plt()
    sims = [c for c in ("spearman", "ssim", "hog") if c in f.columns]
    sources = list(dict.fromkeys(f["source_model"]))
    fig, axes = plt.subplots(len(sims), len(sources), figsize=(3.6 * len(sources), 2.6 * len(sims)), squeeze=False, sharey=True)
    for j, src in enumerate(sources):
        part = f[f["source_model"] == src]
        layers = dict(zip(part["depth"].astype(int), part["layers"]))
        ticks = [0, *sorted(layers)]
        for i, sim in enumerate(sims):
            ax = axes[i][j]
            for method, rows in part.groupby("method", sort=False):
                rows = rows.sort_values("depth")
                control = bool(rows["control"].iloc[0])
                ax.plot([0, *rows["depth"].astype(int)], [1.0, *rows[sim]], marker="o", ms=3, lw=1, ls="--" if control else "-",
                        color="#9e9e9e" if control else None, label=method)
            ax.set_xticks(ticks)
            ax.set_xticklabels(["trained", *(layers[t] for t in ticks[1:])], rotation=45, ha="right", fontsize=7)
            ax.axhline(0, color="#cccccc", lw=0.5)
            if j == 0:
                ax.set_ylabel(sim)
            if i == 0:
                ax.set_title(src, fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("MPRT: similarity to the original map, randomising from the top layer group down (lower = passes)", fontsize=9)
    fig.tight_layout()
    return fig


def method_family_is_control(method: str, board=None) -> bool:
    if board is not None and len(board) and "control" in board.columns:
        return bool(board.loc[board["method"].astype(str) == method, "control"].astype(bool).any())
    return False


def agreement_figure(agreement, metrics, matrix):
    """Kendall-tau heat map of metric pairs, one panel per source classifier; None when empty."""
    if agreement.empty or len(metrics) < 2:
        return None
    plt = _plt()
    sources = list(dict.fromkeys(agreement["source_model"]))
    n = len(metrics)
    fig, axes = plt.subplots(1, len(sources), figsize=(0.45 * n * len(sources) + 2, 0.45 * n + 1.8), squeeze=False)
    im = None
    for j, src in enumerate(sources):
        ax = axes[0][j]
        mat = matrix(agreement, src, metrics)
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu")
        for a in range(n):
            for b in range(n):
                if not np.isnan(mat[a, b]):
                    ax.text(b, a, f"{mat[a, b]:.1f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(n))
        ax.set_xticklabels(metrics, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(metrics if j == 0 else [""] * n, fontsize=7)
        ax.set_title(src, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="Kendall τ of method rankings")
    return fig


def quality_cost_figure(frame, metric: str, header: str, speed_source: str):
    """Score on ``metric`` against images/s (log axis), one panel per source classifier, Pareto
    front joined; None without points."""
    if frame.empty:
        return None
    plt = _plt()
    sources = list(dict.fromkeys(frame["source_model"]))
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.4), squeeze=False)
    for j, src in enumerate(sources):
        ax = axes[0][j]
        part = frame[frame["source_model"] == src]
        ctrl = part["control"].fillna(False).astype(bool)
        ax.scatter(part.loc[~ctrl, "images_per_s"], part.loc[~ctrl, "score"], s=18, color="#2b8cbe", zorder=3)
        ax.scatter(part.loc[ctrl, "images_per_s"], part.loc[ctrl, "score"], s=14, color="#9e9e9e", marker="s", zorder=3)
        front = part[part["pareto"]].sort_values("images_per_s")
        ax.plot(front["images_per_s"], front["score"], color="#e34a33", lw=1.2, zorder=2, label="Pareto front")
        for r in part.itertuples():
            ax.annotate(r.method, (r.images_per_s, r.score), fontsize=6, xytext=(3, 2), textcoords="offset points",
                        color="#e34a33" if r.pareto else "#333333")
        ax.set_xscale("log")
        ax.set_xlabel(f"images/s ({speed_source})")
        ax.set_ylabel(header if j == 0 else "")
        ax.set_title(src, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
