"""Pointing game, MaxBoxAccV2 and PxAP through a real run: list columns in the table, dataset-level
values with bootstrap intervals in the leaderboard (Markdown, HTML, JSON), the centre-point note,
and ``compare`` (which reduces the statistics as the leaderboard does)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from salbench.config import RunSpec
from salbench.metrics import metric_info
from salbench.results import read_table
from testutils import tiny_resnet_recipe


@pytest.mark.slow
def test_pointing_maxboxacc_pxap_reach_tables_leaderboard_and_compare(tmp_path):
    from salbench import zoo
    from salbench.compare import compare_runs, metric_means
    from salbench.report import leaderboard_frame, write_report
    from salbench.runner import run

    zoo.register_recipe(tiny_resnet_recipe("pixel-e2e", seed=5), replace=True)
    spec = RunSpec(dataset="synthetic?n=12&size=32&classes=4", models=["zoo:pixel-e2e"], methods=["gradient", "centre", "full"],
                   batch_size=6, device="cpu", metric_params={"maxboxacc": {"thresholds": 8}})
    a = tmp_path / "a"
    run(spec, a, progress=False)
    meta = json.loads((a / "run.json").read_text())
    configs = json.dumps(meta, default=str)
    assert '"thresholds": 8' in configs and '"tolerance": 2.143' in configs  # 15 px scaled to 32 px

    loc = read_table(a, "localization")
    assert {len(v) for v in loc["maxboxacc_iou"]} == {8} and {len(v) for v in loc["pxap_tp"]} == {101}  # PxAP: T = 100, plus t = 1
    board = leaderboard_frame([a]).set_index("method")
    info = metric_info("maxboxacc")
    for method, part in loc.groupby("method"):
        stats = [np.stack(part.sort_values("image_id")["maxboxacc_iou"].to_numpy()).astype(np.float64)]
        assert board.at[method, "maxboxacc"] == pytest.approx(100 * info.reduce(stats, np.ones((1, len(part))))[0])
        for name in ("maxboxacc", "pxap", "pointing"):
            assert board.at[method, f"{name}_lo"] <= board.at[method, name] <= board.at[method, f"{name}_hi"]
    # control: the full map is flat (normalised to zeros), so its PxAP is the object share of the pixels
    full = loc[loc["method"] == "full"]
    tp = np.stack(full["pxap_tp"].to_numpy()).sum(0)
    fp = np.stack(full["pxap_fp"].to_numpy()).sum(0)
    assert board.at["full", "pxap"] == pytest.approx(100 * tp[0] / (tp[0] + fp[0]), rel=1e-5)

    files = write_report([a], a, qualitative=False)["files"]
    md = files["leaderboard.md"].read_text()
    assert "MaxBoxAccV2 % ↑" in md and "PxAP % ↑" in md and "pointing % ↑" in md
    assert "pointing game chance level" in md and "MaxBoxAccV2" in files["leaderboard.html"].read_text()
    records = json.loads(files["leaderboard.json"].read_text())
    assert any(r.get("pointing_centre") is not None for r in records)

    means = metric_means(a)
    for name in ("maxboxacc", "pxap", "pointing"):
        for m in ("gradient", "centre", "full"):
            assert means.at[(m, "zoo:pixel-e2e"), name] == pytest.approx(board.at[m, name])
    cmp = compare_runs(a, a)
    assert cmp.ok and {"maxboxacc", "pxap", "pointing"} <= {c.metric for c in cmp.changes}
    assert not math.isnan(board.at["gradient", "pxap"])
