"""CASM training data: the ImageNet-style training folder (labels, augmentation, determinism,
workers, errors) and a masker trained end to end on it, resumed, and used as a method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from salbench import casm as C
from salbench.casm.data import ImageFolderTrainData, random_resized_crop
from salbench.datasets.imagenet import imagenet_synsets
from salbench.errors import UsageError


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    """Two synsets (timm indices 3 and 7), five JPEGs each of varying sizes, plus a stray file."""
    root = tmp_path_factory.mktemp("ilsvrc") / "train"
    rng = np.random.default_rng(0)
    synsets = imagenet_synsets()
    for label in (7, 3):
        d = root / synsets[label]
        d.mkdir(parents=True)
        for i in range(5):
            w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{synsets[label]}_{i}.JPEG")
        (d / "notes.txt").write_text("not an image")
    return root


def test_random_resized_crop_stays_inside_and_is_seeded():
    for seed in range(50):
        left, top, w, h = random_resized_crop(120, 80, np.random.default_rng(seed))
        assert 0 <= left and 0 <= top and 0 < w and 0 < h and left + w <= 120 and top + h <= 80
        assert (left, top, w, h) == random_resized_crop(120, 80, np.random.default_rng(seed))
    assert random_resized_crop(1000, 10, np.random.default_rng(0), scale=(0.9, 1.0)) == ((1000 - 13) // 2, 0, 13, 10)  # fallback: centre, clamped aspect


def test_folder_labels_follow_timm_order(train_dir):
    data = ImageFolderTrainData(train_dir, 32, (0.485, 0.456, 0.406))
    assert data.n == 10 and sorted(set(data.labels.tolist())) == [3, 7]
    assert all(imagenet_synsets()[lab] in path for path, lab in zip(data.paths, data.labels))
    assert data.validation() is None and data.meta["images"] == 10
    np.testing.assert_allclose(data.fill, (0.485, 0.456, 0.406))
    only = ImageFolderTrainData(train_dir, 32, (0.5,) * 3, classes=(7,))
    assert set(only.labels.tolist()) == {7}
    subset = ImageFolderTrainData(train_dir, 32, (0.5,) * 3, train_images=4, seed=1)
    assert subset.n == 4 and set(subset.paths) <= set(data.paths)


def test_folder_batches_are_deterministic_with_or_without_workers(train_dir):
    data = ImageFolderTrainData(train_dir, 24, (0.5,) * 3)
    x, y = data.batch(3, 4, seed=0)
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    x2, y2 = data.batch(3, 4, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.batch(4, 4, seed=0)[0])  # another step: other crops
    inline = list(data.batches(2, 6, 4, seed=0, workers=0))
    pooled = list(data.batches(2, 6, 4, seed=0, workers=2))
    assert len(inline) == len(pooled) == 4
    for (a, la), (b, lb) in zip(inline, pooled):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_folder_errors_name_the_problem(tmp_path, train_dir):
    with pytest.raises(UsageError, match="not a directory"):
        ImageFolderTrainData(tmp_path / "missing", 32, (0.5,) * 3)
    (tmp_path / "cats").mkdir()
    with pytest.raises(UsageError, match=r"\['cats'\] are not ILSVRC2012 synsets"):
        ImageFolderTrainData(tmp_path, 32, (0.5,) * 3)
    empty = tmp_path / "empty" / imagenet_synsets()[0]
    empty.mkdir(parents=True)
    with pytest.raises(UsageError, match="no images found"):
        ImageFolderTrainData(empty.parent, 32, (0.5,) * 3)
    with pytest.raises(UsageError, match="train_images=-1"):
        C.CasmSpec(dataset=f"imagenet-train:{train_dir}", train_images=-1)


@pytest.mark.usefixtures("one_thread")
def test_masker_trains_on_an_imagenet_folder_resumes_and_maps(train_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    spec = C.CasmSpec(name="folder", classifier="test_resnet", init="scratch", dataset=f"imagenet-train:{train_dir}", train_images=0,
                      batch_size=4, steps=4, decoder_channels=4, checkpoint_every=2, thinning="L")
    C.train(spec.replace(name="folder-cut"), progress=False, stop_after=2)
    resumed = C.train(spec.replace(name="folder-cut"), progress=False, workers=1)
    straight = C.train(spec, progress=False)
    meta = C.read_meta(straight)
    assert meta["data"]["dataset"] == f"imagenet-train:{train_dir}" and meta["data"]["images"] == 10
    assert meta["num_classes"] == 1000 and meta["val_area"] is None
    np.testing.assert_allclose(meta["fill"], meta["mean"], atol=1e-6)  # removed pixels: the ImageNet mean colour
    a, _ = C.load_masker(resumed)
    b, _ = C.load_masker(straight)
    x = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        ma, mb = a(x), b(x)
    assert ma.shape == (2, 50, 70) and 0 <= ma.min() and ma.max() <= 1
    assert torch.equal(ma, mb), "resumed training on folder data must end where an uninterrupted run does"


def test_local_weights_classifier_for_offline_imagenet_training(tmp_path):
    """``arch@file``: the f of ImageNet training without the hub; the spec key follows the file content."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    init = C.build_classifier(f"test_resnet@{path}")
    assert init.num_classes == 1000 and init.arch == "test_resnet"
    for k, v in model.state_dict().items():
        assert torch.equal(init.model.state_dict()[k], v)
    spec = C.CasmSpec(classifier=f"test_resnet@{path}")
    key = spec.key()
    sd = model.state_dict()
    sd["fc.bias"] = sd["fc.bias"] + 1
    save_file(sd, str(path))
    assert C.CasmSpec(classifier=f"test_resnet@{path}").key() != key
    with pytest.raises(UsageError, match="init=scratch"):
        C.build_classifier(f"test_resnet@{path}", init="scratch")
