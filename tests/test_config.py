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
