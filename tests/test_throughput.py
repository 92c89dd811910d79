"""Throughput measurement: table schema, positive numbers, merging, CLI, peers (when installed)."""

from __future__ import annotations

import importlib.util
import json
import math

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from salbench import throughput as tp
from salbench.cli_perf import throughput as throughput_cmd
from salbench.errors import NotApplicable, UsageError
from salbench.methods import METHODS
from salbench.methods.base import Capabilities, SaliencyMethod

TINY = {"test_resnet": {"input_size": 32}, "test_vit": {"input_size": 32, "img_size": 32}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kw) -> tp.ThroughputConfig:
    base = dict(methods=["gradient", "gradcam"], models=["test_resnet"], batch_sizes=[2], image_size=32, iters=2, warmup=1,
                device="cpu", model_overrides={"test_resnet": {"input_size": 32}})
    base.update(kw)
    return tp.ThroughputConfig(**base)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    table = tp.run_throughput(_cfg(pipeline_eval_models=2, inpaint="pushpull"), out)
    return out, table


def test_schema_and_positive_numbers(measured):
    out, table = measured
    assert table.schema == tp.THROUGHPUT_SCHEMA
    rows = table.to_pylist()
    assert {(r["kind"], r["method"]) for r in rows} == {
        ("forward", "-"), ("forward_backward_baseline", "-"), ("method", "gradient"), ("method", "gradcam"), ("pipeline", "gradient"), ("pipeline", "gradcam"),
    }
    for r in rows:
        assert r["error"] is None, r
        assert r["images_per_s"] > 0 and r["ms_per_batch"] > 0
        assert r["ms_per_batch_min"] <= r["ms_per_batch"] <= r["ms_per_batch_max"]
        assert math.isclose(r["images_per_s"], r["batch_size"] / r["ms_per_batch"] * 1e3)
        assert r["mem_kind"] in ("cpu_peak_rss_delta", "cuda_max_allocated", "unavailable")
        assert math.isnan(r["peak_mem_mb"]) if r["mem_kind"] == "unavailable" else r["peak_mem_mb"] >= 0
        assert r["device_type"] == "cpu" and r["dtype"] == "float32" and r["batch_size"] == 2 and r["image_size"] == 32
        assert (r["warmup"], r["iters"]) == (1, 2) and r["channels_last"] is False and r["compiled"] is False
        assert "torch" in json.loads(r["versions"])
        assert (r["eval_models"], r["inpaint"]) == ((2, "pushpull") if r["kind"] == "pipeline" else (0, None))
    assert len({r["run_id"] for r in rows}) == 1
    on_disk = tp.read_throughput(out)
    assert on_disk.schema == tp.THROUGHPUT_SCHEMA and on_disk.num_rows == table.num_rows


def test_rewrite_replaces_same_configuration(tmp_path):
    table = tp.run_throughput(_cfg(methods=["gradient"], baseline=False, iters=1, warmup=0), tmp_path)
    tp.write_throughput(tmp_path, table)
    assert tp.read_throughput(tmp_path).num_rows == 1
    other = table.set_column(table.schema.get_field_index("batch_size"), "batch_size", pa.array([4], pa.int64()))
    tp.write_throughput(tmp_path, other)
    assert sorted(tp.read_throughput(tmp_path).column("batch_size").to_pylist()) == [2, 4]


class _NeverApplicable(SaliencyMethod):
    name = "never_applicable"
    capabilities = Capabilities(family="control")

    def check(self, classifier):
        raise NotApplicable("needs something this classifier lacks")


