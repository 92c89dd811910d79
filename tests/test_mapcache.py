"""The saliency-map cache trusts an entry only when it matches the images, the method's code and
the expected shape and range; stale and corrupt entries are recomputed and counted."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from salbench.mapcache import MapCache, code_digest, images_digest
from salbench.results import read_table

INDEX = torch.arange(4)
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
MAPS = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1))


def test_hit_stale_and_corrupt(tmp_path):
    cache = MapCache(tmp_path, "float32")
    d = images_digest(X)
    cache.save("k", INDEX, MAPS, {}, d)
    maps, status = cache.load("k", INDEX, d, (4, 8, 8))
    assert status == "hit" and torch.equal(maps, MAPS)
    assert cache.load("k", INDEX, images_digest(X + 1e-3), (4, 8, 8)) == (None, "stale")  # images changed in place
    assert cache.load("k", torch.arange(1, 5), d, (4, 8, 8))[1] == "miss"
    assert cache.load("k", INDEX, d, (4, 8, 9)) == (None, "corrupt")  # wrong shape
    path = next(Path(tmp_path, "k").glob("*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert cache.load("k", INDEX, d, (4, 8, 8)) == (None, "corrupt")


def test_out_of_range_values_and_pickles_are_corrupt(tmp_path):
    cache = MapCache(tmp_path, "float32")
    d = images_digest(X)
    cache.save("k", INDEX, MAPS, {}, d)
    path = next(Path(tmp_path, "k").glob("*.npz"))
    np.savez(path.with_suffix(".tmp.npz"), maps=(MAPS * 2).numpy(), index=INDEX.numpy(), images=np.array(d))
    path.with_suffix(".tmp.npz").replace(path)
    assert cache.load("k", INDEX, d, (4, 8, 8)) == (None, "corrupt")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    np.savez(path.with_suffix(".tmp.npz"), maps=np.array([Payload()], dtype=object), index=INDEX.numpy(), images=np.array(d))
    path.with_suffix(".tmp.npz").replace(path)
    assert cache.load("k", INDEX, d, (4, 8, 8)) == (None, "corrupt")
    assert not marker.exists()


def test_code_digest_follows_the_source_files(tmp_path):
    from salbench.methods import create_method

    a, b = code_digest(create_method("gradient")), code_digest(create_method("gradcam"))
    assert a != b and len(a) == 16 and a == code_digest(create_method("gradient"))
    # a wrapper's digest covers the method it wraps (integrated.py is not among smoothgrad's own sources)
    sg, sg_ig = code_digest(create_method("smoothgrad")), code_digest(create_method("smoothgrad", base="integrated_gradients"))
    assert sg != sg_ig and len(sg_ig) == 16 and sg_ig == code_digest(create_method("smoothgrad", base="integrated_gradients"))


METHOD_SRC = '''
from salbench.methods.base import register_method
from salbench.methods.controls import CentreBox

@register_method("cache-probe")
class CacheProbe(CentreBox):
    """A control whose code this test edits between runs."""
    VERSION = {version}
'''


def _load_method(path: Path, version: int) -> None:
    from salbench.methods import METHODS

    METHODS._entries.pop("cache-probe", None)
    path.write_text(textwrap.dedent(METHOD_SRC.format(version=version)))
    spec = importlib.util.spec_from_file_location(f"cache_probe_v{version}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)


def _write_folder(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,label,x0,y0,x1,y1"]
    for i in range(8):
        cv2.imwrite(str(root / f"im{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        rows.append(f"im{i}.png,c{i % 4},4,4,20,24")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_runs_recompute_stale_changed_code_and_corrupt_entries(tmp_path):
    from salbench import zoo
    from salbench.config import RunSpec
    from salbench.methods import METHODS
    from salbench.runner import run
    from testutils import tiny_resnet_recipe

    zoo.register_recipe(tiny_resnet_recipe("mapcache-probe", seed=9), replace=True)
    data = tmp_path / "data"
    _write_folder(data)
    method_file = tmp_path / "probe_method.py"
    _load_method(method_file, 1)
    try:
        spec = RunSpec(dataset=f"folder:{data}?boxes=boxes.csv&size=32", models=["zoo:mapcache-probe"], methods=["gradient", "cache-probe"],
                       batch_size=4, device="cpu", map_cache=str(tmp_path / "maps"), map_precision="uint8")

        def counts(name: str) -> dict:
            run(spec, tmp_path / name, progress=False)
            return json.loads((tmp_path / name / "run.json").read_text())["counts"]

        assert counts("first")["maps_computed"] == 16
        assert counts("again")["maps_reused"] == 16
        # one image rewritten in place: its batch is stale for both methods, the other batch is reused
        cv2.imwrite(str(data / "im1.png"), np.zeros((32, 32, 3), np.uint8))
        c = counts("stale")
        assert c["maps_stale"] == 8 and c["maps_reused"] == 8 and c["maps_computed"] == 8
        loc = read_table(tmp_path / "stale", "localization")
        fresh = loc[(loc["image_id"].str.contains("im1")) & (loc["method"] == "gradient")]
        assert fresh["area"].iloc[0] != read_table(tmp_path / "first", "localization").set_index(["image_id", "method"]).loc[
            (fresh["image_id"].iloc[0], "gradient"), "area"]
        # the method's code changed: its maps are recomputed, the other method's reused
        _load_method(method_file, 2)
        c = counts("code")
        assert c["maps_computed"] == 8 and c["maps_reused"] == 8
        # a truncated entry: recomputed, counted, same rows as the run that wrote it
        gradient_key = next(d for d in (tmp_path / "maps").iterdir() if json.loads((d / "key.json").read_text())["method"] == "gradient")
        entry = gradient_key / "00000000-00000003-4.npz"
        entry.write_bytes(entry.read_bytes()[:50])
        c = counts("corrupt")
        assert c["maps_corrupt"] == 4 and c["maps_computed"] == 4
        key = ["method", "image_id"]
        a = read_table(tmp_path / "code", "localization").drop(columns="run_id").sort_values(key).reset_index(drop=True)
        b = read_table(tmp_path / "corrupt", "localization").drop(columns="run_id").sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    finally:
        METHODS._entries.pop("cache-probe", None)
