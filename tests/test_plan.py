"""The cost plan: passes counted per stage from the methods' and metrics' declared costs, priced
with per-classifier speeds, printed by `salbench plan` / `run --dry-run` without writing a run;
and the run's progress bar, weighted by the plan."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from salbench.config import RunSpec
from salbench.methods import create_method
from salbench.plan import Speeds, build_plan, format_plan, speeds_from_throughput
from salbench.progress import RunProgress
from salbench.runner import resolve

SPEC = dict(dataset="synthetic?n=10&size=32", methods=["gradcam", "rise", "centre"], models=["zoo:a", "zoo:b"], eval_models=["zoo:a", "zoo:b", "zoo:c"],
            method_params={"rise": {"n_masks": 8}}, metrics=["le", "classification"])


@pytest.fixture()
def resolved(monkeypatch):
    from salbench import runner

    monkeypatch.setattr(runner, "expand_model_specs", lambda specs, **k: list(specs))  # names only: nothing is loaded
    return resolve(RunSpec(**SPEC))


def _methods(r):
    return {m: create_method(m, **r.method_params.get(m, {})) for m in r.methods}


def test_passes_are_counted_per_stage(resolved):
    plan = build_plan(resolved, _methods(resolved), Speeds())
    n = 10
    by = lambda stage: (sum(r.total_forwards for r in plan.rows if r.stage == stage), sum(r.total_backwards for r in plan.rows if r.stage == stage))  # noqa: E731
    assert by("clean") == (3 * n, 0)  # every classifier scores the clean images once
    # gradcam: 1 fwd + 1 bwd per source; rise: 8 fwd per source; centre: none (and once, not per source)
    assert by("maps") == (2 * (1 + 8) * n, 2 * 1 * n)
    # masked-in / masked-out / inpainted through 3 eval classifiers, per map: 2 sources x 2 methods + centre once
    assert by("eval") == ((2 * 2 + 1) * 3 * 3 * n, 0)
    assert plan.total_seconds is None and "pass --throughput or --calibrate" in format_plan(plan)


def test_seconds_are_passes_times_speeds(resolved):
    sp = Speeds(forward={"zoo:a": 1e-3, "zoo:b": 2e-3, "zoo:c": 4e-3}, backward={"zoo:a": 3e-3, "zoo:b": 5e-3, "zoo:c": 0.0}, compose=1e-2, localize=2e-2)
    plan = build_plan(resolved, _methods(resolved), sp, not_applicable={("gradcam", "zoo:b"): "no"})
    n = 10
    clean = n * (1e-3 + 2e-3 + 4e-3)
    maps = n * ((1e-3 + 3e-3) + 8 * 1e-3 + 8 * 2e-3)  # gradcam on zoo:b is not applicable
    pairs = 4  # gradcam@a, rise@a, rise@b, centre once
    evals = pairs * n * 3 * (1e-3 + 2e-3 + 4e-3)
    per_map = pairs * n * (1e-2 + 2e-2)
    assert plan.total_seconds == pytest.approx(clean + maps + evals + per_map)
    assert ("gradcam", "zoo:b") not in plan.pair_seconds() and ("centre", "*") in plan.pair_seconds()
    text = format_plan(plan)
    assert "gradcam on zoo:b" in text and "total" in text


def test_speeds_come_from_the_throughput_rows_nearest_the_batch_size():
    rows = [dict(kind="forward", model="m", image_size=32, batch_size=b, ms_per_batch=b * ms, dtype="float32", error=None) for b, ms in ((8, 2.0), (64, 1.0))]
    rows += [dict(kind="forward_backward_baseline", model="m", image_size=32, batch_size=64, ms_per_batch=64 * 3.0, dtype="float32", error=None),
             dict(kind="forward", model="m", image_size=224, batch_size=64, ms_per_batch=64 * 50.0, dtype="float32", error=None)]
    sp = speeds_from_throughput(pa.Table.from_pylist(rows), ["m", "other"], 32, 48, "t")
    assert sp.forward["m"] == pytest.approx(1e-3) and sp.backward["m"] == pytest.approx(2e-3)
    assert not sp.known("other")


def test_progress_reaches_the_whole_run_and_counts_shared_maps_once(resolved):
    plan = build_plan(resolved, _methods(resolved), Speeds())
    bar = RunProgress(plan, pending_images=10, desc="t", disable=True)
    for k, size in ((1, 6), (2, 4)):
        bar.start_batch(k, 2, size)
        for src in resolved.models:
            for m in resolved.methods:
                bar.step(m, src)
        bar.end_batch(0, 0)
    assert bar.done == pytest.approx(bar.total)
    assert "eta" in bar._eta()


def test_plan_command_and_dry_run_write_nothing(tmp_path, monkeypatch):
    from salbench import zoo
    from salbench.cli import main
    from testutils import tiny_resnet_recipe

    zoo.register_recipe(tiny_resnet_recipe("plan-tiny", seed=5), replace=True)
    zoo.build(["plan-tiny"], progress=False)
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "synthetic?n=8&size=32&classes=4", "--models", "zoo:plan-tiny", "--methods", "gradcam,centre", "--batch-size", "4"]
    res = CliRunner().invoke(main, ["plan", *args])
    assert res.exit_code == 0, res.output
    assert "gradcam" in res.output and "total" in res.output and "?" not in res.output.split("total")[-1].splitlines()[0]
    res = CliRunner().invoke(main, ["run", "--dry-run", *args])
    assert res.exit_code == 0 and "total" in res.output
    assert not (tmp_path / "results").exists()
    # a later run's progress bar starts from the saved speeds, and run.json keeps the estimate and the stage times
    res = CliRunner().invoke(main, ["run", *args, "--out", "r", "--no-progress"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["plan_estimate_s"] > 0
    assert {"clean", "maps", "eval", "compose", "localize"} <= set(meta["timing"]["stages"])
    assert set(meta["timing"]["maps_by_method"]) == {"gradcam", "centre"}
    bad = CliRunner().invoke(main, ["plan", *args, "--throughput", str(tmp_path / "nope.parquet")])
    assert bad.exit_code == 2 and "no such file" in bad.output


def test_sanity_stage_is_priced_per_recomputed_map(monkeypatch):
    from salbench import runner

    monkeypatch.setattr(runner, "expand_model_specs", lambda specs, **k: list(specs))
    r = resolve(RunSpec(**{**SPEC, "metrics": ["sanity", "classification"], "metric_params": {"sanity": {"images": 4, "depths": [1]}}}))
    plan = build_plan(r, _methods(r), Speeds())
    sanity = [row for row in plan.rows if row.stage == "sanity"]
    # gradcam on each source, recomputed at depth 1, fully random and for a random logit (3x); rise is
    # excluded by default and the classifier-independent centre is never recomputed
    assert {(row.method, row.source) for row in sanity} == {("gradcam", "zoo:a"), ("gradcam", "zoo:b")}
    assert all(row.images == 4 and row.forwards == 3 and row.backwards == 3 for row in sanity)


def test_speeds_follow_the_run_dtype_and_price_a_timm_classifier_by_its_random_init_rows():
    rows = [dict(kind="forward", model="random:resnet50", image_size=224, batch_size=128, ms_per_batch=128 * ms, dtype=dt, error=None)
            for dt, ms in (("float32", 4.0), ("bfloat16", 1.0))]
    rows.append(dict(kind="forward", model="random:resnet50.a1_in1k", image_size=224, batch_size=128, ms_per_batch=128 * 0.5, dtype="bfloat16", error=None))
    table = pa.Table.from_pylist(rows)
    # `salbench throughput --models resnet50` names its rows random:resnet50: they price the pretrained classifier
    assert speeds_from_throughput(table, ["resnet50.a2_in1k"], 224, 128, "t", "bfloat16").forward["resnet50.a2_in1k"] == pytest.approx(1e-3)
    assert speeds_from_throughput(table, ["resnet50@w.pth"], 224, 128, "t").forward["resnet50@w.pth"] == pytest.approx(4e-3)
    # the exact tag first; a zoo classifier only by its own rows
    assert speeds_from_throughput(table, ["resnet50.a1_in1k"], 224, 128, "t", "bfloat16").forward["resnet50.a1_in1k"] == pytest.approx(0.5e-3)
    assert "zoo:resnet50" not in speeds_from_throughput(table, ["zoo:resnet50"], 224, 128, "t", "bfloat16").forward


def test_planned_dataset_takes_count_size_and_masks_from_the_spec_without_opening_it():
    from salbench.errors import UsageError
    from salbench.planned_dataset import PlannedDataset

    d = PlannedDataset("imagenet:/nowhere/ILSVRC2012/val?size=48&limit=30", 50000)
    assert len(d) == 30 and d.image_size == (48, 48) and d.num_classes == 1000 and not d.has_masks
    s = d[3]
    assert s.image.shape == (3, 48, 48) and s.gt_mask is None and s.boxes.shape[-1] == 4 and 0 <= s.label < 1000
    assert PlannedDataset("imagenet:/nowhere", 7).image_size == (224, 224)  # the format's default crop
    assert PlannedDataset("folder:/nowhere?masks=/m", 5).has_masks
    small = PlannedDataset("folder:/nowhere?masks=/m&size=12", 5)[0]  # below the renderer's 16 px: resized, mask too
    assert small.image.shape == (3, 12, 12) and small.gt_mask.shape == (12, 12) and small.gt_mask.dtype == torch.bool
    syn = PlannedDataset("synthetic?size=32&classes=4", 12)
    assert len(syn) == 12 and syn[0].gt_mask is not None and syn[0].gt_mask.shape == (32, 32)
    from salbench.datasets import build_dataset

    real = build_dataset("synthetic?size=32&classes=4")  # the spec's own images, beyond its n too
    assert torch.equal(syn[3].image, real[3].image) and syn[3].label == real[3].label
    for bad in (0, -3):
        with pytest.raises(UsageError, match="--images"):
            PlannedDataset("imagenet:/nowhere", bad)
    with pytest.raises(UsageError, match="size"):
        PlannedDataset("imagenet:/nowhere?size=4", 10)


def test_plan_before_the_download(tmp_path, monkeypatch):
    """A study on a dataset that is not here, with pretrained weights that are not here: the plan
    prices it (random weights of the same architectures, synthetic content at the spec's size)."""
    from salbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "imagenet:/nowhere/val?size=32", "--models", "resnet18.a1_in1k", "--eval-models", "resnet18.a1_in1k",
            "--methods", "gradcam,centre", "--metrics", "le,classification", "--batch-size", "64"]
    res = CliRunner().invoke(main, ["plan", *args, "--images", "50000", "--calibration-batch", "2", "--brief"])
    assert res.exit_code == 0, res.output
    assert "planned for 50000 images of 32x32 px (without pixel masks)" in res.output
    assert "priced as random:resnet18.a1_in1k" in res.output
    total = [line for line in res.output.splitlines() if line.startswith("total")][0]
    assert "?" not in total and int(total.split()[1]) == 50000 * (1 + 1 + 2 * 3)  # clean, gradcam, 3 variants of 2 maps
    # without --images the dataset is opened: one clear line, exit 2
    res = CliRunner().invoke(main, ["plan", *args])
    assert res.exit_code == 2 and "not a folder" in res.output
    assert not (tmp_path / "results").exists()


def test_long_estimates_read_in_hours_and_days():
    from salbench.plan import _fmt_s

    assert [_fmt_s(v) for v in (None, 59.94, 1800, 4 * 3600, 10 * 86400)] == ["?", "59.9", "30.0 min", "4.0 h", "10.0 d"]
