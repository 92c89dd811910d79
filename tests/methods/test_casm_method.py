"""The registered CASM methods: registration, Params/config, applicability, maps from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from salbench import casm as C
from salbench import zoo
from salbench.errors import NotApplicable, UsageError
from salbench.methods import METHODS, create_method
from salbench.methods.casm import register_cached_maskers
from testutils import tiny_resnet_recipe

TINY = tiny_resnet_recipe("tiny-casm-m", seed=6)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def trained(tmp_path, monkeypatch):
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    zoo.register_recipe(TINY)
    spec = C.CasmSpec(
        name="unit", classifier="zoo:tiny-casm-m", init="scratch", dataset="synthetic?seed=6&classes=4&size=32", train_images=64,
        batch_size=8, steps=3, val_images=16, decoder_channels=4, thinning="FL",
    )
    return C.train(spec, progress=False), spec


def test_default_pair_is_registered_with_its_training_spec():
    assert "casm" in METHODS and "casm-baseline" in METHODS
    casm, base = create_method("casm"), create_method("casm-baseline")
    for m in (casm, base):
        assert m.capabilities.needs_training and not m.capabilities.classifier_dependent
        assert m.normalization == "none"
    cfg, cfg_b = casm.config()["params"], base.config()["params"]  # no training needed for the config
    assert (cfg["thinning"], cfg["score"], cfg["share_encoder"], cfg["train_classes"]) == ("L100", "entropy", True, None)
    assert cfg_b["thinning"] == "F" and cfg_b["score"] == "entropy"
    assert {"steps", "lambda_r", "classifier"} <= set(cfg) and cfg["lambda_r"] > 0
    assert casm.config()["training"]["key"] != base.config()["training"]["key"]
    tweaked = create_method("casm", thinning="L", train_classes=[3, 1])
    assert tweaked.config()["params"]["train_classes"] == [1, 3]
    assert tweaked.config()["training"]["key"] != casm.config()["training"]["key"]


def test_bad_params_are_usage_errors():
    with pytest.raises(UsageError, match="score"):
        create_method("casm", score="accuracy")
    with pytest.raises(UsageError, match="thinning"):
        create_method("casm", thinning="Q")


def test_default_masker_is_not_applicable_to_another_resolution():
    from testutils import make_classifier

    with pytest.raises(NotApplicable, match="64x64"):
        create_method("casm").check(make_classifier("test_resnet", size=32))  # no training triggered


def test_checkpoint_param_gives_unit_range_maps_at_image_size(trained):
    from testutils import make_classifier

    d, spec = trained
    method = create_method("casm", checkpoint=str(d))
    clf_a, clf_b = make_classifier("test_resnet", num_classes=4, size=32, seed=0), make_classifier("test_resnet", num_classes=4, size=32, seed=1)
    method.check(clf_a)
    x = torch.rand(3, 3, 32, 32)
    t = torch.tensor([0, 1, 2])
    maps = method(clf_a, x, t)
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.equal(maps, method(clf_b, x, t)), "the masker ignores the source classifier"
    assert torch.allclose(method(clf_a, x[1:2], t[1:2])[0], maps[1], atol=1e-6)  # batch invariance
    cfg = method.config()
    assert cfg["params"]["thinning"] == "FL" and cfg["params"]["steps"] == 3  # from the checkpoint's spec
    assert cfg["training"]["key"] == spec.key()
    with pytest.raises(UsageError, match="disagrees"):
        create_method("casm", checkpoint=str(d), thinning="L").config()


def test_named_masker_is_registered_and_matches_its_checkpoint(trained):
    d, spec = trained
    register_cached_maskers()
    assert "casm-unit" in METHODS
    named = create_method("casm-unit")
    assert named.masker_dir() == d  # located by the hash of its Params' spec: no retraining
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([0, 1])
    from testutils import make_classifier

    clf = make_classifier("test_resnet", num_classes=4, size=32)
    assert torch.equal(named(clf, x, t), create_method("casm", checkpoint=str(d))(clf, x, t))


def test_runner_records_the_training_spec_and_identical_maps_per_source(trained, tmp_path):
    """End to end through the runner: run.json's method_configs carry the training spec, and the
    masker's rows are identical for two source classifiers (classifier-agnostic at inference)."""
    from salbench.config import RunSpec
    from salbench.results import read_run_json, read_table
    from salbench.runner import run

    d, spec = trained
    register_cached_maskers()
    zoo.register_recipe(TINY.replace(name="tiny-casm-m2", seed=1))
    rs = RunSpec(dataset="synthetic?seed=6&classes=4&size=32", methods=["casm-unit"], models=["zoo:tiny-casm-m", "zoo:tiny-casm-m2"],
                 limit=6, batch_size=6, inpaint="telea", device="cpu")
    run_dir = run(rs, tmp_path / "run", progress=False)
    cfg = read_run_json(run_dir)["spec"]["method_configs"]["casm-unit"]
    assert (cfg["params"]["thinning"], cfg["params"]["score"], cfg["params"]["share_encoder"], cfg["params"]["train_classes"]) == ("FL", "entropy", True, None)
    assert cfg["training"]["key"] == spec.key()
    loc = read_table(run_dir, "localization")
    assert loc["error"].isna().all()
    a, b = (loc[loc["source_model"] == s].sort_values("image_index") for s in ("zoo:tiny-casm-m", "zoo:tiny-casm-m2"))
    assert a["le"].tolist() == b["le"].tolist() and a["area"].tolist() == b["area"].tolist()


