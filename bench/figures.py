"""Report figures (matplotlib, Agg backend): CASM Figure 3 and a qualitative figure.

* ``figure3(group)``: for each eval classifier, top-1 on original, masked-in, masked-out and
  inpainted images, bars grouped by method (from the agnosticism table alone).
* ``qualitative(group)``: for a few seeded random images, the original, the map, and the
  masked-in, masked-out and inpainted images per method. The run stores only tables, so this
  recomputes the maps: rebuild the dataset from ``run.json``, load the source classifier and
  each method, binarise and compose exactly as the runner does. Returns ``(png, notes)``;
  ``png`` is None with a note when a classifier cannot be loaded (a zoo model that is not built
  is never trained from here).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from salbench.paper import figure3_frame
from salbench.tables import VARIANTS, Group

VARIANT_LABELS = {"original": "original", "masked_in": "masked-in", "masked_out": "masked-out", "inpainted": "inpainted"}
VARIANT_COLORS = {"original": "#9e9e9e", "masked_in": "#2b8cbe", "masked_out": "#e34a33", "inpainted": "#fdbb84"}


def _plt():
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
def _salt(method: str) -> int:  # the runner's per-method seed salt
    return int(hashlib.sha1(method.encode()).hexdigest()[:7], 16)


def _would_train(method) -> str | None:
    """Why computing ``method``'s maps would start a training run (None: it would not)."""
    if not getattr(method.capabilities, "needs_training", False):
        return None
    if hasattr(method, "masker_dir"):
        try:
            from salbench import casm

            return None if casm.is_complete(method.masker_dir()) else "its masker is not trained yet"
        except Exception as exc:
            return f"cannot locate its trained masker ({type(exc).__name__}: {exc})"
    return None


def _default_loader(spec: str, device: str):
    """Load a classifier for the figure; never trains a zoo model that is not built yet."""
    import torch

    from salbench.classifiers import ModelOptions, load_classifier

    if spec.startswith("zoo:"):
        from salbench import zoo

        if not zoo.is_built(spec[4:]):
            raise RuntimeError(f"zoo classifier {spec!r} is not built (run `salbench zoo build`)")
    return load_classifier(spec, ModelOptions(device=torch.device(device)))


