"""``salbench run --dataset imagenet:PATH --models NAME@WEIGHTS`` end to end on the ImageNet-shaped fixture."""

from __future__ import annotations

import json

import timm
import torch
from click.testing import CliRunner

from salbench.cli import main
from salbench.results import read_table


def test_imagenet_run_with_local_weights_end_to_end(imagenet_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000)
    weights = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": model.state_dict()}, weights)
    spec = f"test_resnet@{weights}"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"dataset: imagenet:{imagenet_dir.root}?annotations={imagenet_dir.csv}&size=64\n"
        f"models: ['{spec}']\n"
        "methods: [gradcam, centre]\n"
        f"model_overrides: {{'{spec}': {{input_size: 64}}}}\n"
        "batch_size: 4\n"
    )
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", "in1k", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp_path / "in1k"
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete"
    assert meta["dataset"]["num_classes"] == 1000 and meta["dataset"]["skipped"]  # skip counts recorded
    assert meta["classifiers"][spec]["weights_sha256"]
    loc = read_table(out, "localization")
    bad = loc[loc["error"].notna()]
    assert set(bad["image_id"]) == {"ILSVRC2012_val_00000006"}  # the truncated JPEG: error rows, not a crash
    assert bad["error"].str.startswith("corrupt image").all()
    good = loc[loc["error"].isna()]
    assert len(good) == 2 * (meta["dataset"]["num_images"] - 1)
    assert meta["counts"]["load_errors"] == 1
    assert meta["dataset"]["load_errors"] == {"corrupt_image": 1}  # the dataset section agrees with the counts
    assert [e["image_id"] for e in meta["dataset"]["load_error_images"]] == ["ILSVRC2012_val_00000006"]
    board = (out / "leaderboard.md").read_text()
    assert "gradcam" in board and spec in board
