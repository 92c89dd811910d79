import pytest

from salbench.config import RunSpec, spec_hash
from salbench.errors import UsageError


def test_lists_accept_comma_strings():
    s = RunSpec(methods="gradcam, gradient", models="zoo:*")
    assert s.methods == ["gradcam", "gradient"] and s.models == ["zoo:*"]


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "methods: [gradcam]\nlimit: 10\nbatch-size: 8\n"),
    (".toml", 'methods = ["gradcam"]\nlimit = 10\nbatch_size = 8\n'),
    (".json", '{"methods": ["gradcam"], "limit": 10, "batch_size": 8}'),
])
def test_load_from_file(tmp_path, suffix, text):
    p = tmp_path / f"run{suffix}"
    p.write_text(text)
    s = RunSpec.from_file(p)
    assert s.methods == ["gradcam"] and s.limit == 10 and s.batch_size == 8


def test_missing_malformed_and_unknown_keys(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        RunSpec.from_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [gradcam\n")
    with pytest.raises(UsageError, match="malformed"):
        RunSpec.from_file(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("methds: [gradcam]\n")
    with pytest.raises(UsageError, match="'methds'.*methods"):
        RunSpec.from_file(typo)
    with pytest.raises(UsageError, match="limit=0"):
        RunSpec(limit=0)
    with pytest.raises(UsageError, match="target"):
        RunSpec(target="logit")


def test_hash_ignores_execution_only_fields():
    a = {"dataset": "synthetic", "methods": ["gradcam"], "device": "cpu", "workers": 0}
    b = dict(a, device="cuda", workers=4)
    c = dict(a, methods=["gradient"])
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)


# ---------------------------------------------------------------- hashes of valid specs are pinned
# A valid spec keeps its hash, and with it the name of its run directory, until the spec itself
# changes: these were computed when the spec gained metric selection (metrics, exclude_metrics,
# metric_params), which changes what a run computes and so, deliberately, every run's name.
DEFAULT_DICT = {
    "dataset": "synthetic", "methods": ["*"], "exclude_methods": [], "models": ["zoo:*"], "eval_models": None, "limit": None,
    "binarize": "mean_area", "binarize_params": {}, "box": "largest", "inpaint": "telea", "target": "label", "seed": 0,
    "batch_size": 64, "device": "auto", "dtype": "float32", "channels_last": False, "workers": 0, "map_cache": None,
    "map_precision": "float32", "method_params": {}, "metrics": ["*"], "exclude_metrics": [], "metric_params": {},
    "model_overrides": {}, "name": None,
}
CUSTOM = dict(dataset="synthetic?n=16&size=32", methods="gradcam,occlusion", models=["zoo:resnet"], eval_models=["zoo:resnet", "zoo:vit"],
              limit=10, binarize="alpha_mean", binarize_params={"alpha": 1.5}, seed=3, batch_size=8, channels_last=True,
              method_params={"occlusion": {"window": 16, "stride": 4}}, model_overrides={"zoo:resnet": {"input_size": 48, "std": [0.5, 0.5, 0.5]}},
              name="mine")


def test_default_spec_dict_and_hashes_are_unchanged():
    import subprocess
    import sys

    assert RunSpec().to_dict() == DEFAULT_DICT
    assert list(RunSpec().to_dict()) == list(DEFAULT_DICT)  # field order too
    assert spec_hash(RunSpec().to_dict()) == "1e34652760da6591d63535711746a41c835ed2ffb239d9d42180d085aa505105"
    assert spec_hash(RunSpec(**CUSTOM).to_dict()) == "fae850ba819fb818c94cf60ff0818a99d730dc2193590d1814340874bcea32da"
    # the resolved default (wildcards expanded, per-dataset method parameters filled in) names the
    # default run; resolved in a fresh interpreter, as other tests register extra zoo recipes
    code = "from salbench.config import RunSpec; from salbench.runner import resolve; print(resolve(RunSpec()).hash)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "86ee27b6d7acd6aaf9417d4f2d241f0c5bc993eb3084431ed3bac10d6c999cdd"


def test_python_api_accepts_sequences_and_keeps_values_as_given():
    s = RunSpec(methods=("gradcam",), models=("zoo:resnet",), method_params={"rise": {"p": 1}})
    assert s.methods == ("gradcam",) and s.method_params == {"rise": {"p": 1}}  # validated, never rewritten
    assert RunSpec(model_overrides={"m": {"std": [0.5], "input_size": [3, 48, 48]}}).model_overrides["m"]["std"] == [0.5]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(limit=True), "limit=True"),
    (dict(batch_size=2.5), "batch_size=2.5"),
    (dict(channels_last="no"), "channels_last='no'"),
    (dict(methods=[]), "methods=[]"),
    (dict(seed="abc"), "seed='abc'"),
    (dict(name="../x"), "name='../x'"),
    (dict(name="/abs"), "name='/abs'"),
    (dict(name="a\\b"), "name='a\\\\b'"),
    (dict(method_params={"rise": {"n_masks": 2.5}}), "n_masks=2.5"),
])
def test_constructor_refuses_bad_values(kwargs, needle):
    with pytest.raises(UsageError) as err:
        RunSpec(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError):
        RunSpec().replace(**kwargs)