def test_not_applicable_and_dtypes_become_rows(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "never_applicable", _NeverApplicable)
    table = tp.run_throughput(_cfg(methods=["never_applicable", "centre"], dtypes=["float32", "bfloat16"], channels_last=[False, True],
                                   baseline=False, iters=1, warmup=0))
    rows = table.to_pylist()
    assert len(rows) == 2 * 2 * 2
    bad = [r for r in rows if r["method"] == "never_applicable"]
    assert all(r["error"].startswith("not applicable: needs something") and math.isnan(r["images_per_s"]) for r in bad)
    good = [r for r in rows if r["method"] == "centre"]
    assert {(r["dtype"], r["channels_last"]) for r in good} == {("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)}
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in good)


def test_pipeline_eval_names_cycle_with_aliases():
    assert tp.pipeline_eval_names("a", ["a", "b"], 1) == ["a"]
    assert tp.pipeline_eval_names("b", ["a", "b"], 3) == ["b", "a", "b#2"]
    assert tp.pipeline_eval_names("a", ["a"], 3) == ["a", "a#2", "a#3"]


def test_bare_timm_names_mean_random_init_and_are_checked():
    assert tp.expand_models(["resnet18", "random:vit_tiny_patch16_224"]) == ["random:resnet18", "random:vit_tiny_patch16_224"]
    with pytest.raises(UsageError, match="resnet18"):
        tp.expand_models(["resnet81"])
    assert "never" not in tp.select_methods("*")


def test_time_callable_counts_calls_and_reports_medians():
    calls = []
    t = tp.time_callable(lambda: calls.append(1), torch.device("cpu"), iters=5, warmup=2)
    assert len(calls) == 7 and len(t.times_ms) == 5 and t.min_ms <= t.median_ms <= t.max_ms


def test_cli_writes_table_and_rejects_bad_names(tmp_path):
    runner = CliRunner()
    res = runner.invoke(throughput_cmd, ["--methods", "centre", "--models", "test_resnet", "--batch-sizes", "2", "--image-size", "32",
                                         "--iters", "1", "--warmup", "0", "--no-baseline", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "throughput.parquet").is_file() and "img/s" in res.output
    bad = runner.invoke(throughput_cmd, ["--methods", "gradcma", "--models", "test_resnet", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "gradcam" in bad.output
    bad = runner.invoke(throughput_cmd, ["--models", "resnt18", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "resnet18" in bad.output
    bad = runner.invoke(throughput_cmd, ["--batch-sizes", "8,x", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output
    assert not (tmp_path / "p").exists()


def test_half_masks_remove_exactly_half():
    m = tp.half_masks(3, 40, seed=1)
    assert m.shape == (3, 40, 40) and m.dtype == torch.bool
    assert (m.flatten(1).sum(1) == 800).all()


def test_inpainting_comparison_fields():
    from testutils import make_classifier

    clf = make_classifier("test_resnet", size=32)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = tp.inpainting_comparison(x, tp.half_masks(4, 32), {"cnn": clf}, rounds=1)
    assert res.removed_fraction == pytest.approx(0.5) and res.speedup > 0 and 0 <= res.top1_agreement["cnn"] <= 1
    assert 0 <= res.mean_abs_diff < 1 and "pushpull vs telea" in res.line()


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("captum", "pytorch_grad_cam")), reason="captum / grad-cam not installed")
def test_peer_maps_agree():
    from testutils import make_classifier

    clf = make_classifier("test_resnet", num_classes=10, size=32)
    results = tp.peer_comparison(classifier=clf, batch_size=3, image_size=32, device="cpu", rounds=1, warmup=0)
    assert {r.method for r in results} == {"gradcam", "gradient"}
    for r in results:
        assert r.agree, r.line()
        assert r.ours_ms > 0 and r.peer_ms > 0 and r.speedup > 0
    rows = tp.peer_rows(results)
    assert rows.schema == tp.THROUGHPUT_SCHEMA and rows.num_rows == 4


def test_faithfulness_peers_agree_and_scale_the_per_image_loops():
    """The per-image loop computes our deletion / insertion AUCs; the peers' times are scaled from
    the images they ran on to the batch; the rows fit the throughput table."""
    from salbench.faithfulness_peers import faithfulness_comparison
    from testutils import make_classifier

    clf = make_classifier("test_resnet", num_classes=10, size=32).eval()
    g = torch.Generator().manual_seed(0)
    x, maps = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    results = faithfulness_comparison(clf, x, maps, steps=4, fractions=(0.5,), rounds=1, peer_images=1)
    loop = results[0]
    assert loop.method == "deletion+insertion" and loop.agree and loop.max_abs_diff <= 1e-5, loop.line()
    assert "peer timed on 1 of 3 images, scaled x3" in loop.notes
    expected = {"deletion+insertion"} | ({"deletion"} if importlib.util.find_spec("quantus") else set()) \
        | ({"road"} if importlib.util.find_spec("pytorch_grad_cam") else set())
    assert {r.method for r in results} == expected
    for r in results:
        assert r.batch_size == 3 and r.ours_ms > 0 and r.peer_ms > 0 and r.speedup > 0, r.line()
    rows = tp.peer_rows(results)
    assert rows.schema == tp.THROUGHPUT_SCHEMA and rows.num_rows == 2 * len(results)


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("captum", "pytorch_grad_cam")), reason="captum / grad-cam not installed")
def test_cli_peers_include_the_faithfulness_peers(tmp_path):
    args = ["--methods", "centre", "--models", "test_resnet", "--batch-sizes", "2", "--image-size", "32", "--iters", "1", "--warmup", "0",
            "--no-baseline", "--device", "cpu", "--peers", "--peer-model", "test_resnet", "--peer-batch-size", "2", "--peer-rounds", "1",
            "--peer-images", "1", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(throughput_cmd, args)
    assert res.exit_code == 0, res.output
    assert "deletion+insertion vs per-image loop" in res.output and "road" in res.output
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "o" / "throughput.parquet").to_pandas()
    methods = set(table.loc[table["kind"] == "peer", "method"])
    assert {"salbench:road", "salbench:deletion+insertion", "salbench:gradcam"} <= methods, methods
    bad = CliRunner().invoke(throughput_cmd, args[:-4] + ["--peer-images", "0", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "--peer-images" in bad.output and not (tmp_path / "p").exists()