def test_cli_train_group(trained):
    from click.testing import CliRunner

    from salbench.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["train", "--help"])
    assert res.exit_code == 0 and all(c in res.output for c in ("casm", "ablation", "unseen", "twin"))
    res = runner.invoke(main, ["train", "casm", "--thinning", "X9", "--no-progress"])
    assert res.exit_code == 2 and "thinning" in res.output
    res = runner.invoke(main, ["train", "casm", "--name", "unit", "--classifier", "zoo:tiny-casm-m", "--init", "scratch", "--dataset",
                               "synthetic?seed=6&classes=4&size=32", "--train-images", "64", "--batch-size", "8", "--steps", "3",
                               "--thinning", "FL", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "method casm-unit" in res.output and "thinning FL" in res.output


def test_attribute_never_trains_prepare_does(tmp_path, monkeypatch, capsys):
    """Computing maps never starts a training run: without a cached masker ``attribute`` raises,
    ``prepare`` trains it (one logged step) and the maps follow. Ordinary methods' prepare is a no-op."""
    from salbench.methods.casm import MaskerNotTrained, _method_class
    from testutils import make_classifier

    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    zoo.register_recipe(TINY)
    spec = C.CasmSpec(name="prep", classifier="zoo:tiny-casm-m", init="scratch", dataset="synthetic?seed=6&classes=4&size=32",
                      train_images=64, batch_size=8, steps=2, val_images=16, decoder_channels=4, thinning="L")
    method = _method_class("casm-prep", spec, "a masker trained in prepare")()
    clf = make_classifier("test_resnet", num_classes=4, size=32)
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    with pytest.raises(MaskerNotTrained, match=r"not trained.*prepare\(\)"):
        method(clf, x, t)
    assert not C.is_trained(spec) and not (tmp_path / "casm" / ".work").exists()
    method.prepare(torch.device("cpu"), progress=False)
    assert "casm: training masker 'prep' (not cached)" in capsys.readouterr().err
    assert C.is_trained(spec)
    maps = method(clf, x, t)
    assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() <= 1
    method.prepare(torch.device("cpu"), progress=False)  # cached: loads, no second training
    assert "training masker" not in capsys.readouterr().err
    assert create_method("centre").prepare(torch.device("cpu")) is None


def test_twin_coverage_runs_on_a_cached_masker(trained):
    """The twin experiment (above the runner) prepares each method, then scores both copies."""
    from salbench.casm.experiments import twin_coverage

    register_cached_maskers()
    rows = twin_coverage(["casm-unit", "centre"], n=8, source_model="zoo:tiny-casm-m", dataset="synthetic?variant=twin&seed=6&classes=4&size=32",
                         batch_size=4, n_boot=50, progress=False)
    assert [r["method"] for r in rows] == ["casm-unit", "centre"]
    for r in rows:
        assert r["images"] == 8 and 0 <= r["both"] <= 100 and abs(r["both"] + r["one"] + r["none"] - 100) < 1e-6