def test_create_method_refuses_unknown_keys_and_wrong_types():
    from salbench.methods import create_method

    with pytest.raises(UsageError, match=r"method 'rise' has no parameter 'nmasks' \(given 4\).*n_masks"):
        create_method("rise", nmasks=4)
    for key, value in (("n_masks", 2.5), ("n_masks", True), ("p", "half"), ("estimator", 3)):
        with pytest.raises(UsageError, match=rf"method 'rise': {key}={value!r}"):
            create_method("rise", **{key: value})
    with pytest.raises(UsageError, match="method 'occlusion': window=0"):
        create_method("occlusion", window=0)
    assert create_method("rise", p=1).params.p == 1  # an int is a number
    assert create_method("casm", train_classes="8,5,2").params.train_classes == (2, 5, 8)  # structured types keep their own parsing


def test_occlusion_window_is_checked_against_the_image_size():
    from salbench.methods import create_method

    create_method("occlusion", window=24, stride=8).check_image_size((64, 64))
    with pytest.raises(UsageError, match=r"method 'occlusion': window=1000 .*64x64"):
        create_method("occlusion", window=1000).check_image_size((64, 64))
    with pytest.raises(UsageError, match="window=64"):  # one position covering the image: a flat map
        create_method("occlusion", window=64).check_image_size((64, 64))


def test_limit_above_the_dataset_size_is_said_and_recorded(capsys):
    from salbench.runner import resolve

    r = resolve(RunSpec(dataset="synthetic?n=8&size=32", methods=["centre"], models=["zoo:resnet"], limit=100))
    assert r.config["num_images"] == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "limit=100" in err[0] and "8 images" in err[0]
    resolve(RunSpec(dataset="synthetic?n=8&size=32", methods=["centre"], models=["zoo:resnet"], limit=8))
    assert capsys.readouterr().err == ""


def test_yaml_errors_name_the_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("methods: [gradcam]\n\nbatch-size: 2.5\n")
    with pytest.raises(UsageError, match=r"'.*run.yaml' line 3: batch_size=2.5"):
        RunSpec.from_file(p)


def test_model_overrides_must_name_a_classifier_of_the_run():
    from salbench.runner import resolve

    base = dict(dataset="synthetic?n=8&size=32", methods=["centre"], models=["zoo:resnet"], eval_models=["zoo:resnet", "zoo:vit"])
    resolve(RunSpec(**base, model_overrides={"zoo:vit": {"input_size": 64}}))
    with pytest.raises(UsageError, match=r"model_overrides names 'zoo:rsnet', which is not a classifier of this run.*zoo:resnet"):
        resolve(RunSpec(**base, model_overrides={"zoo:rsnet": {"input_size": 64}}))
