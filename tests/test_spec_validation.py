"""Bad run specs, from a YAML file and from flags: exit 2, one line naming key and value, nothing written.

Every case fails in validation, before any dataset image, classifier or zoo model is touched
(the source classifier named below, ``zoo:resnet``, is never built by these tests).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from salbench.cli import main

BASE = "dataset: synthetic?n=8&size=32\nmodels: [zoo:resnet]\nmethods: [centre]\n"

# (YAML lines appended to BASE, substrings the one error line must contain, line number or None)
YAML_CASES = {
    "models-mapping": ("models: [{name: resnet18}]", ["models=", "resnet18"], 4),
    "methods-int": ("methods: 5", ["methods=5"], 4),
    "methods-empty": ("methods: []", ["methods=[]", "non-empty"], 4),
    "exclude-int": ("exclude_methods: 3", ["exclude_methods=3"], 4),
    "method_params-list": ("method_params: [1, 2]", ["method_params=[1, 2]"], 4),
    "method_params-entry-int": ("method_params: {rise: 5}", ["method_params.rise=5"], 4),
    "method_params-unknown-method": ("method_params: {risee: {n_masks: 3}}", ["risee", "rise"], 4),
    "method_params-unknown-key": ("method_params: {rise: {n_mask: 3}}", ["'rise'", "'n_mask'", "3", "n_masks"], 4),
    "rise-n_masks-float": ("method_params: {rise: {n_masks: 2.5}}", ["'rise'", "n_masks=2.5"], 4),
    "rise-n_masks-bool": ("method_params: {rise: {n_masks: true}}", ["'rise'", "n_masks=True"], 4),
    "rise-p-string": ("method_params: {rise: {p: half}}", ["'rise'", "p='half'"], 4),
    "occlusion-window-range": ("method_params: {occlusion: {window: 0}}", ["'occlusion'", "window=0"], 4),
    "occlusion-window-too-big": ("methods: [occlusion]\nmethod_params: {occlusion: {window: 1000}}", ["'occlusion'", "window=1000", "32x32"], None),
    "dataset-int": ("dataset: 5", ["dataset=5"], 4),
    "dataset-empty": ("dataset: ''", ["dataset=''"], 4),
    "eval_models-empty": ("eval_models: []", ["eval_models=[]"], 4),
    "limit-string": ("limit: ten", ["limit='ten'"], 4),
    "limit-bool": ("limit: true", ["limit=True"], 4),
    "limit-zero": ("limit: 0", ["limit=0"], 4),
    "limit-float": ("limit: 2.5", ["limit=2.5"], 4),
    "binarize-int": ("binarize: 3", ["binarize=3"], 4),
    "binarize-unknown": ("binarize: otsu", ["'otsu'"], None),
    "binarize_params-int": ("binarize_params: 5", ["binarize_params=5"], 4),
    "binarize_params-unknown-key": ("binarize_params: {foo: 1}", ["binarize_params.foo=1", "mean_area"], 4),
    "binarize_params-type": ("binarize: alpha_mean\nbinarize_params: {alpha: high}", ["binarize_params.alpha='high'"], 5),
    "box-list": ("box: [largest]", ["box=['largest']"], 4),
    "inpaint-int": ("inpaint: 1", ["inpaint=1"], 4),
    "inpaint-unknown": ("inpaint: photoshop", ["'photoshop'"], None),
    "target-unknown": ("target: logit", ["target='logit'"], 4),
    "seed-string": ("seed: abc", ["seed='abc'"], 4),
    "seed-negative": ("seed: -1", ["seed=-1"], 4),
    "seed-float": ("seed: 1.5", ["seed=1.5"], 4),
    "batch_size-float": ("batch_size: 2.5", ["batch_size=2.5"], 4),
    "batch_size-zero": ("batch_size: 0", ["batch_size=0"], 4),
    "device-int": ("device: 0", ["device=0"], 4),
    "device-unknown": ("device: tpu", ["'tpu'"], None),
    "dtype-unknown": ("dtype: float64", ["dtype='float64'"], 4),
    "channels_last-string": ("channels_last: 'no'", ["channels_last='no'"], 4),
    "channels_last-int": ("channels_last: 1", ["channels_last=1"], 4),
    "workers-negative": ("workers: -1", ["workers=-1"], 4),
    "workers-string": ("workers: many", ["workers='many'"], 4),
    "map_cache-int": ("map_cache: 3", ["map_cache=3"], 4),
    "map_precision-unknown": ("map_precision: int4", ["map_precision='int4'"], 4),
    "overrides-list": ("model_overrides: [1]", ["model_overrides=[1]"], 4),
    "overrides-entry-int": ("model_overrides: {'zoo:resnet': 3}", ["model_overrides.zoo:resnet=3"], 4),
    "overrides-input_size-zero": ("model_overrides: {'zoo:resnet': {input_size: 0}}", ["input_size=0"], 4),
    "overrides-input_size-string": ("model_overrides: {'zoo:resnet': {input_size: big}}", ["input_size='big'"], 4),
    "overrides-std-zero": ("model_overrides: {'zoo:resnet': {std: [0, 0, 0]}}", ["std=[0, 0, 0]"], 4),
    "overrides-channels_last-string": ("model_overrides: {'zoo:resnet': {channels_last: yes_please}}", ["channels_last='yes_please'", "true or false"], 4),
    "overrides-std-two": ("model_overrides: {'zoo:resnet': {std: [0.2, 0.2]}}", ["std=[0.2, 0.2]"], 4),
    "overrides-mean-string": ("model_overrides: {'zoo:resnet': {mean: grey}}", ["mean='grey'"], 4),
    "overrides-interpolation": ("model_overrides: {'zoo:resnet': {interpolation: cubic}}", ["interpolation='cubic'"], 4),
    "overrides-crop_pct": ("model_overrides: {'zoo:resnet': {crop_pct: 0}}", ["crop_pct=0"], 4),
    "overrides-feature_layer-int": ("model_overrides: {'zoo:resnet': {feature_layer: 4}}", ["feature_layer=4"], 4),
    "overrides-unknown-key": ("model_overrides: {'zoo:resnet': {stdd: [1]}}", ["'stdd'", "std"], 4),
    "name-parent": ("name: ../../../x", ["name='../../../x'"], 4),
    "name-absolute": ("name: /tmp/salbench-escape", ["name='/tmp/salbench-escape'"], 4),
    "name-dotdot": ("name: '..'", ["name='..'"], 4),
    "name-int": ("name: 5", ["name=5"], 4),
    "unknown-key": ("methds: [gradcam]", ["'methds'", "methods"], 4),
}

# (flags, substrings) for the keys that have a flag
FLAG_CASES = {
    "limit-string": (["--limit", "ten"], ["limit='ten'"]),
    "limit-zero": (["--limit", "0"], ["limit=0"]),
    "batch_size-float": (["--batch-size", "2.5"], ["batch_size=2.5"]),
    "seed-string": (["--seed", "abc"], ["seed='abc'"]),
    "workers-negative": (["--workers", "-1"], ["workers=-1"]),
    "methods-empty": (["--methods", ""], ["methods=[]"]),
    "methods-unknown": (["--methods", "gradcm"], ["'gradcm'", "gradcam"]),
    "models-empty": (["--models", ","], ["models=[]"]),
    "eval_models-empty": (["--eval-models", " "], ["eval_models=[]"]),
    "target": (["--target", "logit"], ["target='logit'"]),
    "dtype": (["--dtype", "float64"], ["dtype='float64'"]),
    "map_precision": (["--map-precision", "int4"], ["map_precision='int4'"]),
    "dataset-empty": (["--dataset", ""], ["dataset=''"]),
    "binarize": (["--binarize", "otsu"], ["'otsu'"]),
    "inpaint": (["--inpaint", "photoshop"], ["'photoshop'"]),
    "device": (["--device", "tpu"], ["'tpu'"]),
    "unknown-flag": (["--limt", "3"], ["--limt"]),
    "missing-value": (["--limit"], ["--limit"]),
    "out-under-a-file": (["--out", "afile/run"], ["--out", "afile"]),
}


@pytest.fixture
def invoke(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")

    def run(*args: str):
        before = sorted(p.name for p in tmp_path.iterdir())
        result = CliRunner().invoke(main, ["run", "--no-progress", *args], catch_exceptions=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
        return result

    return run


def _one_line_error(result, needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("salbench: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_config_file(invoke, tmp_path, case):
    text, needles, line = YAML_CASES[case]
    (tmp_path / "run.yaml").write_text(BASE + text + "\n")
    msg = _one_line_error(invoke("--config", "run.yaml"), needles)
    if line is not None:
        assert f"'run.yaml' line {line}:" in msg


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flag(invoke, case):
    flags, needles = FLAG_CASES[case]
    _one_line_error(invoke("--dataset", "synthetic?n=8&size=32", "--models", "zoo:resnet", "--methods", "centre", *flags), needles)


def test_nested_key_line_is_the_nested_keys_line(invoke, tmp_path):
    (tmp_path / "run.yaml").write_text(BASE + "method_params:\n  centre: {area: 0.5}\n  rise:\n    grid: 4\n    n_masks: 2.5\n")
    msg = _one_line_error(invoke("--config", "run.yaml"), ["n_masks=2.5"])
    assert "line 8:" in msg


def test_toml_and_json_errors_name_key_and_value(invoke, tmp_path):
    (tmp_path / "run.toml").write_text('models = ["zoo:resnet"]\nbatch_size = 2.5\n')
    _one_line_error(invoke("--config", "run.toml"), ["'run.toml'", "batch_size=2.5"])
    (tmp_path / "run.json").write_text('{"models": ["zoo:resnet"], "limit": true}')
    _one_line_error(invoke("--config", "run.json"), ["'run.json'", "limit=True"])
