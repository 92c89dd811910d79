"""Report analysis sections: metric agreement (Kendall tau), the quality-vs-cost Pareto front, the
sanity summaries and figures (all from result files)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from salbench.agreement import agreement_matrix, metric_agreement, ranked_metrics
from salbench.quality_cost import pareto_front, quality_cost_frame
from salbench.tables import load_groups
from test_report_fixtures import make_run


def _board(le, f1, control=None):
    n = len(le)
    return pd.DataFrame({"method": [f"m{i}" for i in range(n)], "source_model": "zoo:a", "images": 10, "le": le, "f1": f1,
                         "control": control if control is not None else [False] * n})


def test_identical_rankings_give_tau_one_reversed_minus_one_direction_aware():
    le = [10.0, 20.0, 30.0, 40.0]  # lower is better: m0 best
    same = _board(le, [90.0, 80.0, 70.0, 60.0])  # f1 higher is better: m0 best too -> same ranking
    rev = _board(le, [60.0, 70.0, 80.0, 90.0])
    assert metric_agreement(same, ["le", "f1"])["tau"].item() == pytest.approx(1.0)
    assert metric_agreement(rev, ["le", "f1"])["tau"].item() == pytest.approx(-1.0)
    mat = agreement_matrix(metric_agreement(rev, ["le", "f1"]), "zoo:a", ["le", "f1"])
    assert np.allclose(mat, [[1, -1], [-1, 1]])


def test_agreement_leaves_controls_out_and_needs_three_methods():
    b = _board([10.0, 20.0, 30.0, 1.0], [90.0, 80.0, 70.0, 0.0], control=[False, False, False, True])
    got = metric_agreement(b, ["le", "f1"])
    assert got["tau"].item() == pytest.approx(1.0) and got["methods"].item() == 3  # the control would have broken the tie
    two = _board([10.0, 20.0], [90.0, 80.0])
    assert np.isnan(metric_agreement(two, ["le", "f1"])["tau"].item())
    assert ranked_metrics(_board([1.0] * 3, [2.0] * 3).assign(area=0.3), ["le", "area", "nope"]) == ["le"]  # area ranks nothing


def test_pareto_front_on_a_hand_built_case():
    speed = np.array([1.0, 10.0, 100.0, 5.0, 100.0, 50.0])
    score = np.array([90.0, 80.0, 40.0, 70.0, 30.0, 40.0])
    # 0: best score; 1: faster, 2nd best; 2: fastest; 3: beaten by 1; 4: beaten by 2; 5: beaten by 2
    assert pareto_front(score, speed, True).tolist() == [True, True, True, False, False, False]
    # lower is better: score negated, the front flips to the low scores
    assert pareto_front(score, speed, False).tolist() == [False, False, False, False, True, False]


def test_quality_cost_uses_the_throughput_table_else_the_runs_map_timing(tmp_path):
    from salbench.tables import leaderboard

    tp = [{"kind": "method", "method": m, "model": "zoo:cnn_a", "device": "cpu", "dtype": "float32", "batch_size": 8, "images_per_s": v}
          for m, v in (("gradcam", 100.0), ("gradient", 50.0), ("centre", 1000.0), ("full", 1000.0), ("random", 1000.0))]
    with_tp = make_run(tmp_path / "a", models=("zoo:cnn_a",), throughput=tp)
    g = load_groups([with_tp])[0]
    f, where = quality_cost_frame(g, leaderboard(g, n_boot=50), "f1")
    assert where == "throughput table" and dict(zip(f["method"], f["images_per_s"]))["gradcam"] == 100.0
    timing = {"maps/gradcam/zoo:cnn_a": 2.0, "maps/gradient/zoo:cnn_a": 6.0, "maps/centre/zoo:cnn_a": 0.01, "eval/gradcam/zoo:cnn_a": 9.0}
    run = make_run(tmp_path / "b", models=("zoo:cnn_a",), map_timing=timing)
    g = load_groups([run])[0]
    f, where = quality_cost_frame(g, leaderboard(g, n_boot=50), "f1")
    got = dict(zip(f["method"], f["images_per_s"]))
    assert where == "run map timing" and got["gradcam"] == pytest.approx(30.0) and got["gradient"] == pytest.approx(10.0)
    assert "random" not in got  # no timing recorded: no point, not a made-up one
    assert not f.loc[f["control"].astype(bool), "pareto"].any()


def test_report_shows_sanity_summaries_agreement_and_cost_figures(tmp_path):
    from salbench.report import write_report

    run = make_run(tmp_path / "run", methods=("gradcam", "gradient", "guided_backprop", "centre", "full", "random"), sanity_images=30, map_timing={"maps/gradcam/zoo:cnn_a": 1.0, "maps/gradient/zoo:cnn_a": 3.0})
    res = write_report([run], tmp_path / "rep", qualitative=False, n_boot=100)
    board = res["report"].boards[0]
    ctrl = board[board["method"].isin(["centre", "full", "random"])]
    assert (ctrl["mprt_spearman"] == 1.0).all() and (ctrl["random_logit_ssim"] == 1.0).all()
    grad = board[(board["method"] == "gradcam")].iloc[0]
    san = pd.read_parquet(run / "sanity")
    full = san[(san["method"] == "gradcam") & (san["source_model"] == grad["source_model"]) & (san["depth"] == 3)]
    assert grad["mprt_spearman"] == pytest.approx(full["spearman"].mean()) and grad["mprt_spearman_lo"] < grad["mprt_spearman"] < grad["mprt_spearman_hi"]
    for name in ("sanity", "agreement", "quality_cost"):
        assert (tmp_path / "rep" / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "rep" / "tables" / f"{name}.csv").is_file()
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "MPRT ρ (all random) ↓" in md and "random-logit SSIM ↓" in md and "Metric agreement" in md
    html = (tmp_path / "rep" / "leaderboard.html").read_text()
    assert "Sanity checks (Adebayo et al. 2018)" in html and "Quality vs cost" in html
    agr = pd.read_csv(tmp_path / "rep" / "tables" / "agreement.csv")
    assert len(agr)
    # the sanity table has one row per (source, method, test, depth)
    st = pd.read_csv(tmp_path / "rep" / "tables" / "sanity.csv")
    assert len(st) == 2 * 6 * 4


def test_report_cli_refuses_an_unknown_cost_metric_and_a_bad_throughput_path(tmp_path):
    from salbench.cli import main

    run = make_run(tmp_path / "run", models=("zoo:cnn_a",))
    r = CliRunner().invoke(main, ["report", str(run), "--cost-metric", "f11", "--no-qualitative"])
    assert r.exit_code == 2 and "f11" in r.output and "f1" in r.output
    bad = tmp_path / "x.csv"
    bad.write_text("a\n")
    r = CliRunner().invoke(main, ["report", str(run), "--throughput", str(bad), "--no-qualitative"])
    assert r.exit_code == 2 and "throughput.parquet" in r.output
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete"
