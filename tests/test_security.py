"""Every file salbench loads is loaded as data: a pickle payload planted in any of them never runs.

Covered here: local classifier weights (.pth), the zoo's weights and its rendered-data cache.
Elsewhere, with the same payload: CASM resume states and masker meta (tests/test_casm.py), map
cache entries (tests/test_mapcache.py); run tables are Parquet and JSON (no pickle at all).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from salbench.errors import UsageError


class Payload:
    """Pickles to a call that writes ``marker``: what a planted file would run on an unsafe load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "payload ran"))


def _live(path: pathlib.Path, marker: pathlib.Path) -> None:
    """The planted file really is a payload: an unrestricted load runs it (under a .pt name: torch
    hands a .safetensors name to safetensors)."""
    copy = marker.with_name("copy.pt")
    copy.write_bytes(path.read_bytes())
    torch.load(copy, weights_only=False)
    assert marker.read_text() == "payload ran"
    marker.unlink()


def test_local_weights_file(tmp_path):
    from salbench.classifiers import load_classifier

    marker, evil = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"state_dict": Payload(marker)}, evil)
    _live(evil, marker)
    with pytest.raises(UsageError, match="weights_only=True"):
        load_classifier(f"test_resnet@{evil}")
    assert not marker.exists()


@pytest.mark.slow
def test_zoo_weights_and_data_cache(tmp_path):
    from salbench import zoo
    from testutils import tiny_resnet_recipe

    recipe = zoo.register_recipe(tiny_resnet_recipe("security-probe", seed=11), replace=True)
    zoo.build(["security-probe"], progress=False)
    d = zoo.zoo_dir(recipe)
    marker = tmp_path / "marker"
    torch.save({"conv1.weight": Payload(marker)}, d / "model.safetensors")  # a pickle where safetensors belong
    _live(d / "model.safetensors", marker)
    with pytest.raises(Exception) as info:
        zoo.load("security-probe")
    assert "payload" not in str(info.value) and not marker.exists()

    data = sorted((zoo.zoo_home() / "data").glob(f"synthetic-{recipe.data.key()}-train-*.npy"))
    images = next(p for p in data if not p.name.endswith("-labels.npy"))
    np.save(images, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    imgs, _ = zoo.split_arrays(recipe.data, "train", recipe.train_images)  # refused as data: rendered again
    assert imgs.dtype == np.uint8 and imgs.shape[0] == recipe.train_images
    assert not marker.exists()
