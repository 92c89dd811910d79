"""Local timm weights (``arch@file``) and classifier/dataset class-count checks."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file

from salbench.classifiers import ModelOptions, load_classifier
from salbench.errors import UsageError
from salbench.weights import check_class_count, drop_background_class, load_local_weights, slice_logits

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


class NotAllowed:  # a pickled object that torch.load(weights_only=True) refuses
    pass


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a silently skipped buffer would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def _reference_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std)


@pytest.mark.parametrize("kind", ["pth-state_dict", "pt-module-prefix", "bin-nested-model", "safetensors"])
def test_load_classifier_gives_identical_logits(model, tmp_path, kind):
    sd = model.state_dict()
    if kind == "pth-state_dict":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd, "epoch": 3, "arch": "test_resnet"}, path)
    elif kind == "pt-module-prefix":
        path = tmp_path / "w.pt"
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif kind == "bin-nested-model":
        path = tmp_path / "w.bin"
        torch.save({"model": {"state_dict": sd}}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    spec = f"test_resnet@{path}"
    overrides = {spec: {"mean": MEAN, "std": STD, "input_size": 32}}
    clf = load_classifier(spec, ModelOptions(overrides=overrides, fold_bn=False))
    assert clf.num_classes == 10 and clf.preprocess.input_size == (3, 32, 32)
    assert clf.meta["source"] == "local-file" and clf.meta["arch"] == "test_resnet"
    assert clf.meta["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = clf(x)
    assert torch.equal(got, _reference_logits(model, x))
    # the default load folds eval-mode BatchNorm into the convolutions: same function up to float rounding
    folded = load_classifier(spec, ModelOptions(overrides=overrides))
    assert folded.meta["bn_folded"] > 0 and folded.meta["weights_sha256"] == clf.meta["weights_sha256"]
    with torch.no_grad():
        assert torch.allclose(folded(x), got, atol=1e-4, rtol=1e-4)


def test_num_classes_inferred_from_the_classifier_weight(tmp_path):
    m = timm.create_model("test_efficientnet", num_classes=7)
    path = tmp_path / "e.pth"
    torch.save(m.state_dict(), path)
    loaded, meta = load_local_weights("test_efficientnet", str(path))
    assert loaded.num_classes == 7 and not loaded.training
    assert meta == {"source": "local-file", "arch": "test_efficientnet", "path": str(path.resolve()), "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_refusals(model, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_local_weights("test_resnet", str(tmp_path / "nope.pth"))
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"unknown extension '.npz'"):
        load_local_weights("test_resnet", str(odd))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(UsageError, match=r"do not fit timm model 'test_efficientnet': missing keys: .*unexpected keys: .*in all"):
        load_local_weights("test_efficientnet", str(path))
    with pytest.raises(UsageError, match="unknown timm model 'test_resnt'.*did you mean"):
        load_local_weights("test_resnt", str(path))
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("layer1.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UsageError, match=r"missing keys: layer1\."):
        load_local_weights("test_resnet", str(tmp_path / "partial.pth"))

    torch.save({"obj": NotAllowed()}, tmp_path / "pickle.pth")
    with pytest.raises(UsageError, match="weights_only=True"):
        load_local_weights("test_resnet", str(tmp_path / "pickle.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(UsageError, match="not a state dict"):
        load_local_weights("test_resnet", str(tmp_path / "list.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(UsageError, match="cannot read safetensors"):
        load_local_weights("test_resnet", str(tmp_path / "junk.safetensors"))


def test_class_count_check():
    assert check_class_count(1000, 1000, "a") == 0
    assert check_class_count(1001, 1000, "a") == 1
    with pytest.raises(UsageError, match="'zoo:x' has 10 classes but the dataset has 1000"):
        check_class_count(10, 1000, "zoo:x")
    with pytest.raises(UsageError, match="has 1000 classes but the dataset has 2.*classes=imagenet"):
        check_class_count(1000, 2, "resnet50")
    logits = torch.arange(2 * 1001, dtype=torch.float32).view(2, 1001)
    assert torch.equal(slice_logits(logits, 1, 1000), logits[:, 1:])
    assert slice_logits(logits[:, :1000], 0, 1000) is not None


def test_drop_background_class(tmp_path):
    m = timm.create_model("test_resnet", num_classes=1001).eval()
    path = tmp_path / "bg.pth"
    torch.save(m.state_dict(), path)
    spec = f"test_resnet@{path}"
    clf = load_classifier(spec, ModelOptions(overrides={spec: {"input_size": 32}}))
    assert check_class_count(clf.num_classes, 1000, spec) == 1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = clf(x)
        drop_background_class(clf)
        after = clf(x)
    assert clf.num_classes == 1000 and clf.model.num_classes == 1000 and after.shape == (2, 1000)
    assert torch.allclose(after, before[:, 1:], atol=1e-6)
    assert check_class_count(clf.num_classes, 1000, spec) == 0
    w, b = clf.linear_head()
    assert w.shape[0] == 1000 and b.shape == (1000,)
