"""Class-model visualisation (Simonyan et al. 2013): the score rises, the class wins, bad input is one line."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from salbench.class_model import optimise, parse_classes
from salbench.classifiers import Classifier, Preprocess
from salbench.cli import main
from salbench.errors import UsageError


class Linear(nn.Module):
    """S = W I + b on a 3x8x8 input: the L2-regularised optimum is I* = w_c / (2 l2)."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _linear():
    torch.manual_seed(0)
    model = Linear()
    return model, Classifier(model, "linear", Preprocess(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 8, 8)), 4)


def test_linear_model_score_rises_and_wins():
    _, clf = _linear()
    r = optimise(clf, [0, 2, 3], steps=150, lr=0.05, l2=1e-3)
    checkpoints = r.scores[[0, 10, 50, 150]]
    assert (checkpoints[1:] > checkpoints[:-1]).all(), checkpoints
    assert r.top1.tolist() == [0, 2, 3]


def test_linear_model_reaches_the_closed_form_optimum():
    """With a strong L2 weight the optimum I* = w_c / (2 l2) lies inside the pixel range."""
    model, clf = _linear()
    r = optimise(clf, [0, 2, 3], steps=300, lr=0.05, l2=0.5)
    best = model.fc.weight[[0, 2, 3]] / (2 * 0.5)
    assert torch.allclose(r.images.flatten(1), best.clamp(0, 1), atol=2e-2)


# The zoo classifiers are trained on first use (minutes); these tests run where a built zoo is
# given: SALBENCH_TRAINED_HOME=/path/to/a/$SALBENCH_HOME with zoo:resnet and zoo:vit.
TRAINED = os.environ.get("SALBENCH_TRAINED_HOME")


@pytest.mark.skipif(not TRAINED, reason="SALBENCH_TRAINED_HOME (a home with the built zoo) not set")
@pytest.mark.parametrize("spec", ["zoo:resnet", "zoo:vit"])
def test_zoo_class_models_rise_and_win(spec, monkeypatch):
    from salbench import zoo
    from salbench.classifiers import load_classifier

    monkeypatch.setenv("SALBENCH_HOME", TRAINED)
    if not zoo.is_built(spec[4:]):
        pytest.skip(f"{spec} not built in {TRAINED}")
    r = optimise(load_classifier(spec), [0, 3, 7])
    smooth = torch.stack([r.scores[i : i + 10].mean(0) for i in (0, 10, 30, 90)])  # moving averages
    assert (smooth[1:3] > smooth[:2]).all(), smooth  # rising ...
    # ... then level with Adam's jitter: the L2 term trades the score off (zoo:vit: 4.5-4.9 from step 30 on)
    assert (smooth[3] >= smooth[2] - 0.25).all() and (smooth[3] > smooth[0] + 1).all(), smooth
    assert r.top1.tolist() == [0, 3, 7]


@pytest.mark.parametrize("text, needle", [("0,x", "expected comma-separated class indices"), ("", "expected comma-separated"),
                                          ("1,1", "listed twice"), ("0,12", "12 is not a class")])
def test_parse_classes_errors(text, needle):
    with pytest.raises(UsageError, match=needle):
        parse_classes(text, 10)


def test_cli_bad_classes_exit_2_in_one_line(tmp_path):
    res = CliRunner().invoke(main, ["visualize", "class-model", "--model", "zoo:resnet", "--classes", "0,three", "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2
    lines = [ln for ln in (res.stderr if hasattr(res, "stderr") else res.output).splitlines() if ln.strip()]
    assert len(lines) == 1 and "--classes '0,three'" in lines[0]
    assert not (tmp_path / "g.png").exists()


def test_cli_writes_the_grid_and_the_report_links_it(tmp_path, monkeypatch):
    """A random-init timm model: the command runs end to end and writes a PNG; the report section
    only reads it."""
    from salbench.report import CLASS_MODEL_PNG, class_model_section

    out = tmp_path / CLASS_MODEL_PNG
    res = CliRunner().invoke(main, ["visualize", "class-model", "--model", "random:test_resnet", "--classes", "0,3", "--steps", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "class 3" in res.output
    assert "![class models" in class_model_section([tmp_path], tmp_path) and class_model_section([tmp_path / "none"], tmp_path) == ""
