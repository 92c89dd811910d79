"""A run whose every map failed exits 1 with status "failed"; load errors are listed in run.json."""

from __future__ import annotations

import json

import pandas as pd
import timm
import torch
from click.testing import CliRunner

from salbench.cli import main
from salbench.run_outcome import all_failed, load_errors


def _local_classifier(tmp_path) -> str:
    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), path)
    return f"test_resnet@{path}"


def _run(tmp_path, spec: str, *extra: str):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"dataset: synthetic?n=4&size=32\nmodels: ['{spec}']\nmodel_overrides: {{'{spec}': {{input_size: 32}}}}\n"
                   "batch_size: 2\ndevice: cpu\n")
    return CliRunner().invoke(main, ["run", "--config", str(cfg), "--no-progress", *extra], catch_exceptions=False)


def test_every_row_failed_exits_1_with_status_failed(tmp_path, monkeypatch, one_thread):
    from salbench.methods.gradient import VanillaGradient

    def broken(self, classifier, images, targets, seeds):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(VanillaGradient, "attribute", broken)
    spec = _local_classifier(tmp_path)
    r = _run(tmp_path, spec, "--methods", "gradient", "--out", str(tmp_path / "out"))
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("salbench: failed: ") and "every row" in lines[0]
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    assert meta["status"] == "failed" and meta["counts"]["maps"] == 0 and meta["counts"]["errors"] == 4
    assert not (tmp_path / "out" / "leaderboard.md").exists()


def test_a_run_with_some_maps_is_complete(tmp_path, monkeypatch, one_thread):
    from salbench.methods.gradient import VanillaGradient

    monkeypatch.setattr(VanillaGradient, "attribute", lambda *a: (_ for _ in ()).throw(RuntimeError("broken")))
    spec = _local_classifier(tmp_path)
    r = _run(tmp_path, spec, "--methods", "gradient,centre", "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    assert meta["status"] == "complete" and meta["counts"]["maps"] == 4 and meta["counts"]["errors"] == 4
    assert meta["dataset"]["load_errors"] == {} and meta["dataset"]["load_error_images"] == []


def test_all_failed_rule():
    assert all_failed({"maps": 0, "errors": 3})
    assert all_failed({"maps": 0, "errors": 0, "load_errors": 2})
    assert not all_failed({"maps": 1, "errors": 3})
    assert not all_failed({"maps": 0, "errors": 0})  # nothing applicable is not a failure


def test_load_errors_from_rows(tmp_path, monkeypatch):
    import salbench.run_outcome

    rows = pd.DataFrame({
        "image_id": ["b", "b", "a", "c", "d"],
        "error": ["corrupt image: b.jpg: OSError: truncated", "corrupt image: b.jpg: OSError: truncated", None, "RuntimeError: x", None],
        "source_correct": [None, None, True, False, True],
    })
    monkeypatch.setattr(salbench.run_outcome, "read_table", lambda run_dir, name, columns=None: rows)
    got = load_errors(tmp_path)
    assert got == {"counts": {"corrupt_image": 1}, "images": [{"image_id": "b", "error": "corrupt image: b.jpg: OSError: truncated"}]}
