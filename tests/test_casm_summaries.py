"""CASM run summaries: the leaderboard's numbers and the report's paired bootstrap, not a second copy."""

from __future__ import annotations

import numpy as np
import pytest

from salbench import tables as T
from salbench.casm import summaries as S
from salbench.metrics import bootstrap_ci
from test_report_fixtures import make_run

SRC = "zoo:cnn_a"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("casm-sum") / "run", methods=("casm", "casm-baseline", "centre"), models=(SRC, "zoo:vit_b"),
                    evals=(SRC, "zoo:vit_b", "zoo:other_c"), n_images=40, batch=20)


def test_summary_rows_are_the_leaderboards(run_dir):
    rows = S.summarize_run(run_dir, ["casm", "casm-baseline"])
    assert [r["method"] for r in rows] == ["casm", "casm-baseline"] and all(r["source_model"] == SRC for r in rows)
    board = T.leaderboard(T.load_groups([run_dir])[0])
    for r in rows:
        b = board[(board["method"] == r["method"]) & (board["source_model"] == SRC)].iloc[0]
        assert r["images"] == 40 and r["eval_models"] == ["zoo:other_c", "zoo:vit_b"]
        assert (r["le"], r["le_ci"]) == (b["le"], (b["le_lo"], b["le_hi"]))
        assert (r["inpainted"], r["inpainted_ci"]) == (b["inpainted_top1"], (b["inpainted_top1_lo"], b["inpainted_top1_hi"]))
    md = S.format_summary(rows)
    assert md.count("\n") == 4 and "casm-baseline" in md


def test_eval_models_narrow_the_cross_classifier_mean(run_dir):
    (row,) = S.summarize_run(run_dir, ["casm"], eval_models=["zoo:other_c"])
    agn = T.load_groups([run_dir])[0].agn
    sel = agn[(agn["method"] == "casm") & (agn["source_model"] == SRC) & (agn["eval_model"] == "zoo:other_c") & (agn["variant"] == "masked_out")]
    assert row["eval_models"] == ["zoo:other_c"] and row["masked_out"] == pytest.approx(100 * sel["top1"].mean())


def test_paired_difference_is_the_reports_paired_bootstrap(run_dir):
    d, (lo, hi) = S.paired_difference(run_dir, "casm", "casm-baseline", "inpainted")
    ref = T.paired_difference([run_dir], "casm", "casm-baseline", "inpainted_top1", SRC).iloc[0]
    assert (d, lo, hi) == (ref["diff"], ref["diff_lo"], ref["diff_hi"])
    per = T.per_image_agnosticism(T.load_groups([run_dir])[0])
    per = per[(per["source_model"] == SRC) & (per["variant"] == "inpainted")].pivot(index="image_id", columns="method", values="cross").sort_index()
    diff = 100 * (per["casm"] - per["casm-baseline"]).to_numpy(dtype=np.float64)
    assert d == pytest.approx(diff.mean()) and (lo, hi) == pytest.approx(bootstrap_ci(diff))
