"""The classifier zoo: recipes, cache layout, build/load round trip (tiny recipe, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from salbench import zoo
from salbench.datasets.synthetic import SyntheticConfig
from testutils import tiny_resnet_recipe

DEFAULT = ("resnet", "efficientnet", "convnext", "vit")

TINY = tiny_resnet_recipe("tiny-test", seed=123, val_images=32, steps=3, lr=1e-3)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    zoo.register_recipe(TINY)
    return tmp_path


@pytest.fixture()
def built(home):
    (meta,) = zoo.build(["tiny-test"], progress=False)
    return meta


def test_default_recipes_registered():
    for name in DEFAULT:
        assert name in zoo.ZOO
        assert zoo.get_recipe(f"zoo:{name}") is zoo.ZOO.get(name)


@pytest.mark.parametrize("name", DEFAULT)
def test_create_model_forward(name):
    recipe = zoo.ZOO.get(name)
    model = zoo.create_model(recipe).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
        feats = model.forward_features(torch.rand(1, 3, 64, 64))
    assert out.shape == (2, recipe.num_classes)
    if feats.ndim == 4:  # CNNs keep an 8x8 final feature map
        assert feats.shape[-2:] == (8, 8)
    else:  # ViT: 8x8 patch tokens plus prefix tokens
        assert feats.shape[1] - model.num_prefix_tokens == 64


def test_four_distinct_families():
    modules = {type(zoo.create_model(zoo.ZOO.get(n))).__module__ for n in DEFAULT}
    assert modules == {"timm.models.resnet", "timm.models.efficientnet", "timm.models.convnext", "timm.models.vision_transformer"}


def test_recipe_key_changes_with_any_field():
    r = zoo.ZOO.get("resnet")
    assert r.key() == zoo.ZOO.get("resnet").replace().key()
    variants = [
        r.replace(lr=r.lr * 2),
        r.replace(steps=r.steps + 1),
        r.replace(seed=r.seed + 1),
        r.replace(model_kwargs={**r.model_kwargs, "stem_width": 24}),
        r.replace(data=SyntheticConfig(seed=1)),
        r.replace(modifications=("no_maxpool",)),
        r.replace(mean=(0.4, 0.5, 0.5)),
    ]
    keys = {v.key() for v in variants}
    assert r.key() not in keys and len(keys) == len(variants)
    assert zoo.zoo_dir(variants[0]) != zoo.zoo_dir(r)


def test_register_recipe_rules(home):
    assert zoo.register_recipe(TINY.replace()) is zoo.ZOO.get("tiny-test")  # equal: no-op
    with pytest.raises(ValueError):
        zoo.register_recipe(TINY.replace(steps=4))
    zoo.register_recipe(TINY.replace(steps=4), replace=True)
    assert zoo.ZOO.get("tiny-test").steps == 4
    zoo.register_recipe(TINY, replace=True)


def test_build_meta_and_layout(home, built):
    d = zoo.zoo_dir(TINY)
    assert d == home / "zoo" / f"tiny-test-{TINY.key()}"
    assert zoo.is_built("tiny-test")
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "model.safetensors"]
    assert not [p for p in (home / "zoo").iterdir() if p.name.startswith(".tmp-")]
    meta = json.loads((d / "meta.json").read_text())
    assert meta == built
    for key in ("name", "arch", "model_kwargs", "modifications", "data", "recipe", "seed", "val_top1", "train_time_s",
                "num_classes", "class_names", "mean", "std", "input_size", "interpolation", "recipe_key", "passed"):
        assert key in meta, key
    assert meta["name"] == "tiny-test" and meta["arch"] == "resnet18" and meta["recipe_key"] == TINY.key()
    assert meta["num_classes"] == 4 and len(meta["class_names"]) == 4
    assert meta["input_size"] == [3, 32, 32] and len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["data"]["synthetic"]["seed"] == 123 and meta["data"]["train_spec"].startswith("synthetic?split=train")
    assert meta["recipe"]["steps"] == 3 and meta["recipe"]["lr"] == 1e-3
    assert 0.0 <= meta["val_top1"] <= 1.0 and meta["passed"] is True
    # the rendered training data is cached once, next to the models
    assert list((home / "zoo" / "data").glob("synthetic-*-train-64.npy"))
    # a second build is a cache hit
    assert zoo.build(["zoo:tiny-test"], progress=False)[0]["created"] == meta["created"]


def test_load_is_deterministic(home, built):
    m1, meta1 = zoo.load("tiny-test")
    m2, meta2 = zoo.load("zoo:tiny-test")
    assert not m1.training and meta1 == meta2
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=m1)
    assert tuple(cfg["input_size"]) == (3, 32, 32) and tuple(cfg["mean"]) == tuple(meta1["mean"])


def test_same_recipe_same_weights(home, built):
    m1, _ = zoo.load("tiny-test")
    meta = zoo.build(["tiny-test"], force=True, progress=False)[0]
    m2, _ = zoo.load("tiny-test")
    assert meta["created"] >= built["created"]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_builds_on_demand(home):
    assert not zoo.is_built("tiny-test")
    model, meta = zoo.load("tiny-test")
    assert zoo.is_built("tiny-test") and meta["name"] == "tiny-test"


def test_incomplete_dir_is_not_built(home, built):
    d = zoo.zoo_dir(TINY)
    (d / "model.safetensors").unlink()
    assert not zoo.is_built("tiny-test")
    zoo.build(["tiny-test"], progress=False)  # rebuilt over the broken leftover
    assert zoo.is_built("tiny-test")


def test_missed_bar_warns(home):
    zoo.register_recipe(TINY.replace(name="tiny-test-fail", min_val_top1=1.01))
    with pytest.warns(RuntimeWarning, match="tiny-test-fail"):
        (meta,) = zoo.build(["tiny-test-fail"], progress=False)
    assert meta["passed"] is False and zoo.is_built("tiny-test-fail")


def test_unknown_name(home):
    from salbench.errors import UsageError

    with pytest.raises(UsageError, match="resnt"):
        zoo.load("resnt")
