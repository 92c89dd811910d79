"""A metric added as one module, outside the package, reaches every output without other edits:
the Parquet tables, the leaderboard (Markdown, HTML, JSON) and ``salbench compare``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from salbench.config import RunSpec
from salbench.metrics import METRIC_REGISTRY, unregister_metric
from salbench.results import read_table, table_bytes
from testutils import tiny_resnet_recipe

THROWAWAY = textwrap.dedent(
    '''
    import torch
    from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric

    @register_metric
    class PeakInBox(Metric):
        """1 where the map's maximum lies inside a GT box (a throwaway metric for this test)."""
        name = "throwaway_peak"
        needs = frozenset({"maps", "gt_boxes"})
        columns = (MetricInfo("throwaway_peak", "higher", True, "map maximum inside a GT box",
                              ci=True, leaderboard=True, compare=True, header="peak in box %"),)

        def compute(self, ctx: MapContext):
            b, h, w = ctx.maps.shape
            flat = ctx.maps.flatten(1).argmax(1)
            r, c = (flat // w).float() + 0.5, (flat % w).float() + 0.5
            bx = ctx.batch.boxes
            inside = (bx[..., 0] <= c[:, None]) & (c[:, None] < bx[..., 2]) & (bx[..., 1] <= r[:, None]) & (r[:, None] < bx[..., 3])
            return {"throwaway_peak": (inside & ctx.batch.box_valid).any(1).float()}
    '''
)


@pytest.fixture()
def throwaway_metric(tmp_path):
    path = tmp_path / "my_metric.py"
    path.write_text(THROWAWAY)
    spec = importlib.util.spec_from_file_location("my_metric_for_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield "throwaway_peak"
    unregister_metric("throwaway_peak")
    sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_a_metric_in_a_temporary_module_reaches_tables_leaderboard_and_compare(throwaway_metric, tmp_path):
    from salbench import zoo
    from salbench.compare import compare_runs, format_comparison, metric_means
    from salbench.report import leaderboard_frame, write_report
    from salbench.runner import run

    zoo.register_recipe(tiny_resnet_recipe("metric-e2e", seed=5), replace=True)
    spec = RunSpec(dataset="synthetic?n=12&size=32&classes=4", models=["zoo:metric-e2e"], methods=["gradient", "centre"],
                   batch_size=6, device="cpu")
    a = tmp_path / "a"
    run(spec, a, progress=False)

    loc = read_table(a, "localization")
    assert "throwaway_peak" in loc.columns and loc["throwaway_peak"].notna().all()
    assert set(loc["throwaway_peak"].unique()) <= {0.0, 1.0}
    assert "throwaway_peak" in pq.read_schema(next((a / "localization").glob("part-*.parquet"))).names

    files = write_report([a], a, qualitative=False)["files"]
    md = files["leaderboard.md"].read_text()
    assert "peak in box % ↑" in md
    assert "peak in box" in files["leaderboard.html"].read_text()
    board = leaderboard_frame([a])
    want = loc.groupby("method")["throwaway_peak"].mean() * 100
    for _, row in board.iterrows():
        assert row["throwaway_peak"] == pytest.approx(want[row["method"]])
        assert row["throwaway_peak_lo"] <= row["throwaway_peak"] <= row["throwaway_peak_hi"]

    # compare: the column is compared, with the leaderboard's meaning; moving it is a regression
    means = metric_means(a)
    assert "throwaway_peak" in means.columns
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for part in (b / "localization").glob("part-*.parquet"):  # a deliberate edit, recorded in the batch marker
        t = pq.read_table(part)
        col = t.schema.get_field_index("throwaway_peak")
        t = t.set_column(col, t.schema.field(col), [np.where(t.column("method").to_numpy(zero_copy_only=False) == "centre", 0.0, 1.0).astype(np.float32)])
        data = table_bytes(t)
        part.write_bytes(data)
        marker = b / "_progress" / f"{part.stem.removeprefix('part-')}.json"
        info = json.loads(marker.read_text())
        info["parts"]["localization"] = {"rows": t.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        marker.write_text(json.dumps(info))
    cmp = compare_runs(a, b)
    moved = [c for c in cmp.regressions if c.metric == "throwaway_peak"]
    assert moved and not [c for c in cmp.regressions if c.metric != "throwaway_peak"]
    assert "throwaway_peak" in format_comparison(cmp)
    assert "throwaway_peak" in METRIC_REGISTRY


@pytest.mark.slow
def test_compare_means_what_the_leaderboard_means(tmp_path):
    """compare's masked_out_top1 is cross-classifier (source excluded), its _self the source's own."""
    from salbench import zoo
    from salbench.compare import metric_means
    from salbench.report import leaderboard_frame
    from salbench.runner import run

    zoo.register_recipe(tiny_resnet_recipe("meaning-a", seed=6), replace=True)
    zoo.register_recipe(tiny_resnet_recipe("meaning-b", seed=7), replace=True)
    spec = RunSpec(dataset="synthetic?n=8&size=32&classes=4", models=["zoo:meaning-a"], eval_models=["zoo:meaning-a", "zoo:meaning-b"],
                   methods=["centre", "gradient"], batch_size=8, device="cpu")
    run(spec, tmp_path / "r", progress=False)
    means = metric_means(tmp_path / "r")
    board = leaderboard_frame([tmp_path / "r"]).set_index(["method", "source_model"])
    agn = read_table(tmp_path / "r", "agnosticism")
    for v in ("original", "masked_in", "masked_out", "inpainted"):
        for suffix, evals in (("", "zoo:meaning-b"), ("_self", "zoo:meaning-a")):
            name = f"{v}_top1{suffix}"
            for key in means.index:
                assert means.at[key, name] == pytest.approx(board.at[key, name])
                rows = agn[(agn["method"] == key[0]) & (agn["variant"] == v) & (agn["eval_model"] == evals)]
                assert means.at[key, name] == pytest.approx(100 * rows["top1"].mean())