def qualitative(group: Group, board=None, *, n_images: int = 3, seed: int | None = None, device: str = "cpu",
                loader: Callable[[str, str], Any] | None = None, max_methods: int = 10) -> tuple[bytes | None, list[str]]:
    """PNG bytes of the qualitative figure (or None) and notes on what was skipped."""
    import torch

    from salbench.datasets import build_dataset, collate
    from salbench.errors import NotApplicable
    from salbench.methods import create_method
    from salbench.metrics.agnosticism import compose
    from salbench.metrics.binarize import binarize
    from salbench.rng import image_seeds

    notes: list[str] = []
    loader = loader or _default_loader
    loc = group.loc[group.loc["error"].isna()]
    if loc.empty:
        return None, ["qualitative figure skipped: no localisation rows"]
    have = {str(x) for x in loc["source_model"].unique()}
    sources = [s for s in group.models if s in have]
    if not sources:
        return None, ["qualitative figure skipped: no source classifier with rows"]
    source = sources[0]
    run = group.runs[0]
    spec = run.meta.get("spec", {})
    try:
        dataset = build_dataset(spec["dataset"])
    except Exception as exc:
        return None, [f"qualitative figure skipped: cannot rebuild dataset {spec.get('dataset')!r}: {type(exc).__name__}: {exc}"]
    try:
        clf = loader(source, device)
        from salbench.weights import check_class_count, drop_background_class

        if check_class_count(clf.num_classes, dataset.num_classes, source):
            drop_background_class(clf)
    except Exception as exc:
        return None, [f"qualitative figure skipped: cannot load source classifier {source!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    want = run.meta.get("classifiers", {}).get(source, {}).get("weights_sha256")
    have = getattr(clf, "meta", {}).get("weights_sha256") if isinstance(getattr(clf, "meta", None), dict) else None
    if want and have and want != have:
        notes.append(f"qualitative figure: the weights of {source!r} differ from the run's (sha256 {have[:12]} vs {want[:12]}); maps may differ")
    indices = np.unique(loc["image_index"].to_numpy(dtype=np.int64))
    rng = np.random.default_rng(int(spec.get("seed", 0)) if seed is None else seed)
    chosen = np.sort(rng.choice(indices, size=min(n_images, len(indices)), replace=False))
    batch = collate([dataset[int(i)] for i in chosen])
    x = batch.images.to(device)
    labels = batch.labels.to(device)
    with torch.no_grad():
        logits = clf(x)
    targets = labels if spec.get("target", "label") == "label" else logits.argmax(1)
    methods = [str(m) for m in loc.loc[loc["source_model"] == source, "method"].unique()]
    if board is not None and len(board) and "method" in board.columns:
        methods = [m for m in methods if m in set(board["method"].astype(str))]
    methods = method_order(methods, board)[:max_methods]
    binarize_name, binarize_params = spec.get("binarize", "mean_area"), spec.get("binarize_params") or {}
    inpaint = spec.get("inpaint", "telea")
    results: dict[str, dict[str, np.ndarray]] = {}
    for name in methods:
        try:
            method = create_method(name, **group.method_params(name))
            why = _would_train(method)
            if why:
                notes.append(f"qualitative figure: {name} skipped: {why} (the report never trains)")
                continue
            method.check(clf)
            method.seed = int(spec.get("seed", 0))
            seeds = image_seeds(int(spec.get("seed", 0)), batch.index, _salt(name)).to(device)
            maps = method(clf, x, targets, seeds)
            b = binarize(maps, binarize_name, **binarize_params)
            out = {"map": maps.detach().float().cpu().numpy()}
            for v in ("masked_in", "masked_out", "inpainted"):
                out[v] = compose(x, b, v, inpaint=inpaint).detach().float().cpu().permute(0, 2, 3, 1).clamp(0, 1).numpy()
            results[name] = out
        except NotApplicable as exc:
            notes.append(f"qualitative figure: {name} not applicable to {source}: {exc}")
        except Exception as exc:
            notes.append(f"qualitative figure: {name} skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if not results:
        return None, notes + ["qualitative figure skipped: no method could be recomputed"]
    plt = _plt()
    names = list(results)
    images = x.detach().float().cpu().permute(0, 2, 3, 1).clamp(0, 1).numpy()
    row_kinds = ("map", "masked_in", "masked_out", "inpainted")
    nrows, ncols = len(chosen) * len(row_kinds), 1 + len(names)
    cell = 1.25
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    class_names = getattr(dataset, "class_names", None)
    for i in range(len(chosen)):
        for r, kind in enumerate(row_kinds):
            row = i * len(row_kinds) + r
            ax0 = axes[row][0]
            if r == 0:
                ax0.imshow(images[i])
                lab = int(batch.labels[i])
                cname = class_names[lab] if class_names and lab < len(class_names) else str(lab)
                ax0.set_title(f"{batch.ids[i]}\n{cname}", fontsize=6)
                for bx, ok in zip(batch.boxes[i].tolist(), batch.box_valid[i].tolist()):
                    if ok:
                        ax0.add_patch(plt.Rectangle((bx[0] - 0.5, bx[1] - 0.5), bx[2] - bx[0], bx[3] - bx[1], fill=False, ec="#00e000", lw=0.8))
                ax0.set_ylabel("map", fontsize=7)
            else:
                ax0.text(0.5, 0.5, VARIANT_LABELS[kind], ha="center", va="center", fontsize=8, transform=ax0.transAxes)
            for c, name in enumerate(names, start=1):
                ax = axes[row][c]
                if kind == "map":
                    ax.imshow(images[i])
                    ax.imshow(results[name]["map"][i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
                    if i == 0:
                        ax.set_title(name, fontsize=8)
                else:
                    ax.imshow(results[name][kind][i])
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        for row in range(nrows):
            if row % len(row_kinds):
                for s in axes[row][0].spines.values():
                    s.set_visible(False)
    fig.suptitle(f"Maps of source classifier {source}; binarise {binarize_name}, inpaint {inpaint}", fontsize=9)
    fig.tight_layout()
    png = save_bytes(fig, "png", dpi=100)
    plt.close(fig)
    return png, notes
